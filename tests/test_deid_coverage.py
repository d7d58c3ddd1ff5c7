"""Every element of every R4 resource type that can carry text, an identifier, a date or a
URI is decided by a rule of the default de-identification profile: walked through the
element model the rules are compiled against, and through the R4 core StructureDefinitions
themselves (profiles/r4), so that an element the model missed would fail too."""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from fhir_server.deid.elements import CARRIERS, elements
from fhir_server.deid.plan import DROP, KEEP, PlanCompiler, uncovered
from fhir_server.deid.rules import default_config, load_rules
from fhir_server.model.resource_types import resource_types

RULES = load_rules()
COMPILER = PlanCompiler(RULES)
DEFINITIONS = Path(__file__).parents[1] / "profiles" / "r4" / "structuredefinitions.json.gz"
FHIR_TYPE = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"


@cache
def core_definitions() -> dict[str, dict[str, Any]]:
    """The R4 core resource and datatype definitions (not profiles), by type name."""
    with gzip.open(DEFINITIONS) as file:
        found = json.load(file)
    return {
        d["type"]: d
        for d in found
        if d.get("derivation") == "specialization" and not d.get("abstract")
        and d.get("kind") in ("resource", "complex-type")
    }  # fmt: skip


def typed_paths(type_name: str) -> list[tuple[list[str], str]]:
    """Every element of a definition's snapshot as (JSON path below the type, FHIR type):
    `value[x]` gives one per type; an element without a type (a contentReference) none."""
    found = []
    for element in core_definitions()[type_name]["snapshot"]["element"]:
        path = element["path"].split(".")[1:]
        for datatype in element.get("type") or ():
            code = datatype["code"]
            if code.startswith("http://hl7.org/fhirpath/System."):  # ids, Extension.url
                extension = [e for e in datatype.get("extension", ()) if e["url"] == FHIR_TYPE]
                code = extension[0]["valueUrl"] if extension else "string"
            if not path:
                continue
            name = path[-1]
            if name.endswith("[x]"):
                name = name[:-3] + code[0].upper() + code[1:]
            found.append(([*path[:-1], name], code))
    return found


def carrier_paths(type_name: str) -> list[tuple[list[str], str]]:
    """The elements that can carry text, an identifier, a date or a URI."""
    return [(path, code) for path, code in typed_paths(type_name) if code in CARRIERS]


def decided_by_a_rule(resource_type: str, path: list[str]) -> bool:
    """Whether the compiled plan decides the element at `path` (or an ancestor's rule
    claims the whole subtree it lies in)."""
    plan = COMPILER.resource_plan(resource_type)
    for name in path:
        step = plan.steps.get(name)
        assert step is not None, (resource_type, path)  # an element the model lacks
        if step.rule is not None and step.plan is None:
            return True
        if step.plan is None:
            return False
        plan = step.plan
    return False


@pytest.mark.parametrize(
    "resource_type", sorted(t for t, d in core_definitions().items() if d["kind"] == "resource")
)
def test_every_carrier_element_of_the_r4_definitions_is_decided(resource_type: str) -> None:
    """From the StructureDefinition of the resource type: each of its own elements (its
    backbone elements included) and each element of the datatypes they have (one level:
    `Observation.code.text`, `Observation.component.valueString`) is decided by a rule."""
    definitions = core_definitions()
    checked, undecided = 0, []
    for path, code in typed_paths(resource_type):
        if code in definitions and code not in ("Extension", "Resource"):
            for inner, inner_type in carrier_paths(code):
                checked += 1
                if not decided_by_a_rule(resource_type, [*path, *inner]):
                    undecided.append((".".join([*path, *inner]), inner_type))
    for path, code in carrier_paths(resource_type):
        checked += 1
        if not decided_by_a_rule(resource_type, path):
            undecided.append((".".join(path), code))
    assert checked > 0 and undecided == []


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
