"""Unit spellings to UCUM (mappers/units.py) and OBX-7 reference ranges."""

from __future__ import annotations

import pytest

from mappers.hl7v2.values import reference_range
from mappers.units import UCUM_SYSTEM, quantity, to_ucum


@pytest.mark.parametrize(
    ("written", "ucum"),
    [
        ("mg/dl", "mg/dL"),
        ("mg/dL", "mg/dL"),
        ("MG/DL", "mg/dL"),
        ("mmol/l", "mmol/L"),
        ("mmol/L", "mmol/L"),
        ("g/l", "g/L"),
        ("%", "%"),
        ("mmol/mol", "mmol/mol"),
        ("µmol/l", "umol/L"),
        ("μmol/L", "umol/L"),
        ("giga.l-1", "10*9/L"),
        ("tera.l-1", "10*12/L"),
        ("10^9/L", "10*9/L"),
        ("mL/min/1.73m2", "mL/min/{1.73_m2}"),
        ("mmHg", "mm[Hg]"),
        (" mg / dl ", "mg/dL"),
        ("UI/L", "[IU]/L"),
        ("U/L", "U/L"),
    ],
)
def test_known_spellings_map_to_ucum(written: str, ucum: str) -> None:
    assert to_ucum(written) == ucum


@pytest.mark.parametrize("written", ["", None, "tablets", "mg/dl/h", "beats"])
def test_unknown_units_are_not_guessed(written: str | None) -> None:
    assert to_ucum(written) is None


def test_quantity_is_coded_only_when_known() -> None:
    assert quantity(5.5, "mmol/l") == {
        "value": 5.5, "unit": "mmol/l", "system": UCUM_SYSTEM, "code": "mmol/L"
    }
    assert quantity(3, "tablets") == {"value": 3, "unit": "tablets"}
    assert quantity(3, "") == {"value": 3}


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("70-105", 70, 105),
        ("70_105", 70, 105),
        ("70 - 105", 70, 105),
        ("3.9-5.8", 3.9, 5.8),
        ("0,70-1,10", 0.7, 1.1),
        ("(4.0-6.0)", 4.0, 6.0),
        ("<5", None, 5),
        ("<=5", None, 5),
        (">1.0", 1.0, None),
        ("-2-2", -2, 2),
    ],
)
def test_reference_ranges(text: str, low: float | None, high: float | None) -> None:
    [found] = reference_range(text, "mg/dl")
    assert found["text"] == text
    assert found.get("low", {}).get("value") == low
    assert found.get("high", {}).get("value") == high
    for bound in ("low", "high"):
        if bound in found:
            assert found[bound]["code"] == "mg/dL"


def test_range_with_its_own_unit_and_text_only_ranges() -> None:
    [with_unit] = reference_range("3.5 - 5.0 mmol/L", "")
    assert with_unit["low"]["code"] == "mmol/L"
    [text_only] = reference_range("negative", "")
    assert text_only == {"text": "negative"}
    [reversed_range] = reference_range("9-3", "")
    assert "low" not in reversed_range and reversed_range["text"] == "9-3"
    assert reference_range("", "") is None


def test_no_diabetes_profile_without_a_unit_or_for_other_codes() -> None:
    """A unitless heart rate once matched 'no unit == no expected unit' and claimed BloodGlucose."""
    from mappers.hl7v2.results import diabetes_profile

    heart_rate = {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}
    assert diabetes_profile(heart_rate, {"value": 72}) is None
    glucose = {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]}
    assert diabetes_profile(glucose, {"value": 5.4}) is None
    assert diabetes_profile(glucose, {"value": 99, "code": "mg/dL"}).endswith("/BloodGlucose")
