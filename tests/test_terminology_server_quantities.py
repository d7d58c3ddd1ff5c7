"""Canonical UCUM forms for the server's quantity index and quantity search values
(fhir_server/service/quantities.py), with exact values."""

from __future__ import annotations

from decimal import Decimal

import pytest

from fhir_server.search.extract import IndexExtractor
from fhir_server.search.registry import SearchParamRegistry
from fhir_server.search.types import QuantityEntry
from fhir_server.search.values import parse_quantity
from fhir_server.service.quantities import CanonicalQuery, QuantityCanonicalizer

UCUM = "http://unitsofmeasure.org"
GLUCOSE = {"2339-0", "15074-8"}


def observation(code: str) -> dict:
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]}}


@pytest.fixture
def canonicalize() -> QuantityCanonicalizer:
    return QuantityCanonicalizer(GLUCOSE)


def test_mass_concentration_to_g_per_l(canonicalize: QuantityCanonicalizer) -> None:
    assert canonicalize(150, UCUM, "mg/dL", observation("2093-3")) == [(1.5, "g/L")]
    assert canonicalize(7, UCUM, "mmol/L", observation("2093-3")) == [(0.007, "mol/L")]


def test_glucose_gets_mass_and_molar_forms_exactly(canonicalize: QuantityCanonicalizer) -> None:
    assert canonicalize(180.156, UCUM, "mg/dL", observation("2339-0")) == [
        (1.80156, "g/L"), (0.01, "mol/L")]
    assert canonicalize(10, UCUM, "mmol/L", observation("15074-8")) == [
        (0.01, "mol/L"), (1.80156, "g/L")]


def test_other_kinds_and_spellings(canonicalize: QuantityCanonicalizer) -> None:
    assert canonicalize(172, UCUM, "cm", {}) == [(1.72, "m")]
    assert canonicalize(7.2, UCUM, "%", observation("4548-4")) == [(7.2, "%")]
    # a code without system is taken as UCUM, a lenient spelling is normalised
    assert canonicalize(90, None, "mg/dl", {}) == [(0.9, "g/L")]


def test_unknown_units_and_other_systems_have_no_canonical_form(
    canonicalize: QuantityCanonicalizer,
) -> None:
    assert canonicalize(3, UCUM, "furlong", {}) == []
    assert canonicalize(3, "http://example.org/units", "mg/dL", {}) == []
    assert canonicalize(3, UCUM, None, {}) == []


def test_canonical_query_scales_value_and_precision_bounds() -> None:
    query = CanonicalQuery()
    value = parse_quantity(f"gt10|{UCUM}|mmol/L")
    scaled, unit = query(value, value.system, value.code)
    assert unit == "mol/L"
    assert scaled.prefix == "gt"
    assert scaled.value == Decimal("0.010")
    assert (scaled.low, scaled.high) == (value.low * Decimal("0.001"),
                                         value.high * Decimal("0.001"))
    assert query(value, "http://example.org/units", "mmol/L") is None
    assert query(parse_quantity("5||furlong"), None, "furlong") is None


def test_extractor_indexes_both_glucose_forms() -> None:
    extractor = IndexExtractor(SearchParamRegistry.default(),
                               canonicalize=QuantityCanonicalizer(GLUCOSE))
    resource = {**observation("2339-0"), "id": "g1",
                "valueQuantity": {"value": 200, "unit": "mg/dL", "system": UCUM,
                                  "code": "mg/dL"}}
    entries = [e for e in extractor.extract(resource)
               if isinstance(e, QuantityEntry) and e.param == "value-quantity"]
    assert {(e.canonical_value, e.canonical_unit) for e in entries} == {
        (2.0, "g/L"), (float(Decimal(2) / Decimal("180.156")), "mol/L")}
    assert all(e.value == 200 and e.code == "mg/dL" for e in entries)


def test_remembered_forms_depend_on_the_analyte_and_the_number_type(
    canonicalize: QuantityCanonicalizer,
) -> None:
    """Forms are remembered per value: the same 100 mg/dL is glucose in one Observation and
    cholesterol in the next; 1, 1.0 and Decimal("1.0") give the same numbers."""
    glucose, cholesterol = observation("2339-0"), observation("2093-3")
    for _ in range(2):  # the second round answers from what the first remembered
        assert canonicalize(100, UCUM, "mg/dL", glucose) == [
            (1.0, "g/L"), (float(Decimal("1.0") / Decimal("180.156")), "mol/L")]
        assert canonicalize(100, UCUM, "mg/dL", cholesterol) == [(1.0, "g/L")]
        assert canonicalize(100, UCUM, "mg/L", cholesterol) == [(0.1, "g/L")]
        assert canonicalize(1, UCUM, "g/L", cholesterol) == [(1.0, "g/L")]
        assert canonicalize(Decimal("1.0"), UCUM, "g/L", cholesterol) == [(1.0, "g/L")]
    forms = canonicalize(100, UCUM, "mg/dL", cholesterol)
    forms.append((0.0, "mutated by a caller"))
    assert canonicalize(100, UCUM, "mg/dL", cholesterol) == [(1.0, "g/L")]
