"""The shipped StructureDefinitions and SearchParameters are well-formed FHIR R4, use the
project's canonical URLs, and refer only to value sets the terminology service holds."""

from __future__ import annotations

import pytest

from fhir_server.model.validation import validate_structure
from fhir_server.search.registry import SearchParamRegistry
from profiles import CANONICAL_BASE, load_search_parameters, load_structure_definitions
from profiles.validator import validate_definitions
from terminology import TerminologyService

DEFINITIONS = load_structure_definitions()
NAMES = {"DiabetesPatient", "BloodGlucose", "CGMSensorReading", "HbA1c", "DiabetesCondition",
         "DiabetesMedicationStatement"}


def test_the_six_profiles_are_shipped() -> None:
    assert {d["id"] for d in DEFINITIONS} == NAMES


@pytest.mark.parametrize("definition", DEFINITIONS, ids=[d["id"] for d in DEFINITIONS])
def test_definition_is_a_valid_constraint(definition: dict) -> None:
    assert validate_structure(definition) == []
    assert definition["url"] == f"{CANONICAL_BASE}/StructureDefinition/{definition['id']}"
    assert definition["name"] == definition["id"]
    assert definition["derivation"] == "constraint"
    assert definition["baseDefinition"] == (
        f"http://hl7.org/fhir/StructureDefinition/{definition['type']}"
    )
    elements = definition["differential"]["element"]
    ids = [e["id"] for e in elements]
    assert len(ids) == len(set(ids))
    for element in elements:
        path = ".".join(part.split(":")[0] for part in element["id"].split("."))
        assert element["path"] == path
        assert path.split(".")[0] == definition["type"]
        for constraint in element.get("constraint", ()):
            assert constraint["human"] and constraint["expression"]
            assert constraint["severity"] in ("error", "warning")


def test_invariant_keys_are_unique_and_bindings_resolve() -> None:
    terminology = TerminologyService()
    keys = []
    for definition in DEFINITIONS:
        for element in definition["differential"]["element"]:
            keys.extend(c["key"] for c in element.get("constraint", ()))
            binding = element.get("binding")
            if binding:
                assert binding["valueSet"].startswith(f"{CANONICAL_BASE}/ValueSet/")
                assert terminology.value_set_codes(binding["valueSet"])
    assert len(keys) == len(set(keys)) > 10
    assert validate_definitions(DEFINITIONS) == []


def test_search_parameters_load_into_a_registry() -> None:
    parameters = load_search_parameters()
    assert [p["code"] for p in parameters] == ["ins"]
    registry = SearchParamRegistry.default()
    for parameter in parameters:
        assert validate_structure(parameter) == []
        assert parameter["url"] == f"{CANONICAL_BASE}/SearchParameter/{parameter['id']}"
        assert registry.add(parameter)
    assert registry.get("Patient", "ins").type == "token"


def test_package_never_imports_fhir_server() -> None:
    """`profiles` is a library the server uses (DESIGN.md): no import of fhir_server."""
    import ast
    from pathlib import Path

    import profiles

    package = Path(profiles.__file__).parent
    sources = sorted(package.rglob("*.py"))
    assert len(sources) >= 5
    for source in sources:
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n.split(".")[0] == "fhir_server" for n in names), source
