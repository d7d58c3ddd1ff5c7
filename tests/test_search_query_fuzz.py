"""Property tests: whatever the query string, parsing either succeeds or raises SearchError
(a 400), never anything else (a 500); and what it understood survives a round trip through
the self link.

Runs against the real registry (search_registry_real.py).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_server.search.errors import SearchError
from fhir_server.search.escaping import escape
from fhir_server.search.query import parse_search, parse_system_search
from tests.search_registry_real import REGISTRY

KEYS = [
    "name",
    "name:exact",
    "name:missing",
    "birthdate",
    "identifier",
    "identifier:of-type",
    "_has:Observation:patient:code",
    "_has:Observation:patient:value-quantity",
    "organization.name",
    "general-practitioner:Practitioner.name",
    "_sort",
    "_count",
    "_include",
    "_revinclude:iterate",
    "_elements",
    "_summary",
    "_lastUpdated",
    "_id",
    "link",
    "link:identifier",
    "_has",
    "name:",
    ":",
    ".",
    "_has:::",
    "organization.",
]
# Characters that matter to the parser, plus arbitrary text.
TRICKY = st.text(alphabet=st.sampled_from(list("ab1-:|$,\\./ eqgtZT+0922'\"{}é")), max_size=24)
VALUES = st.one_of(TRICKY, st.text(max_size=16))
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(
    st.lists(st.tuples(st.one_of(st.sampled_from(KEYS), TRICKY), VALUES), max_size=4), st.booleans()
)
def test_parse_never_fails_with_anything_but_search_error(items, strict):
    for parse in (
        lambda: parse_search("Patient", items, REGISTRY, strict),
        lambda: parse_system_search(items, REGISTRY, strict),
    ):
        try:
            query = parse()
        except SearchError as error:
            assert error.message
            continue
        # Whatever was understood must reparse to the same canonical form.
        items_again = query.self_link_items()
        if query.resource_type is None:
            again = parse_system_search(items_again, REGISTRY, strict=True)
        else:
            again = parse_search("Patient", items_again, REGISTRY, strict=True)
        assert again.self_link_items() == items_again


@FAST
@given(st.text(min_size=1, max_size=30))
def test_any_escaped_string_is_searched_verbatim(text):
    query = parse_search("Patient", [("name:exact", escape(text))], REGISTRY)
    assert query.clauses[0].values[0].value == text
    assert parse_search("Patient", query.self_link_items(), REGISTRY).clauses == query.clauses


@FAST
@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20))
def test_any_escaped_token_keeps_system_and_code(system, code):
    query = parse_search("Patient", [("identifier", f"{escape(system)}|{escape(code)}")], REGISTRY)
    (value,) = query.clauses[0].values
    assert (value.system, value.code) == (system, code)
