"""Clause parsing: modifiers per type and their errors, chains (1 and 2 levels, several
targets), _has (single and nested), composites, unknown parameters in lenient and strict
mode, system-level search and the canonical self link.

Runs against the real registry (`SearchParamRegistry.default()` plus one custom parameter,
see search_registry_real.py); one test needs a reference parameter without declared target,
which R4 does not have, and uses the hand-made double (search_query_double.py).
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from fhir_server.search.errors import SearchError
from fhir_server.search.query import (
    ChainClause,
    Clause,
    HasClause,
    leaf_clause,
    parse_search,
    parse_system_search,
)
from fhir_server.search.values import (
    CompositeValue,
    DateValue,
    MissingValue,
    OfTypeValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
)
from tests.search_registry_real import REGISTRY


def only_clause(resource_type: str, key: str, value: str):
    query = parse_search(resource_type, [(key, value)], REGISTRY)
    assert not query.unknown, query.unknown
    (clause,) = query.clauses
    return clause


# --- modifiers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource_type", "key", "value", "modifier", "expected"),
    [
        ("Patient", "name:missing", "true", "missing", MissingValue(True)),
        ("Patient", "birthdate:missing", "false", "missing", MissingValue(False)),
        ("Observation", "value-quantity:missing", "true", "missing", MissingValue(True)),
        ("Observation", "subject:missing", "true", "missing", MissingValue(True)),
        ("Observation", "code-value-quantity:missing", "true", "missing", MissingValue(True)),
        ("ValueSet", "url:missing", "false", "missing", MissingValue(False)),
        ("Patient", "name:exact", "Hélène", "exact", StringValue("Hélène", "helene")),
        ("Patient", "name:contains", "lèn", "contains", StringValue("lèn", "len")),
        ("Patient", "name:text", "Hélène", "text", StringValue("Hélène", "helene")),
        ("Observation", "code:text", "Glucose", "text", StringValue("Glucose", "glucose")),
        (
            "Observation",
            "code:not",
            "http://loinc.org|2339-0",
            "not",
            TokenValue("http://loinc.org", "2339-0", True),
        ),
        (
            "Observation",
            "code:below",
            "http://snomed.info/sct|73211009",
            "below",
            TokenValue("http://snomed.info/sct", "73211009", True),
        ),
        (
            "Observation",
            "code:above",
            "http://snomed.info/sct|46635009",
            "above",
            TokenValue("http://snomed.info/sct", "46635009", True),
        ),
        (
            "Observation",
            "code:in",
            "https://diatabase.org/fhir/ValueSet/glucose-codes",
            "in",
            UriValue("https://diatabase.org/fhir/ValueSet/glucose-codes"),
        ),
        (
            "Observation",
            "code:not-in",
            "https://diatabase.org/fhir/ValueSet/hba1c-codes",
            "not-in",
            UriValue("https://diatabase.org/fhir/ValueSet/hba1c-codes"),
        ),
        (
            "Patient",
            "identifier:of-type",
            "http://terminology.hl7.org/CodeSystem/v2-0203|MR|12345",
            "of-type",
            OfTypeValue("http://terminology.hl7.org/CodeSystem/v2-0203", "MR", "12345"),
        ),
        (
            "Observation",
            "subject:identifier",
            "urn:oid:1.2.250.1.213.1.4.8|123",
            "identifier",
            ReferenceValue(identifier_system="urn:oid:1.2.250.1.213.1.4.8", identifier_value="123"),
        ),
        (
            "Observation",
            "subject:Patient",
            "42",
            "Patient",
            ReferenceValue(type="Patient", id="42"),
        ),
        ("Observation", "subject:Device", "d1", "Device", ReferenceValue(type="Device", id="d1")),
        (
            "ValueSet",
            "url:below",
            "https://diatabase.org/fhir/",
            "below",
            UriValue("https://diatabase.org/fhir/"),
        ),
        (
            "ValueSet",
            "url:above",
            "https://diatabase.org/fhir/ValueSet/x/1",
            "above",
            UriValue("https://diatabase.org/fhir/ValueSet/x/1"),
        ),
        (
            "Observation",
            "_profile:below",
            "https://diatabase.org/fhir/StructureDefinition/",
            "below",
            UriValue("https://diatabase.org/fhir/StructureDefinition/"),
        ),
    ],
)
def test_modifiers_allowed(resource_type, key, value, modifier, expected):
    clause = only_clause(resource_type, key, value)
    assert isinstance(clause, Clause)
    assert clause.modifier == modifier
    assert clause.values == (expected,)
    assert clause.key == key


@pytest.mark.parametrize(
    ("resource_type", "key", "value"),
    [
        ("Patient", "name:missing", "yes"),
        ("Patient", "name:missing", "TRUE"),
        ("Patient", "name:not", "x"),  # :not is for tokens
        ("Patient", "name:below", "x"),
        ("Patient", "name:identifier", "x"),
        ("Patient", "birthdate:exact", "2024"),
        ("Patient", "birthdate:contains", "2024"),
        ("Observation", "value-quantity:text", "5"),
        ("Observation", "code:exact", "x"),
        ("Observation", "code:contains", "x"),
        ("Observation", "code:identifier", "x"),
        ("Observation", "code:of-type", "a|b|c"),  # of-type is for identifier parameters
        ("Patient", "identifier:of-type", "a|b"),  # needs three parts
        ("Observation", "code:below", "73211009"),  # token :below needs system|code
        ("Observation", "code:above", "http://snomed.info/sct|"),
        ("Observation", "subject:exact", "x"),
        ("Observation", "subject:text", "x"),
        ("Observation", "subject:Practitioner", "1"),  # not a target of subject
        ("Observation", "subject:patient", "1"),  # lower case: not a type, not a modifier
        ("Observation", "subject:below", "x"),
        ("ValueSet", "url:exact", "x"),
        ("ValueSet", "url:not", "x"),
        ("Observation", "code-value-quantity:exact", "a$5"),
        ("Observation", "code:foo", "x"),
        ("Observation", "code:not:text", "x"),
    ],
)
def test_modifiers_refused(resource_type, key, value):
    with pytest.raises(SearchError) as error:
        parse_search(resource_type, [(key, value)], REGISTRY)
    assert error.value.expression == key


def test_or_and_and():
    query = parse_search(
        "Observation",
        [("code", "2339-0,15074-8"), ("date", "ge2024-01-01"), ("date", "lt2024-02-01")],
        REGISTRY,
    )
    code, date_from, date_to = query.clauses
    assert [value.code for value in code.values] == ["2339-0", "15074-8"]
    assert isinstance(date_from.values[0], DateValue)
    assert (date_from.values[0].prefix, date_to.values[0].prefix) == ("ge", "lt")


# --- composites --------------------------------------------------------------------------


def test_composite_code_value_quantity():
    clause = only_clause(
        "Observation",
        "code-value-quantity",
        "http://loinc.org|2339-0$gt180|http://unitsofmeasure.org|mg/dL",
    )
    (value,) = clause.values
    assert value == CompositeValue(
        (
            TokenValue("http://loinc.org", "2339-0", True),
            QuantityValue(
                "gt",
                Decimal("180"),
                Decimal("179.5"),
                Decimal("180.5"),
                "http://unitsofmeasure.org",
                "mg/dL",
            ),
        )
    )


def test_composite_or_list_and_date_component():
    clause = only_clause("Observation", "code-value-date", "a$ge2024,b$lt2023-06")
    assert [value.parts[1].prefix for value in clause.values] == ["ge", "lt"]
    assert [value.parts[0].code for value in clause.values] == ["a", "b"]


def test_composite_escaped_dollar_stays_in_the_code():
    clause = only_clause("Observation", "component-code-value-quantity", r"a\$b$5")
    assert clause.values[0].parts[0] == TokenValue(None, "a$b", False)


@pytest.mark.parametrize("value", ["a", "a$5$6", "a$", "$5", "a$notanumber"])
def test_malformed_composites_raise(value):
    with pytest.raises(SearchError):
        parse_search("Observation", [("code-value-quantity", value)], REGISTRY)


# --- chains ------------------------------------------------------------------------------


def test_chain_one_level_with_type():
    clause = only_clause("Observation", "subject:Patient.name", "Hélène")
    assert isinstance(clause, ChainClause)
    assert (clause.param.code, clause.target_type, clause.target_types) == (
        "subject",
        "Patient",
        ("Patient",),
    )
    assert clause.inner == Clause(
        REGISTRY.get("Patient", "name"), None, (StringValue("Hélène", "helene"),)
    )


def test_chain_single_target_needs_no_type():
    clause = only_clause("Observation", "patient.birthdate", "le1960")
    assert (clause.target_type, clause.target_types) == (None, ("Patient",))
    assert clause.inner.values[0].prefix == "le"


def test_chain_several_targets_applies_to_every_type_having_the_parameter():
    clause = only_clause("Observation", "subject.name", "Dupont")
    # Device and Group have no "name"; Location and Patient do, both as strings.
    assert set(clause.target_types) == {"Location", "Patient"}


def test_chain_two_levels():
    clause = only_clause("Observation", "patient.organization.name", "CHU de Nantes")
    assert isinstance(clause, ChainClause) and isinstance(clause.inner, ChainClause)
    assert clause.inner.param.code == "organization"
    assert clause.inner.target_types == ("Organization",)
    assert leaf_clause(clause).values == (StringValue("CHU de Nantes", "chu de nantes"),)
    assert clause.key == "patient.organization.name"


def test_chain_three_levels_with_modifier_at_the_end():
    clause = only_clause("Observation", "subject:Patient.organization.partof.name:exact", "AP-HP")
    leaf = leaf_clause(clause)
    assert (leaf.param.code, leaf.modifier, leaf.values[0].value) == ("name", "exact", "AP-HP")
    assert clause.key == "subject:Patient.organization.partof.name:exact"


def test_chain_to_identifier_token():
    clause = only_clause(
        "Observation", "subject:Patient.identifier", "urn:oid:1.2.250.1.213.1.4.8|1840575"
    )
    assert leaf_clause(clause).values == (
        TokenValue("urn:oid:1.2.250.1.213.1.4.8", "1840575", True),
    )


def test_chain_inner_missing_modifier():
    clause = only_clause("Condition", "patient.name:missing", "true")
    assert leaf_clause(clause).values == (MissingValue(True),)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("code.name", "x"),  # chain on a token
        ("date.name", "x"),
        ("patient.nonexistent", "x"),  # unknown inner parameter
        ("subject:Patient.nonexistent", "x"),
        ("subject.device-name.x", "x"),  # chain on a string, second level
        ("subject:Practitioner.name", "x"),  # not a target of subject
        ("subject:patient.name", "x"),  # lower-case: not a type
        ("patient.", "x"),
        ("patient.birthdate", "notadate"),
        ("subject.birthdate", "2020"),  # date on Patient, string on Device: ambiguous
        ("patient.name:exact:x", "y"),
        ("subject:Location.near", "1|2|3|km"),  # special parameters are not supported
    ],
)
def test_broken_chains_raise(key, value):
    with pytest.raises(SearchError) as error:
        parse_search("Observation", [(key, value)], REGISTRY)
    assert error.value.expression == key


def test_chain_on_a_reference_without_declared_target_needs_a_type():
    # R4 declares a target for every reference parameter, so this needs a hand-made one
    # (a custom parameter may declare none): the test double's Observation "focus".
    from tests.search_query_double import REGISTRY as HAND_MADE

    with pytest.raises(SearchError) as error:
        parse_search("Observation", [("focus.name", "x")], HAND_MADE)
    assert error.value.expression == "focus.name"


def test_chain_ambiguity_resolved_by_naming_the_type():
    clause = only_clause("Observation", "subject:Patient.birthdate", "2020")
    assert clause.target_types == ("Patient",)


# --- _has --------------------------------------------------------------------------------


def test_has_single():
    clause = only_clause("Patient", "_has:Observation:patient:code", "http://loinc.org|4548-4")
    assert isinstance(clause, HasClause)
    assert (clause.resource_type, clause.ref_param.code) == ("Observation", "patient")
    assert clause.inner.values == (TokenValue("http://loinc.org", "4548-4", True),)
    assert clause.key == "_has:Observation:patient:code"


def test_has_with_modifier_and_prefix():
    clause = only_clause("Patient", "_has:Observation:subject:value-quantity", "gt8|%|%")
    assert clause.inner.values[0].prefix == "gt"
    clause = only_clause("Patient", "_has:Condition:patient:code:text", "diabète")
    assert (clause.inner.modifier, clause.inner.values[0].normalised) == ("text", "diabete")


def test_has_nested():
    clause = only_clause(
        "Patient", "_has:Observation:patient:_has:AuditEvent:entity:agent", "Practitioner/7"
    )
    assert isinstance(clause.inner, HasClause)
    assert (clause.inner.resource_type, clause.inner.ref_param.code) == ("AuditEvent", "entity")
    assert leaf_clause(clause).values == (ReferenceValue(type="Practitioner", id="7"),)


def test_has_with_inner_chain():
    clause = only_clause("Patient", "_has:Observation:patient:encounter.date", "2024")
    assert isinstance(clause.inner, ChainClause)


@pytest.mark.parametrize(
    "key",
    [
        "_has",
        "_has:Observation",
        "_has:Observation:patient",
        "_has:Observation:patient:",
        "_has::patient:code",
        "_has:observation:patient:code",  # not a type name
        "_has:Observation:nonexistent:code",
        "_has:Observation:code:code",  # code is not a reference
        "_has:Observation:patient:nonexistent",
        "_has:Observation:encounter:code",  # Observation.encounter never refers to a Patient
        "_has:Observation:patient:_has:AuditEvent:entity",
    ],
)
def test_has_wrong_shape_raises(key):
    with pytest.raises(SearchError) as error:
        parse_search("Patient", [(key, "x")], REGISTRY)
    assert error.value.expression == key


# --- unknown parameters: lenient vs strict ----------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "reason_part"),
    [
        ("colour", "red", "not a known search parameter of Patient"),
        ("nme", "Dupont", "not a known search parameter"),
        ("_query", "diabetes", "not supported"),
        ("_type", "Observation", "system-level"),
        ("name", "", "empty value"),
        ("_foo", "1", "not a known search parameter"),
    ],
)
def test_unknown_parameters_are_reported_in_lenient_mode(key, value, reason_part):
    query = parse_search("Patient", [("gender", "female"), (key, value)], REGISTRY)
    assert [clause.param.code for clause in query.clauses] == ["gender"]
    (unknown,) = query.unknown
    assert (unknown.name, unknown.value) == (key, value)
    assert reason_part in unknown.reason


@pytest.mark.parametrize("key", ["colour", "_text:exact", "nme:exact", "foo.bar"])
def test_unknown_parameters_are_refused_in_strict_mode(key):
    with pytest.raises(SearchError) as error:
        parse_search("Patient", [("gender", "female"), (key, "x")], REGISTRY, strict=True)
    assert error.value.expression == key


def test_strict_mode_accepts_known_parameters():
    query = parse_search("Patient", [("gender", "female"), ("_count", "5")], REGISTRY, strict=True)
    assert len(query.clauses) == 1 and query.result.count == 5


def test_bad_resource_type_raises():
    with pytest.raises(SearchError):
        parse_search("patient; drop", [], REGISTRY)


# --- system-level search -----------------------------------------------------------------


def test_system_search_with_types_keeps_common_parameters():
    query = parse_system_search(
        [("_type", "Patient,Observation"), ("_lastUpdated", "ge2024"), ("_id", "a,b")], REGISTRY
    )
    assert query.resource_type is None
    assert query.resource_types == ("Patient", "Observation")
    assert [clause.param.code for clause in query.clauses] == ["_lastUpdated", "_id"]


def test_system_search_parameter_shared_by_listed_types():
    query = parse_system_search([("_type", "Condition,Observation"), ("code", "E11")], REGISTRY)
    assert query.clauses[0].values == (TokenValue(None, "E11", False),)


def test_system_search_parameter_missing_on_one_type_is_unknown():
    query = parse_system_search([("_type", "Patient,Observation"), ("code", "x")], REGISTRY)
    assert not query.clauses
    assert "every type in _type" in query.unknown[0].reason
    with pytest.raises(SearchError):
        parse_system_search([("_type", "Patient,Observation"), ("code", "x")], REGISTRY, True)


def test_system_search_without_types_only_common_parameters():
    query = parse_system_search([("_id", "1"), ("name", "x")], REGISTRY)
    assert [clause.param.code for clause in query.clauses] == ["_id"]
    assert query.unknown[0].name == "name"


def test_system_search_bad_type_raises():
    with pytest.raises(SearchError):
        parse_system_search([("_type", "Patient,not a type")], REGISTRY)


def test_system_search_self_link_keeps_type_list():
    query = parse_system_search(
        [("_type", "Patient,Observation"), ("_type", "Patient"), ("_id", "1")], REGISTRY
    )
    assert query.self_link_items() == [("_type", "Patient,Observation"), ("_id", "1")]


# --- self link ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource_type", "items", "expected"),
    [
        ("Observation", [("date", "eq2024"), ("code", "b,a")], [("code", "b,a"), ("date", "2024")]),
        ("Observation", [("value-quantity", "gt5.40||mg")], [("value-quantity", "gt5.40||mg")]),
        # R4 clinical-patient targets Patient and Group: a bare id keeps no type.
        ("Observation", [("patient", "123")], [("patient", "123")]),
        ("Condition", [("encounter", "e1")], [("encounter", "Encounter/e1")]),
        ("Observation", [("subject:Patient", "123")], [("subject:Patient", "Patient/123")]),
        ("Patient", [("name", r"a\,b"), ("colour", "red")], [("name", r"a\,b")]),
        ("Observation", [("code", r"x\|y|z\$")], [("code", r"x\|y|z\$")]),
        (
            "Observation",
            [("date", "lt2024"), ("date", "ge2023")],
            [("date", "ge2023"), ("date", "lt2024")],
        ),
        ("Observation", [("_cursor", "opaque-token"), ("_count", "10")], [("_count", "10")]),
        (
            "Observation",
            [("subject:Patient.name:exact", "Éloi")],
            [("subject:Patient.name:exact", "Éloi")],
        ),
        (
            "Patient",
            [("_has:Observation:patient:code", "|x")],
            [("_has:Observation:patient:code", "|x")],
        ),
        ("Observation", [("code-value-quantity", "a|b$eq5")], [("code-value-quantity", "a|b$5")]),
        ("Observation", [("code:missing", "true")], [("code:missing", "true")]),
        ("Observation", [("date", "2024-03-05T10:00 02:00")], [("date", "2024-03-05T10:00+02:00")]),
        (
            "Observation",
            [("_count", "5000"), ("_sort", "-date"), ("_include", "Observation:patient")],
            [("_sort", "-date"), ("_count", "1000"), ("_include", "Observation:patient")],
        ),
        (
            "Observation",
            [
                ("_summary", "count"),
                ("_total", "accurate"),
                ("_pretty", "true"),
                ("_elements", "code,subject"),
                ("_format", "json"),
            ],
            [
                ("_total", "accurate"),
                ("_summary", "count"),
                ("_elements", "code,subject"),
                ("_format", "json"),
                ("_pretty", "true"),
            ],
        ),
    ],
)
def test_self_link_items_are_canonical(resource_type, items, expected):
    assert parse_search(resource_type, items, REGISTRY).self_link_items() == expected


def test_self_link_items_reparse_to_the_same_query():
    items = [
        ("subject:Patient.name", r"Dupont\, J"),
        ("code", "http://loinc.org|2339-0,|x"),
        ("value-quantity", "ap5.4|http://unitsofmeasure.org|mmol/L"),
        ("date", "ge2024-03-05T10:00:00.5+01:00"),
        ("status", "final"),
        ("_revinclude:iterate", "Condition:subject"),
    ]
    first = parse_search("Observation", items, REGISTRY)
    second = parse_search("Observation", first.self_link_items(), REGISTRY)
    assert second.self_link_items() == first.self_link_items()
    assert sorted(map(repr, second.clauses)) == sorted(map(repr, first.clauses))
