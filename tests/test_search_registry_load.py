"""The search parameter registry: the vendored R4 definitions, per-type views, custom params."""

from __future__ import annotations

import copy

import pytest

from fhir_server.search.registry import (
    SearchParamRegistry,
    expressions_per_base,
    params_from_definition,
)
from fhir_server.search.types import Component

CORE_TYPES = [
    "Patient",
    "Observation",
    "Condition",
    "Encounter",
    "Practitioner",
    "Organization",
    "Device",
    "Medication",
    "MedicationStatement",
    "MedicationRequest",
    "ImagingStudy",
]
RESOURCE_LEVEL = {
    "_id": ("token", "Resource.id"),
    "_lastUpdated": ("date", "Resource.meta.lastUpdated"),
    "_tag": ("token", "Resource.meta.tag"),
    "_profile": ("uri", "Resource.meta.profile"),
    "_security": ("token", "Resource.meta.security"),
    "_source": ("uri", "Resource.meta.source"),
}


@pytest.fixture(scope="module")
def registry() -> SearchParamRegistry:
    return SearchParamRegistry.default()


def test_every_official_definition_is_loaded(registry):
    per_base = sum(len(registry.own_params(t)) for t in registry.types())
    resource_level = len(registry.own_params("Resource")) + len(
        registry.own_params("DomainResource")
    )
    # 1,375 definitions; the multi-base ones count once per base (1,706 in all)
    assert per_base + resource_level == 1706
    assert len(
        {param.url for t in registry.types() for param in registry.for_type(t).values()}
    ) == (1375)
    assert len(registry.types()) == 146
    assert {"Patient", "Observation", "Bundle", "Binary"} <= set(registry.types())


@pytest.mark.parametrize(
    ("resource_type", "count"),
    [
        ("Patient", 32),
        ("Observation", 47),
        ("Condition", 30),
        ("Encounter", 32),
        ("Practitioner", 26),
        ("Organization", 22),
        ("Device", 21),
        ("Medication", 18),
        ("MedicationStatement", 20),
        ("MedicationRequest", 25),
        ("ImagingStudy", 26),
    ],
)
def test_core_types_have_all_their_params(registry, resource_type, count):
    params = registry.for_type(resource_type)
    # 9 Resource/DomainResource params (_id, _lastUpdated, _tag, _profile, _security, _source,
    # _content, _query, _text) + the type's own
    assert len(params) == count
    assert len(registry.own_params(resource_type)) == count - 9
    for code, (param_type, expression) in RESOURCE_LEVEL.items():
        assert params[code].type == param_type
        assert params[code].expression == expression


def test_bundle_has_no_domain_resource_params(registry):
    assert "_text" not in registry.for_type("Bundle")
    assert "_text" in registry.for_type("Patient")
    assert "_id" in registry.for_type("Bundle")


def test_unknown_type_has_only_resource_level_params(registry):
    params = registry.for_type("NotAType")
    assert set(params) == {
        "_id",
        "_lastUpdated",
        "_tag",
        "_profile",
        "_security",
        "_source",
        "_content",
        "_query",
        "_text",
    }


def test_multi_type_expression_is_split_per_base(registry):
    patient = registry.get("Observation", "patient")
    assert patient.expression == "Observation.subject.where(resolve() is Patient)"
    assert patient.url == "http://hl7.org/fhir/SearchParameter/clinical-patient"
    assert set(patient.target) == {"Group", "Patient"}
    assert patient.description == "The subject that the observation is about (if patient)"
    assert registry.get("Condition", "patient").expression == (
        "Condition.subject.where(resolve() is Patient)"
    )
    medication = registry.get("MedicationRequest", "medication")
    assert medication.expression == "(MedicationRequest.medication as Reference)"
    phone = registry.get("Practitioner", "phone")
    assert phone.expression == "Practitioner.telecom.where(system='phone')"
    date = registry.get("Encounter", "date")
    assert date.expression == "Encounter.period"
    assert date.resource_type == "Encounter"


def test_expressions_per_base_keeps_every_branch_of_a_type():
    split = expressions_per_base(
        "A.x | (B.y as Quantity) | A.z.where(system='a|b') | Resource.id", ["A", "B"]
    )
    assert split == {
        "A": "A.x | A.z.where(system='a|b') | Resource.id",
        "B": "(B.y as Quantity) | Resource.id",
    }


def test_composites_keep_components_resolvable_by_url(registry):
    composite = registry.get("Observation", "code-value-quantity")
    assert composite.type == "composite"
    assert composite.components == (
        Component("http://hl7.org/fhir/SearchParameter/clinical-code", "code"),
        Component(
            "http://hl7.org/fhir/SearchParameter/Observation-value-quantity", "value.as(Quantity)"
        ),
    )
    code = registry.by_url(composite.components[0].definition, "Observation")
    assert (code.code, code.type, code.expression) == ("code", "token", "Observation.code")
    value = registry.by_url(composite.components[1].definition)
    assert (value.code, value.type) == ("value-quantity", "quantity")
    assert registry.by_url("http://example.org/nothing") is None


def test_default_registries_are_independent(registry):
    first = SearchParamRegistry.default()
    first.add(_custom_param())
    assert first.get("Observation", "glucose-context") is not None
    assert SearchParamRegistry.default().get("Observation", "glucose-context") is None
    assert registry.get("Observation", "glucose-context") is None


def _custom_param(**changes) -> dict:
    param = {
        "resourceType": "SearchParameter",
        "url": "https://diatabase.org/fhir/SearchParameter/glucose-context",
        "name": "glucose-context",
        "status": "active",
        "code": "glucose-context",
        "base": ["Observation"],
        "type": "token",
        "description": "Meal context of a glucose reading",
        "expression": "Observation.extension('https://diatabase.org/fhir/StructureDefinition/"
        "glucose-context').value",
    }
    param.update(changes)
    return {key: value for key, value in param.items() if value is not None}


def test_add_custom_search_parameter():
    registry = SearchParamRegistry.default()
    before = len(registry.for_type("Observation"))
    added = registry.add(_custom_param())
    assert [p.resource_type for p in added] == ["Observation"]
    param = registry.get("Observation", "glucose-context")
    assert param.type == "token"
    assert param.expression.startswith("Observation.extension(")
    assert param.description == "Meal context of a glucose reading"
    assert len(registry.for_type("Observation")) == before + 1
    assert registry.by_url("https://diatabase.org/fhir/SearchParameter/glucose-context") == param


def test_custom_parameter_on_several_bases_is_split():
    registry = SearchParamRegistry.default()
    registry.add(
        _custom_param(
            code="diabetes-source",
            url="https://diatabase.org/fhir/SearchParameter/diabetes-source",
            base=["Observation", "Condition"],
            type="uri",
            expression="Observation.meta.source | Condition.meta.source",
        )
    )
    assert registry.get("Observation", "diabetes-source").expression == "Observation.meta.source"
    assert registry.get("Condition", "diabetes-source").expression == "Condition.meta.source"


def test_custom_parameter_replaces_one_with_the_same_code():
    registry = SearchParamRegistry.default()
    registry.add(_custom_param(code="status", type="token", expression="Observation.status"))
    assert registry.get("Observation", "status").url.startswith("https://diatabase.org/")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"code": None}, "SearchParameter.code"),
        ({"code": "has space"}, "SearchParameter.code"),
        ({"type": "fuzzy"}, "type must be one of"),
        ({"type": None}, "type must be one of"),
        ({"base": []}, "base must be a non-empty list"),
        ({"base": "Observation"}, "base must be a non-empty list"),
        ({"base": ["Spaceship"]}, "not an R4 resource type"),
        ({"base": ["observation"]}, "is not a type name"),
        ({"expression": None}, "expression (FHIRPath) is required"),
        ({"expression": "   "}, "expression (FHIRPath) is required"),
        ({"expression": "Observation.code.where("}, "not valid FHIRPath"),
        ({"resourceType": "Observation"}, "expected resourceType 'SearchParameter'"),
        ({"target": "Patient"}, "target must be a list of strings"),
        (
            {"base": ["Observation", "Condition"], "expression": "Observation.code"},
            "no branch for base 'Condition'",
        ),
        ({"type": "composite", "component": [{"definition": "x"}]}, "at least two components"),
        (
            {"type": "composite", "component": [{"definition": "x"}, {"expression": "y"}]},
            "each component needs a definition",
        ),
    ],
)
def test_invalid_custom_parameters_are_rejected(changes, message):
    registry = SearchParamRegistry.default()
    with pytest.raises(ValueError) as error:
        registry.add(_custom_param(**changes))
    assert message in str(error.value)
    assert registry.get("Observation", "glucose-context") is None


def test_non_object_is_rejected():
    with pytest.raises(ValueError, match="JSON object"):
        SearchParamRegistry.default().add(["not", "a", "dict"])  # type: ignore[arg-type]


def test_from_bundle_builds_a_registry_from_definitions():
    definition = _custom_param()
    registry = SearchParamRegistry.from_bundle({"entry": [{"resource": copy.deepcopy(definition)}]})
    assert list(registry.own_params("Observation")) == ["glucose-context"]
    assert params_from_definition(definition, strict=True)[0].code == "glucose-context"
