"""Definitions naming an R4 core SearchParameter must agree with it (SearchParameter
`derivedFrom`, CapabilityStatement `searchParam.definition`). Before these checks, each
invalid example below was accepted (no issue)."""

from __future__ import annotations

from fhir_server.service.search_definitions import check_search_definitions

CORE_NAME = "http://hl7.org/fhir/SearchParameter/Organization-name"


def derived(**changes: object) -> dict:
    resource = {
        "resourceType": "SearchParameter", "url": "http://example.com/sp", "name": "n",
        "status": "active", "description": "d", "code": "name", "base": ["Organization"],
        "type": "string", "expression": "Organization.name", "derivedFrom": CORE_NAME,
    }
    resource.update(changes)
    return resource


def test_a_derived_search_parameter_keeps_the_type_and_bases() -> None:
    assert check_search_definitions(derived()) == []
    assert check_search_definitions(derived(derivedFrom=CORE_NAME + "|4.0.1")) == []


def test_a_different_type_is_an_error() -> None:
    issues = check_search_definitions(derived(type="token"))
    assert [(i.severity, i.expression) for i in issues] == [("error", ("SearchParameter.type",))]


def test_a_base_the_parent_does_not_list_is_an_error() -> None:
    issues = check_search_definitions(derived(base=["Organization", "Patient"]))
    assert [(i.severity, i.expression) for i in issues] == [
        ("error", ("SearchParameter.base[1]",))
    ]


def test_an_unknown_parent_is_not_checked() -> None:
    assert check_search_definitions(derived(derivedFrom="http://example.com/other")) == []


def capability(param_type: str) -> dict:
    param = {"name": "clinical-status", "type": param_type,
             "definition": "http://hl7.org/fhir/SearchParameter/AllergyIntolerance-clinical-status"}
    return {"resourceType": "CapabilityStatement", "rest": [
        {"mode": "server", "resource": [{"type": "AllergyIntolerance", "searchParam": [param]}]}
    ]}


def test_a_capability_statement_declares_the_core_type() -> None:
    assert check_search_definitions(capability("token")) == []
    issues = check_search_definitions(capability("date"))
    assert [(i.severity, i.expression) for i in issues] == [
        ("error", ("CapabilityStatement.rest[0].resource[0].searchParam[0].type",))
    ]
