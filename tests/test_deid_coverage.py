"""Every element of every R4 resource type that can carry text, an identifier, a date or a
URI is decided by a rule of the default de-identification profile."""

from __future__ import annotations

import pytest

from fhir_server.deid.elements import CARRIERS, elements
from fhir_server.deid.plan import DROP, KEEP, PlanCompiler, uncovered
from fhir_server.deid.rules import default_config, load_rules
from fhir_server.model.resource_types import resource_types

RULES = load_rules()
COMPILER = PlanCompiler(RULES)


@pytest.mark.parametrize("resource_type", sorted(resource_types()))
def test_every_carrier_element_is_covered_by_a_rule(resource_type: str) -> None:
    """The walk goes six levels deep through every datatype and backbone element (a type
    is not entered again below itself: its elements were checked the first time)."""
    assert uncovered(COMPILER, resource_type) == []


def test_the_walk_reaches_the_elements_that_leaked() -> None:
    """The free-text elements a determined look found served unchanged are decided now."""
    leaked = [
        ("Observation", ["valueString"]),
        ("Observation", ["component", "valueString"]),
        ("Observation", ["code", "text"]),
        ("Condition", ["code", "text"]),
        ("Encounter", ["reasonCode", "text"]),
        ("MedicationStatement", ["dosage", "text"]),
        ("ServiceRequest", ["orderDetail", "text"]),
        ("Device", ["deviceName", "name"]),
        ("FamilyMemberHistory", ["name"]),
        ("CareTeam", ["name"]),
        ("Goal", ["description", "text"]),
        ("Coverage", ["class", "value"]),
        ("Coverage", ["class", "name"]),
        ("Flag", ["code", "text"]),
        ("AllergyIntolerance", ["reaction", "description"]),
        ("Observation", ["meta", "tag"]),
        ("ImagingStudy", ["series", "uid"]),
        ("ImagingStudy", ["series", "instance", "uid"]),
    ]
    for resource_type, path in leaked:
        plan = COMPILER.resource_plan(resource_type)
        for name in path[:-1]:
            step = plan.steps[name]
            assert step.plan is not None, (resource_type, path)
            plan = step.plan
        step = plan.steps[path[-1]]
        assert step.rule is not None and step.kind != KEEP, (resource_type, path, step)


def test_a_profile_without_type_rules_is_reported() -> None:
    """The check fails when a rule is missing (and the engine then drops the element)."""
    config = default_config()
    config["fhirPathRules"] = [
        r for r in config["fhirPathRules"] if r["path"] != "nodesByType('string')"
    ]
    compiler = PlanCompiler(load_rules(config))
    missing = uncovered(compiler, "Observation")
    assert "Observation.valueString (string)" in missing
    assert "Observation.component.valueString (string)" in missing
    assert compiler.resource_plan("Observation").steps["valueString"].kind == DROP


def test_the_element_model_types_choice_elements_by_their_suffix() -> None:
    observation = elements("Observation")
    assert observation["valueString"].type == "string"
    assert observation["effectiveDateTime"].type == "dateTime"
    assert observation["valueQuantity"].type == "Quantity"
    assert observation["status"].enumerated and not observation["status"].carries
    assert elements("ImagingStudy_Series")["uid"].type == "id"
    assert elements("Extension")["valueBase64Binary"].type == "base64Binary"
    assert {"string", "uri", "dateTime", "id", "oid"} <= CARRIERS
