"""Result parameters: _sort, _count limits, _total, _summary, _elements, _include and
_revinclude (iterate, *), _contained, _format, _pretty and the paging cursor.

Runs against the real registry (search_registry_real.py).
"""

from __future__ import annotations

import pytest

from fhir_server.search.errors import SearchError
from fhir_server.search.query import parse_search, parse_system_search
from fhir_server.search.result_params import DEFAULT_COUNT, MAX_COUNT, Include
from tests.search_registry_real import REGISTRY


def result(resource_type: str, *items: tuple[str, str]):
    return parse_search(resource_type, list(items), REGISTRY)


# --- _sort -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ([("_sort", "date")], [("date", False)]),
        ([("_sort", "-date")], [("date", True)]),
        ([("_sort", "status,-date,_id")], [("status", False), ("date", True), ("_id", False)]),
        ([("_sort", "-_lastUpdated")], [("_lastUpdated", True)]),
        (
            [("_sort", "code"), ("_sort", "-value-quantity")],
            [("code", False), ("value-quantity", True)],
        ),
        ([("_sort", "subject")], [("subject", False)]),
    ],
)
def test_sort_keys(items, expected):
    sort = result("Observation", *items).result.sort
    assert [(key.code, key.descending) for key in sort] == expected
    assert all(key.param is not None for key in sort)


@pytest.mark.parametrize(
    "value",
    ["colour", "-", "date,", ",date", "code-value-quantity", "--date", "date:missing", "name"],
)
def test_bad_sort_keys_raise(value):
    with pytest.raises(SearchError) as error:
        result("Observation", ("_sort", value))
    assert error.value.expression == "_sort"


def test_sort_on_id_without_registry_entry_is_allowed():
    class Bare:
        def get(self, resource_type, code):
            return None

    query = parse_search("Observation", [("_sort", "-_id")], Bare())
    assert query.result.sort[0].param is None and query.result.sort[0].descending


# --- _count ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "count", "warned"),
    [
        ("0", 0, False),
        ("1", 1, False),
        ("50", 50, False),
        ("1000", 1000, False),
        ("1001", MAX_COUNT, True),
        ("999999999999999999999999", MAX_COUNT, True),
        ("007", 7, False),
    ],
)
def test_count(value, count, warned):
    query = result("Observation", ("_count", value))
    assert query.result.count == count and query.result.count_given
    assert bool(query.warnings) == warned
    if warned:
        assert "1000" in query.warnings[0]


def test_count_default():
    query = result("Observation")
    assert (query.result.count, query.result.count_given) == (DEFAULT_COUNT, False)
    assert DEFAULT_COUNT == 50


@pytest.mark.parametrize("value", ["-1", "ten", "1.5", "", "1e3", " 5", "0x10", "5;drop"])
def test_bad_count_raises(value):
    with pytest.raises(SearchError) as error:
        result("Observation", ("_count", value))
    assert error.value.expression == "_count"


def test_count_given_twice_raises():
    with pytest.raises(SearchError):
        result("Observation", ("_count", "5"), ("_count", "6"))


# --- _total, _summary, _elements, _contained, _format, _pretty, _cursor ------------------


@pytest.mark.parametrize("value", ["none", "estimate", "accurate"])
def test_total_values(value):
    assert result("Patient", ("_total", value)).result.total == value


@pytest.mark.parametrize("value", ["true", "text", "data", "count", "false"])
def test_summary_values(value):
    assert result("Patient", ("_summary", value)).result.summary == value


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("_total", "all"),
        ("_total", "Accurate"),
        ("_summary", "yes"),
        ("_summary", ""),
        ("_contained", "maybe"),
        ("_containedType", "both"),
        ("_pretty", "1"),
        ("_format", ""),
        ("_elements", "name;drop"),
        ("_elements", "name,"),
        ("_elements", "1abc"),
        ("_count:exact", "5"),
        ("_sort:desc", "date"),
    ],
)
def test_bad_result_parameter_values_raise(name, value):
    with pytest.raises(SearchError) as error:
        result("Patient", (name, value))
    assert error.value.expression == name.partition(":")[0] or error.value.expression == name


def test_elements_contained_format_pretty_cursor():
    query = result(
        "Patient",
        ("_elements", "name, birthDate"),
        ("_elements", "name,identifier"),
        ("_contained", "both"),
        ("_containedType", "contained"),
        ("_format", "application/fhir+json"),
        ("_pretty", "false"),
        ("_cursor", "eyJrIjoxfQ.c2ln"),
    )
    params = query.result
    assert params.elements == ("name", "birthDate", "identifier")
    assert (params.contained, params.contained_type) == ("both", "contained")
    assert (params.format, params.pretty, params.cursor) == (
        "application/fhir+json",
        False,
        "eyJrIjoxfQ.c2ln",
    )
    assert ("_cursor", "eyJrIjoxfQ.c2ln") not in query.self_link_items()


# --- _include / _revinclude --------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("_include", "Observation:patient", ("Observation", "patient", None, False, False)),
        (
            "_include",
            "Observation:subject:Patient",
            ("Observation", "subject", "Patient", False, False),
        ),
        ("_include", "*", ("*", "*", None, False, False)),
        ("_include", "Observation:*", ("Observation", "*", None, False, False)),
        (
            "_include:iterate",
            "Patient:organization",
            ("Patient", "organization", None, True, False),
        ),
        ("_include:recurse", "Organization:partof", ("Organization", "partof", None, True, False)),
        ("_include:iterate", "*", ("*", "*", None, True, False)),
    ],
)
def test_includes(key, value, expected):
    (include,) = result("Observation", (key, value)).result.include
    assert (
        include.source_type,
        include.param_code,
        include.target_type,
        include.iterate,
        include.reverse,
    ) == expected
    if expected[1] != "*":
        assert include.param == REGISTRY.get(expected[0], expected[1])


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("_revinclude", "Observation:subject", ("Observation", "subject", None, False)),
        ("_revinclude", "Condition:patient", ("Condition", "patient", None, False)),
        ("_revinclude:iterate", "AuditEvent:entity", ("AuditEvent", "entity", None, True)),
        (
            "_revinclude",
            "Observation:subject:Patient",
            ("Observation", "subject", "Patient", False),
        ),
        ("_revinclude", "*", ("*", "*", None, False)),
    ],
)
def test_revincludes(key, value, expected):
    (include,) = result("Patient", (key, value)).result.revinclude
    assert include.reverse
    assert (
        include.source_type,
        include.param_code,
        include.target_type,
        include.iterate,
    ) == expected


def test_several_includes_keep_order_and_drop_duplicates():
    query = result(
        "MedicationStatement",
        ("_include", "MedicationStatement:patient"),
        ("_include", "MedicationStatement:medication,MedicationStatement:patient"),
        ("_include:iterate", "Patient:general-practitioner"),
    )
    assert [(i.param_code, i.iterate) for i in query.result.include] == [
        ("patient", False),
        ("medication", False),
        ("general-practitioner", True),
    ]
    assert query.self_link_items() == [
        ("_include", "MedicationStatement:patient"),
        ("_include", "MedicationStatement:medication"),
        ("_include:iterate", "Patient:general-practitioner"),
    ]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("_include", "Observation"),
        ("_include", "Observation:"),
        ("_include", "Observation:a:b:c"),
        ("_include", "Observation:nonexistent"),
        ("_include", "Observation:code"),  # not a reference
        ("_include", "Observation:subject:Practitioner"),  # not a target of subject
        ("_include", "Patient:organization"),  # not the searched type and no :iterate
        ("_include", "observation:subject"),
        ("_include:reverse", "Observation:subject"),
        ("_revinclude", "Observation:encounter"),  # never refers to a Patient
        ("_revinclude", "Nonexistent:subject"),
        ("_include", "Observation:subject:patient"),
    ],
)
def test_bad_includes_raise(key, value):
    resource_type = "Patient" if key.startswith("_revinclude") else "Observation"
    with pytest.raises(SearchError):
        result(resource_type, (key, value))


def test_include_with_system_search_types():
    query = parse_system_search(
        [("_type", "Observation,Condition"), ("_include", "Condition:patient")], REGISTRY
    )
    assert query.result.include[0].param_code == "patient"
    with pytest.raises(SearchError):
        parse_system_search([("_type", "Observation"), ("_include", "Condition:patient")], REGISTRY)


def test_include_to_param_round_trip():
    include = Include("Observation", "subject", "Patient", True, False, None)
    assert (include.key, include.to_param()) == ("_include:iterate", "Observation:subject:Patient")
