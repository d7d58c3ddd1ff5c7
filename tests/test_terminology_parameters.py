"""parse_parameters and the operation input adapters (GET query strings and POSTed
Parameters give the same answers)."""

import pytest

from terminology import operations
from terminology.errors import TerminologyError
from terminology.parameters import parse_parameters
from terminology.service import TerminologyService
from terminology.uris import ATC, CIM10, ICD10, LOINC, VS_DIABETES_CONDITIONS


@pytest.fixture(scope="module")
def service():
    return TerminologyService()


def first(parameters: dict, name: str):
    entry = next(e for e in parameters["parameter"] if e["name"] == name)
    return next(v for k, v in entry.items() if k != "name")


def test_parse_parameters_flattens_values():
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "system", "valueUri": ICD10},
            {"name": "code", "valueCode": "E11"},
            {"name": "count", "valueInteger": 5},
            {"name": "reverse", "valueBoolean": True},
            {"name": "coding", "valueCoding": {"system": ATC, "code": "A10"}},
            {"name": "property", "valueCode": "parent"},
            {"name": "property", "valueCode": "child"},
            {"name": "valueSet", "resource": {"resourceType": "ValueSet"}},
            {"name": "match", "part": [{"name": "equivalence", "valueCode": "wider"}]},
        ],
    }
    assert parse_parameters(body) == {
        "system": ICD10,
        "code": "E11",
        "count": 5,
        "reverse": True,
        "coding": {"system": ATC, "code": "A10"},
        "property": ["parent", "child"],
        "valueSet": {"resourceType": "ValueSet"},
        "match": {"equivalence": "wider"},
    }
    assert parse_parameters({"resourceType": "Parameters"}) == {}


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {"resourceType": "Patient"},
        {"resourceType": "Parameters", "parameter": {"name": "code"}},
        {"resourceType": "Parameters", "parameter": ["code"]},
        {"resourceType": "Parameters", "parameter": [{"valueCode": "E11"}]},
        {"resourceType": "Parameters", "parameter": [{"name": "code"}]},
        {"resourceType": "Parameters", "parameter": [
            {"name": "code", "valueCode": "E11", "valueString": "E11"}]},
        {"resourceType": "Parameters", "parameter": [{"name": "count", "valueInteger": "5"}]},
        {"resourceType": "Parameters", "parameter": [{"name": "count", "valueInteger": True}]},
        {"resourceType": "Parameters", "parameter": [{"name": "reverse", "valueBoolean": 1}]},
        {"resourceType": "Parameters", "parameter": [{"name": "code", "valueCode": 11}]},
        {"resourceType": "Parameters", "parameter": [{"name": "x", "valueFoo": "y"}]},
        {"resourceType": "Parameters", "parameter": [
            {"name": "coding", "valueCoding": {"code": 3}}]},
        {"resourceType": "Parameters", "parameter": [{"name": "valueSet", "resource": {}}]},
        {"resourceType": "Parameters", "parameter": [{"name": "m", "part": [{"name": 1}]}]},
    ],
)
def test_malformed_parameters_are_rejected(body):
    with pytest.raises(TerminologyError) as error:
        parse_parameters(body)
    assert (error.value.code, error.value.status) == ("invalid", 400)


def test_lookup_from_query_and_from_coding(service):
    query = {"system": ATC, "code": "A10BA02", "displayLanguage": "fr"}
    assert first(operations.lookup(service, query), "display") == "metformine"
    posted = parse_parameters({"resourceType": "Parameters", "parameter": [
        {"name": "coding", "valueCoding": {"system": ATC, "code": "A10BA02"}},
        {"name": "displayLanguage", "valueCode": "fr"}]})
    assert operations.lookup(service, posted) == operations.lookup(service, query)
    with pytest.raises(TerminologyError):
        operations.lookup(service, {"code": "E11"})


def test_validate_code_adapters(service):
    assert first(operations.code_system_validate_code(
        service, {"url": ICD10, "code": "E11.9"}), "result") is True
    assert first(operations.code_system_validate_code(
        service, {"code": "E11.9"}, system_url=CIM10), "result") is True
    concept = {"codeableConcept": {"coding": [{"system": LOINC, "code": "4548-4"}]}}
    assert first(operations.value_set_validate_code(
        service, concept, value_set_url="https://diatabase.org/fhir/ValueSet/hba1c-codes"),
        "result") is True
    assert first(operations.value_set_validate_code(
        service, {"url": VS_DIABETES_CONDITIONS, "system": ICD10, "code": "I10"}),
        "result") is False


def test_expand_adapter_coerces_query_strings(service):
    result = operations.expand(service, {"url": VS_DIABETES_CONDITIONS, "filter": "diabete",
                                         "offset": "2", "count": "3"})
    assert result["expansion"]["offset"] == 2
    assert len(result["expansion"]["contains"]) == 3
    for bad in ({"url": VS_DIABETES_CONDITIONS, "count": "-1"},
                {"url": VS_DIABETES_CONDITIONS, "count": "many"},
                {"filter": "x"}):
        with pytest.raises(TerminologyError):
            operations.expand(service, bad)


def test_subsumes_adapter(service):
    assert first(operations.subsumes(service, {"system": ATC, "codeA": "A10",
                                               "codeB": "A10BA02"}), "outcome") == "subsumes"
    codings = {"codingA": {"system": ICD10, "code": "E11.9"},
               "codingB": {"system": ICD10, "code": "E11"}}
    assert first(operations.subsumes(service, codings), "outcome") == "subsumed-by"
    with pytest.raises(TerminologyError):
        operations.subsumes(service, {"codingA": {"system": ICD10, "code": "E11"},
                                      "codingB": {"system": ATC, "code": "A10"}})


def test_translate_adapter_reverse_flag(service):
    result = operations.translate(service, {"system": ICD10, "code": "E11.0",
                                            "reverse": "true", "targetsystem": CIM10})
    assert first(result, "result") is True
    with pytest.raises(TerminologyError):
        operations.translate(service, {"system": ICD10, "code": "E11", "reverse": "maybe"})
