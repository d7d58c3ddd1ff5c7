"""Value parsing for each search parameter type: prefixes, implicit precision, date periods
with exact epoch bounds, quantity, token, string, reference, escaping, injection strings.

Parsed through `parse_search` with the real registry (search_registry_real.py).
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from fhir_server.search.dates import parse_date_period
from fhir_server.search.errors import SearchError
from fhir_server.search.escaping import escape, split_escaped, unescape
from fhir_server.search.query import parse_search
from fhir_server.search.text import normalise
from fhir_server.search.types import DATE_MAX
from fhir_server.search.values import (
    DateValue,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
)
from tests.search_registry_real import REGISTRY


def one_value(resource_type: str, key: str, value: str):
    query = parse_search(resource_type, [(key, value)], REGISTRY)
    assert not query.unknown, query.unknown
    (clause,) = query.clauses
    (parsed,) = clause.values
    return parsed


PREFIXES = ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_prefix_on_quantity(prefix):
    value = one_value(
        "Observation", "value-quantity", f"{prefix}5.4|http://unitsofmeasure.org|mmol/L"
    )
    assert value == QuantityValue(
        prefix,
        Decimal("5.4"),
        Decimal("5.35"),
        Decimal("5.45"),
        "http://unitsofmeasure.org",
        "mmol/L",
    )


@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_prefix_on_date(prefix):
    value = one_value("Observation", "date", f"{prefix}2024-03")
    assert isinstance(value, DateValue)
    assert (value.prefix, value.low, value.high) == (prefix, 1709251200.0, 1711929600.0)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_prefix_on_number(prefix):
    value = one_value("RiskAssessment", "probability", f"{prefix}100")
    assert value == NumberValue(prefix, Decimal("100"), Decimal("99.5"), Decimal("100.5"))


def test_no_prefix_means_eq():
    assert one_value("Observation", "date", "2024").prefix == "eq"
    assert one_value("Observation", "value-quantity", "7").prefix == "eq"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("date", "xx2024"),
        ("date", "GT2024"),
        ("value-quantity", "zz5"),
        ("value-quantity", "gte5"),
        ("date", "after2024"),
    ],
)
def test_unknown_prefix_is_an_error(key, value):
    with pytest.raises(SearchError) as error:
        parse_search("Observation", [(key, value)], REGISTRY)
    assert error.value.expression == key


@pytest.mark.parametrize(
    ("text", "value", "low", "high"),
    [
        ("100", "100", "99.5", "100.5"),
        ("100.00", "100.00", "99.995", "100.005"),
        ("1e2", "1E+2", "50", "150"),
        ("2.0", "2.0", "1.95", "2.05"),
        ("0.5", "0.5", "0.45", "0.55"),
        ("-3", "-3", "-3.5", "-2.5"),
        ("5.", "5", "4.5", "5.5"),
        (".25", "0.25", "0.245", "0.255"),
        ("1.5e-3", "0.0015", "0.00145", "0.00155"),
    ],
)
def test_number_implicit_precision(text, value, low, high):
    from fhir_server.search.values import parse_number

    parsed = parse_number(text)
    assert isinstance(parsed, NumberValue)
    assert parsed.value == Decimal(value)
    assert (parsed.low, parsed.high) == (Decimal(low), Decimal(high))


@pytest.mark.parametrize("text", ["abc", "1,5", "NaN", "Infinity", "1e", "--1", "0x10", "1 0"])
def test_number_rejects_non_numbers(text):
    from fhir_server.search.values import parse_number

    with pytest.raises(SearchError):
        parse_number(text)


def test_number_approximate_bounds_are_ten_percent():
    from fhir_server.search.values import parse_number

    assert parse_number("ap200").approximate_bounds() == (Decimal("180"), Decimal("220"))


@pytest.mark.parametrize(
    ("text", "low", "high", "precision"),
    [
        ("2024", 1704067200, 1735689600, "year"),
        ("2024-03", 1709251200, 1711929600, "month"),
        ("2024-12", 1733011200, 1735689600, "month"),
        ("2024-02", 1706745600, 1709251200, "month"),
        ("2024-03-05", 1709596800, 1709683200, "day"),
        ("2024-02-29", 1709164800, 1709251200, "day"),
        ("2024-03-05T10:00", 1709632800, 1709632860, "minute"),
        ("2024-03-05T10:00Z", 1709632800, 1709632860, "minute"),
        ("2024-03-05T10:00:00", 1709632800, 1709632801, "second"),
        ("2024-03-05T10:00:00Z", 1709632800, 1709632801, "second"),
        ("2024-03-05T10:00:00+02:00", 1709625600, 1709625601, "second"),
        ("2024-03-05T10:00+02:00", 1709625600, 1709625660, "minute"),
        ("2024-03-05T10:00 02:00", 1709625600, 1709625660, "minute"),  # "+" decoded as space
        ("2024-03-05T10:00:00-05:30", 1709652600, 1709652601, "second"),
        ("2024-03-05T10:00:00.5Z", 1709632800.5, 1709632800.6, "fraction"),
        ("2024-03-05T10:00:00.250Z", 1709632800.25, 1709632800.251, "fraction"),
        ("1969-07-20T20:17:40Z", -14182940, -14182939, "second"),
        ("2024-01-01T00:00:00+01:00", 1704063600, 1704063601, "second"),
        ("9999", 253370764800, DATE_MAX, "year"),
        ("9999-12-31", 253402214400, DATE_MAX, "day"),
    ],
)
def test_date_periods_have_exact_epoch_bounds(text, low, high, precision):
    period = parse_date_period(text)
    assert period.low == pytest.approx(low, abs=1e-6)
    assert period.high == pytest.approx(high, abs=1e-6)
    assert period.precision == precision


def test_date_value_keeps_text_with_plus_restored():
    value = one_value("Observation", "date", "ge2024-03-05T10:00 02:00")
    assert value.to_param() == "ge2024-03-05T10:00+02:00"
    assert value.low == 1709625600


@pytest.mark.parametrize(
    "text",
    [
        "2023-02-29",
        "2024-13",
        "2024-00",
        "24",
        "2024-3-5",
        "2024/03/05",
        "2024-03-05T25:00",
        "2024-03-05T10:61",
        "2024-03-05T10",
        "2024-03-05+02:00",
        "2024-03-05T10:00+15:00",
        "2024-03-05T10:00:00.Z",
        "0000",
        "yesterday",
        "2024-03-05'; DROP TABLE resources;--",
    ],
)
def test_malformed_dates_raise(text):
    with pytest.raises(SearchError) as error:
        parse_search("Observation", [("date", text)], REGISTRY)
    assert error.value.expression == "date"


def test_date_approximate_bounds_widen_each_end_by_ten_percent_of_its_distance_to_now():
    value = one_value("Observation", "date", "ap2024-01-01")
    now = 1704067200 + 86400 * 11  # eleven days later
    low, high = value.approximate_bounds(now)
    # each end by 10% of its own distance to now: 11 days below, 10 days above
    assert (low, high) == (1704067200 - 86400 * 1.1, 1704153600 + 86400 * 1.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "5.4|http://unitsofmeasure.org|mmol/L",
            ("eq", "5.4", "http://unitsofmeasure.org", "mmol/L"),
        ),
        ("5.4||mg", ("eq", "5.4", None, "mg")),
        ("5.4", ("eq", "5.4", None, None)),
        (
            "gt10|http://unitsofmeasure.org|mmol/L",
            ("gt", "10", "http://unitsofmeasure.org", "mmol/L"),
        ),
        ("le200||mg/dL", ("le", "200", None, "mg/dL")),
        (r"5|http://example.org/units|a\|b", ("eq", "5", "http://example.org/units", "a|b")),
        ("5|http://unitsofmeasure.org|", ("eq", "5", "http://unitsofmeasure.org", None)),
    ],
)
def test_quantity_forms(text, expected):
    value = one_value("Observation", "value-quantity", text)
    assert (value.prefix, value.value, value.system, value.code) == (
        expected[0],
        Decimal(expected[1]),
        expected[2],
        expected[3],
    )


@pytest.mark.parametrize(
    "text", ["5.4|mmol/L", "5|a|b|c", "mmol|5.4|x", "|http://unitsofmeasure.org|mg", ""]
)
def test_malformed_quantities_raise(text):
    from fhir_server.search.values import parse_quantity

    with pytest.raises(SearchError):
        parse_quantity(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2339-0", TokenValue(None, "2339-0", False)),
        ("|2339-0", TokenValue(None, "2339-0", True)),
        ("http://loinc.org|2339-0", TokenValue("http://loinc.org", "2339-0", True)),
        ("http://loinc.org|", TokenValue("http://loinc.org", None, True)),
        (r"urn:x\|y|a\,b", TokenValue("urn:x|y", "a,b", True)),
        (r"a\\b", TokenValue(None, "a\\b", False)),
        (r"a\$b", TokenValue(None, "a$b", False)),
    ],
)
def test_token_forms(text, expected):
    assert one_value("Observation", "code", text) == expected


@pytest.mark.parametrize("text", ["|", "a|b|c"])
def test_malformed_tokens_raise(text):
    with pytest.raises(SearchError):
        parse_search("Observation", [("code", text)], REGISTRY)


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("Hélène", "helene"),
        ("FRANÇOISE", "francoise"),
        ("  Jean   Pierre ", "jean pierre"),
        ("Straße", "strasse"),
        ("Ｍüller", "muller"),  # full-width M (NFKD) and umlaut
        ("Øyvind", "øyvind"),  # a letter, not a letter plus a mark: kept
    ],
)
def test_string_normalisation(text, normalised):
    value = one_value("Patient", "name", text)
    assert value == StringValue(text, normalised)
    assert normalise(text) == normalised


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [
        ("subject", "123", ReferenceValue(id="123")),
        ("patient", "123", ReferenceValue(id="123")),  # R4: targets Patient and Group
        ("subject", "Patient/123", ReferenceValue(type="Patient", id="123")),
        (
            "subject",
            "Patient/123/_history/2",
            ReferenceValue(type="Patient", id="123", version="2"),
        ),
        (
            "subject",
            "http://other.org/fhir/Patient/9",
            ReferenceValue(url="http://other.org/fhir/Patient/9"),
        ),
        (
            "subject",
            "urn:uuid:0b4c1f26-1c1e-4c8e-9d1b-3f4a2b5c6d7e",
            ReferenceValue(url="urn:uuid:0b4c1f26-1c1e-4c8e-9d1b-3f4a2b5c6d7e"),
        ),
        ("subject:Patient", "123", ReferenceValue(type="Patient", id="123")),
        ("subject:Patient", "Patient/123", ReferenceValue(type="Patient", id="123")),
        (
            "subject:identifier",
            "urn:oid:1.2.250.1.213.1.4.8|1840575123456",
            ReferenceValue(
                identifier_system="urn:oid:1.2.250.1.213.1.4.8", identifier_value="1840575123456"
            ),
        ),
        ("subject:identifier", "1840575123456", ReferenceValue(identifier_value="1840575123456")),
    ],
)
def test_reference_forms(key, text, expected):
    assert one_value("Observation", key, text) == expected


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("subject", "Practitioner/1"),  # not a target of Observation.subject
        ("subject:Patient", "Group/1"),  # contradicts the :Patient modifier
        ("subject", "Patient/1 2/x"),
        ("subject:identifier", "urn:sys|"),
    ],
)
def test_malformed_references_raise(key, text):
    with pytest.raises(SearchError) as error:
        parse_search("Observation", [(key, text)], REGISTRY)
    assert error.value.expression == key


def test_uri_value_is_kept_verbatim():
    assert one_value("ValueSet", "url", "http://x.org/vs|1.0") == UriValue("http://x.org/vs|1.0")


@pytest.mark.parametrize(
    ("raw", "separator", "parts"),
    [
        ("a,b,c", ",", ["a", "b", "c"]),
        (r"a\,b,c", ",", [r"a\,b", "c"]),
        (r"a\\,b", ",", [r"a\\", "b"]),
        ("a,", ",", ["a", ""]),
        (r"x\$y$z", "$", [r"x\$y", "z"]),
        ("trailing\\", ",", ["trailing\\"]),
    ],
)
def test_split_escaped(raw, separator, parts):
    assert split_escaped(raw, separator) == parts


@pytest.mark.parametrize("text", ["a,b", "x|y$z", "back\\slash", "\\,", "plain", "é,|$\\"])
def test_escape_round_trips(text):
    assert unescape(escape(text)) == text
    assert split_escaped(escape(text), ",") == [escape(text)]


def test_unknown_escape_keeps_backslash():
    assert unescape(r"a\nb") == r"a\nb"


def test_or_values_split_on_unescaped_commas_only():
    query = parse_search("Patient", [("name", r"Dupont\, Jean,Martin")], REGISTRY)
    assert [value.value for value in query.clauses[0].values] == ["Dupont, Jean", "Martin"]


def test_empty_alternative_in_or_list_is_an_error():
    with pytest.raises(SearchError):
        parse_search("Patient", [("name", "a,,b")], REGISTRY)


INJECTIONS = [
    "'; DROP TABLE resources; --",
    '" OR "1"="1',
    "1' OR '1'='1",
    "$where: function() { return true }",
    '{"$gt": ""}',
    "Robert'); DELETE FROM index_token;--",
    "%27%20OR%201=1",
    "\x00\x01",
]


@pytest.mark.parametrize("text", INJECTIONS)
def test_injection_strings_are_plain_string_data(text):
    query = parse_search("Patient", [("name", text.replace(",", "\\,"))], REGISTRY)
    (value,) = query.clauses[0].values
    assert value.value == text


@pytest.mark.parametrize("text", INJECTIONS)
def test_injection_strings_are_plain_token_data(text):
    query = parse_search("Observation", [("code", escape(text))], REGISTRY)
    assert query.clauses[0].values == (TokenValue(None, text, False),)


@pytest.mark.parametrize("text", INJECTIONS)
def test_injection_strings_are_refused_where_a_number_or_date_is_required(text):
    for key in ("date", "value-quantity", "_lastUpdated"):
        with pytest.raises(SearchError):
            parse_search("Observation", [(key, text)], REGISTRY)


@pytest.mark.parametrize("text", INJECTIONS)
def test_injection_strings_as_reference_ids_are_plain_data(text):
    if "/" in text:
        pytest.skip("has a slash: not an id")
    # Condition.encounter targets Encounter only, so a bare id gets that type.
    query = parse_search("Condition", [("encounter", escape(text))], REGISTRY)
    assert query.clauses[0].values == (ReferenceValue(type="Encounter", id=text),)
