"""Compartment clauses from the vendored R4 CompartmentDefinitions, and the TokenExpander
hook for token :below/:above/:in/:not-in.

Runs against the real registry (search_registry_real.py) and a small in-memory TokenExpander
written here (a test double of the terminology service, which another issue builds).
"""

from __future__ import annotations

import pytest

from fhir_server.search.compartment import (
    compartment_clause,
    compartment_params,
    compartment_resource_types,
    compartment_types,
)
from fhir_server.search.errors import SearchError, UnsupportedModifier
from fhir_server.search.expansion import expand_token_clause, needs_expansion
from fhir_server.search.query import parse_search
from fhir_server.search.values import ReferenceValue, TokenValue
from tests.search_registry_real import REGISTRY


@pytest.mark.parametrize(
    ("resource_type", "params"),
    [
        ("Observation", ("subject", "performer")),
        ("Condition", ("patient", "asserter")),
        ("Encounter", ("patient",)),
        ("MedicationStatement", ("subject",)),
        ("MedicationRequest", ("subject",)),
        ("ImagingStudy", ("patient",)),
        ("Patient", ("link",)),
        ("Practitioner", ()),
        ("Organization", ()),
    ],
)
def test_patient_compartment_params_from_the_official_definition(resource_type, params):
    assert compartment_params("Patient", resource_type) == params


def test_compartment_definitions_loaded():
    assert compartment_types() == (
        "Device",
        "Encounter",
        "Patient",
        "Practitioner",
        "RelatedPerson",
    )
    types = compartment_resource_types("Patient")
    assert "Observation" in types and "Organization" not in types and len(types) > 50


@pytest.mark.parametrize(
    ("resource_type", "codes"),
    [
        ("Observation", ["subject", "performer"]),
        ("Condition", ["patient", "asserter"]),
        ("Encounter", ["patient"]),
        ("MedicationStatement", ["subject"]),
        ("MedicationRequest", ["subject"]),
    ],
)
def test_compartment_clause_is_an_or_of_reference_clauses(resource_type, codes):
    clauses = compartment_clause("Patient", "123", resource_type, REGISTRY)
    assert [clause.param.code for clause in clauses] == codes
    for clause in clauses:
        assert clause.modifier is None
        assert clause.values == (ReferenceValue(type="Patient", id="123"),)
        assert clause.param.resource_type == resource_type


def test_patient_in_its_own_compartment_via_id_and_link():
    clauses = compartment_clause("Patient", "123", "Patient", REGISTRY)
    assert [clause.param.code for clause in clauses] == ["_id", "link"]
    assert clauses[0].values == (TokenValue(None, "123", False),)


def test_encounter_compartment():
    clauses = compartment_clause("Encounter", "e1", "Observation", REGISTRY)
    assert [clause.param.code for clause in clauses] == ["encounter"]
    assert clauses[0].values == (ReferenceValue(type="Encounter", id="e1"),)


@pytest.mark.parametrize(
    ("compartment", "compartment_id", "resource_type"),
    [
        ("Patient", "123", "Organization"),  # not in the compartment
        ("Patient", "123", "Practitioner"),
        ("Patient", "1 2", "Observation"),  # not a valid id
        ("Patient", "'; DROP TABLE x", "Observation"),
        ("Spaceship", "1", "Observation"),
    ],
)
def test_compartment_errors(compartment, compartment_id, resource_type):
    with pytest.raises(SearchError):
        compartment_clause(compartment, compartment_id, resource_type, REGISTRY)


class DictExpander:
    """Test double of the terminology service: a two-level SNOMED CT hierarchy."""

    SNOMED = "http://snomed.info/sct"
    CHILDREN = {"73211009": ["46635009", "44054006"], "44054006": ["237599002"]}

    def descendants(self, system, code):
        if system != self.SNOMED:
            raise LookupError(f"unknown code system {system}")
        found = []
        for child in self.CHILDREN.get(code, []):
            found += [child, *self.descendants(system, child)]
        return found

    def ancestors(self, system, code):
        parents = [parent for parent, kids in self.CHILDREN.items() if code in kids]
        return parents + [a for parent in parents for a in self.ancestors(system, parent)]

    def value_set_codes(self, url):
        if url != "https://diatabase.org/fhir/ValueSet/glucose-codes":
            raise LookupError(f"unknown value set {url}")
        return [("http://loinc.org", "2339-0"), ("http://loinc.org", "15074-8")]


def clause_for(key, value):
    return parse_search("Condition", [(key, value)], REGISTRY).clauses[0]


def test_below_expands_to_the_code_and_its_descendants():
    clause = clause_for("code:below", "http://snomed.info/sct|73211009")
    assert needs_expansion(clause)
    codes = [value.code for value in expand_token_clause(clause, DictExpander())]
    assert codes == ["73211009", "46635009", "44054006", "237599002"]


def test_above_expands_to_the_code_and_its_ancestors():
    clause = clause_for("code:above", "http://snomed.info/sct|237599002")
    codes = [value.code for value in expand_token_clause(clause, DictExpander())]
    assert codes == ["237599002", "44054006", "73211009"]


@pytest.mark.parametrize("modifier", ["in", "not-in"])
def test_in_and_not_in_expand_the_value_set(modifier):
    clause = clause_for(f"code:{modifier}", "https://diatabase.org/fhir/ValueSet/glucose-codes")
    assert expand_token_clause(clause, DictExpander()) == (
        TokenValue("http://loinc.org", "2339-0", True),
        TokenValue("http://loinc.org", "15074-8", True),
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("code:below", "http://snomed.info/sct|73211009"),
        ("code:above", "http://snomed.info/sct|73211009"),
        ("code:in", "https://diatabase.org/fhir/ValueSet/glucose-codes"),
        ("code:not-in", "https://diatabase.org/fhir/ValueSet/glucose-codes"),
    ],
)
def test_without_expander_the_modifier_is_refused(key, value):
    with pytest.raises(UnsupportedModifier) as error:
        expand_token_clause(clause_for(key, value), None)
    assert error.value.expression == key


def test_unknown_value_set_or_system_is_a_search_error():
    with pytest.raises(SearchError):
        expand_token_clause(clause_for("code:in", "http://nowhere/vs"), DictExpander())
    with pytest.raises(SearchError):
        expand_token_clause(clause_for("code:below", "http://loinc.org|x"), DictExpander())


def test_plain_token_clause_needs_no_expansion():
    clause = clause_for("code", "E11")
    assert not needs_expansion(clause)
    with pytest.raises(ValueError):
        expand_token_clause(clause, DictExpander())
