"""The validator is a library: on any JSON (even what the base schema would refuse) it must
return issues, never raise."""

from __future__ import annotations

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profiles import ProfileValidator
from terminology import TerminologyService
from tests.json_paths import paths
from tests.profile_examples import (
    cgm_reading,
    diabetes_condition,
    french_patient,
    glucose,
    hba1c,
    medication_statement,
)

EXAMPLES = [glucose(), cgm_reading(), hba1c(), diabetes_condition(), medication_statement(),
            french_patient()]
VALIDATOR = ProfileValidator(TerminologyService())

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=8) | st.sampled_from(["Patient/1", "#x", "mg/dL", "<", "99504-3"]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["value", "code", "system", "reference", "coding",
                                       "comparator", "unit", "start"]), children, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(EXAMPLES))), st.data(), json_values)
def test_any_replacement_gives_issues_not_exceptions(which: int, data, replacement) -> None:
    resource = copy.deepcopy(EXAMPLES[which])
    path = data.draw(st.sampled_from(paths(resource)))
    target = resource
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = replacement
    issues = VALIDATOR.validate(resource)
    assert isinstance(issues, list)
    for issue in issues:
        assert issue.severity in ("error", "warning")
        assert issue.expression and issue.message


def test_not_a_resource() -> None:
    assert [(i.code, i.expression) for i in VALIDATOR.validate([1, 2])] == [  # type: ignore[arg-type]
        ("structure", "Resource")
    ]
