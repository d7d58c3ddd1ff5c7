"""The generated cohort looks like a French diabetes cohort, and its numbers agree."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta
from statistics import mean

import pytest

from fhir_server.synthetic import DEFAULT_END_DATE, gmi_percent, profile_of
from fhir_server.synthetic.codes import DRUGS
from fhir_server.synthetic.generator import _PatientBuilder
from fhir_server.synthetic.population import COMPLICATION_RATES, DRUG_AVAILABLE_FROM
from tests.synthetic_sample import by_type, loinc_of, patient_of, sample

INSULINS = {"A10AE04", "A10AB04", "A10AB05"}


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def cgm_by_patient() -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for o in by_type(sample())["Observation"]:
        if loinc_of(o) == "99504-3":
            out[patient_of(o)].append(o)
    return out


def test_time_in_range_spreads_between_patients(cgm_by_patient) -> None:
    assert len(cgm_by_patient) >= 8
    tir = {
        pid: sum(70 <= o["valueQuantity"]["value"] <= 180 and "comparator" not in
                 o["valueQuantity"] for o in readings) / len(readings)
        for pid, readings in cgm_by_patient.items()
    }
    assert min(tir.values()) < 0.50
    assert max(tir.values()) > 0.75


def test_hba1c_agrees_with_gmi_of_the_same_patients_glucose(cgm_by_patient) -> None:
    hba1c = [o for o in by_type(sample())["Observation"] if loinc_of(o) == "4548-4"]
    checked = 0
    for o in hba1c:
        readings = cgm_by_patient.get(patient_of(o))
        if not readings:
            continue
        at = _time(o["effectiveDateTime"])
        before = [r["valueQuantity"]["value"] for r in readings
                  if at - timedelta(days=90) <= _time(r["effectiveDateTime"]) <= at]
        if len(before) < 288:  # less than a day of data: nothing to compare with
            continue
        assert abs(o["valueQuantity"]["value"] - gmi_percent(mean(before))) <= 0.5
        checked += 1
    assert checked >= 5


def test_cgm_readings_come_every_five_minutes_from_sensors_of_limited_life(
    cgm_by_patient,
) -> None:
    for readings in cgm_by_patient.values():
        per_device: dict[str, list[datetime]] = defaultdict(list)
        for r in readings:
            per_device[r["device"]["reference"]].append(_time(r["effectiveDateTime"]))
        for stamps in per_device.values():
            stamps.sort()
            steps = {int((b - a).total_seconds()) for a, b in zip(stamps, stamps[1:], strict=False)}
            assert all(s % 300 == 0 for s in steps)
            assert stamps[-1] - stamps[0] <= timedelta(days=14)
        # Gaps exist but most of the time is captured (sensor wear 85-95 %).
        capture = len(readings) / (14 * 288)
        assert 0.6 < capture <= 1.0


def test_type_shares_ages_and_sexes_on_a_larger_population() -> None:
    profiles = [profile_of(3, i) for i in range(3000)]
    t1 = [p for p in profiles if p.diabetes_type == 1]
    t2 = [p for p in profiles if p.diabetes_type == 2]
    assert 0.08 <= len(t1) / len(profiles) <= 0.12

    def age(p):
        return (DEFAULT_END_DATE - p.birth_date).days / 365.25

    assert sum(50 <= age(p) <= 85 for p in t2) / len(t2) >= 0.75
    assert mean(age(p) for p in t1) < mean(age(p) for p in t2) - 15
    assert 0.50 <= sum(p.sex == "male" for p in profiles) / len(profiles) <= 0.62
    assert all(p.uses_cgm for p in t1)
    assert 0.25 <= sum(p.uses_cgm for p in t2) / len(t2) <= 0.35
    for name, rates in COMPLICATION_RATES.items():
        share = sum(name in p.complications for p in t2) / len(t2)
        assert rates[2] * 0.5 <= share <= rates[2] * 1.6, name
    assert all(p.diagnosis_date < DEFAULT_END_DATE for p in profiles)
    assert all(p.birth_date < p.diagnosis_date for p in profiles)


def test_medications_are_consistent_with_type_and_stage() -> None:
    profiles = [profile_of(4, i) for i in range(1500)]

    for p in profiles:
        atc = {DRUGS[t.drug][0]: t for t in p.treatments}
        active = {code for code, t in atc.items() if t.end is None}
        if p.diabetes_type == 1:
            assert "A10AE04" in active and active & {"A10AB04", "A10AB05"}
            assert not {c for c in atc if c.startswith("A10B")}
        else:
            assert "A10BA02" in atc, "metformin first in type 2"
            metformin_start = atc["A10BA02"].start
            assert all(t.start >= metformin_start - timedelta(days=1) for t in p.treatments)
            assert not ({"A10BH01"} & active and {"A10BJ02", "A10BJ06"} & active)
            if p.uses_cgm:
                assert active & INSULINS
        for t in p.treatments:
            assert DRUG_AVAILABLE_FROM[t.drug] <= t.start <= DEFAULT_END_DATE
            assert t.end is None or t.start <= t.end


def test_hospital_stays_are_occasional_inpatient_encounters() -> None:
    first = date(2025, 1, 1)
    stays = []
    for i in range(300):
        stays += _PatientBuilder(2, i, first, 365, set())._hospital_stays()
    assert 0.05 <= len(stays) / 300 <= 0.5  # per patient-year
    for s in stays:
        assert s["class"]["code"] == "IMP"
        assert s["period"]["start"] < s["period"]["end"] <= "2026-01-01"
