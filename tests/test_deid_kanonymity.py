"""k-anonymity enforcement on released quasi-identifiers."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fhir_server.deid.kanonymity import enforce, quasi_identifiers

QUASI = ("birthYear", "gender", "postalPrefix")


def patient(year: str, gender: str, postal: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "birthDate": year,
        "gender": gender,
        "address": [{"postalCode": postal, "country": "FR"}],
    }


def released_classes(patients: dict[str, dict[str, Any]], suppressed: list[str]) -> Counter:
    return Counter(
        tuple(quasi_identifiers(p)[q] for q in QUASI)
        for pid, p in patients.items()
        if pid not in suppressed
    )


def test_large_classes_are_left_alone() -> None:
    patients = {f"p{n}": patient("1970", "male", "75") for n in range(6)}
    report = enforce(patients, 5, QUASI)
    assert report.generalized == {} and report.suppressed == []
    assert report.smallest_class == 6
    assert all(p["address"][0]["postalCode"] == "75" for p in patients.values())


def test_rare_records_lose_postal_prefix_then_birth_year_then_are_suppressed() -> None:
    patients = {f"a{n}": patient("1970", "male", "75") for n in range(5)}
    # Five 1980 women spread over five départements: together once the prefix goes.
    patients |= {f"b{n}": patient("1980", "female", f"{10 + n}") for n in range(5)}
    # Two women of other years: only alike once the year goes too; still < 5 -> suppressed.
    patients |= {"c0": patient("1950", "female", "13"), "c1": patient("1990", "female", "69")}
    report = enforce(patients, 5, QUASI)
    assert report.generalized == {"postalPrefix": 7, "birthYear": 2}
    assert sorted(report.suppressed) == ["c0", "c1"]
    assert all(patients[f"b{n}"]["address"] == [{"country": "FR"}] for n in range(5))
    assert patients["b0"]["birthDate"] == "1980"
    assert "birthDate" not in patients["c0"]
    classes = released_classes(patients, report.suppressed)
    assert min(classes.values()) >= 5
    assert report.to_json()["released"] == 10


def test_configured_quasi_identifiers_only() -> None:
    patients = {f"p{n}": patient(str(1950 + n), "male", f"{n:02d}") for n in range(5)}
    report = enforce(patients, 5, ("gender",))
    assert report.suppressed == [] and report.generalized == {}
