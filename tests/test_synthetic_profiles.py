"""Profile conformance of generated data: every generated resource that claims a diabetes
profile conforms to it (no error issue), checked by the real validator with the real
terminology (ICD-10, CIM-10, ATC, LOINC, UCUM)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from fhir_server.synthetic import generate
from profiles import (
    BLOOD_GLUCOSE,
    CGM_SENSOR_READING,
    DIABETES_CONDITION,
    DIABETES_MEDICATION_STATEMENT,
    DIABETES_PATIENT,
    HBA1C,
    ProfileValidator,
)
from terminology import TerminologyService

TEST_INS = "urn:oid:1.2.250.1.213.1.4.10"


@lru_cache(maxsize=1)
def validator() -> ProfileValidator:
    return ProfileValidator(TerminologyService())


def sample() -> Iterator[dict[str, Any]]:
    """40 patients over 3 days (every resource), then 6 patients over 400 days (years of
    treatment changes and HbA1c; one CGM reading in 40, the curves being alike)."""
    yield from generate(40, 3, seed=7)
    for n, resource in enumerate(generate(6, 400, seed=11)):
        if not resource["id"].startswith("cgm-") or n % 40 == 0:
            yield resource


def errors_of(resource: dict[str, Any]) -> list[str]:
    return [f"{i.expression}: {i.message}" for i in validator().validate(resource)
            if i.severity in ("error", "fatal")]


def test_every_generated_resource_that_claims_a_profile_conforms() -> None:
    claimed: Counter[str] = Counter()
    failures: dict[str, list[str]] = {}
    for resource in sample():
        profiles = ProfileValidator.claimed_profiles(resource)
        if not profiles:
            continue
        for url in profiles:
            claimed[url] += 1
        errors = errors_of(resource)
        if errors and len(failures) < 5:
            failures[f"{resource['resourceType']}/{resource['id']}"] = errors
    assert not failures, failures
    # Every diabetes profile is exercised, so a generator that stops claiming one shows here.
    for url in (DIABETES_PATIENT, DIABETES_CONDITION, DIABETES_MEDICATION_STATEMENT, HBA1C,
                BLOOD_GLUCOSE, CGM_SENSOR_READING):
        assert claimed[url] > 0, f"no generated resource claims {url}"


def test_generated_patients_carry_the_test_ins_and_diabetes_patient_accepts_it() -> None:
    patients = [r for r in generate(30, 1, seed=5) if r["resourceType"] == "Patient"]
    assert len(patients) == 30
    for patient in patients:
        systems = [i.get("system") for i in patient["identifier"]]
        assert TEST_INS in systems
        assert DIABETES_PATIENT in patient["meta"]["profile"]
        assert errors_of(patient) == [], patient["id"]


def test_the_validator_does_find_errors_in_a_broken_generated_resource() -> None:
    """The conformance test above can fail: a generated reading without a value is
    rejected by its profile."""
    reading = next(r for r in generate(40, 1, seed=7)
                   if CGM_SENSOR_READING in r.get("meta", {}).get("profile", []))
    broken = {k: v for k, v in reading.items() if k != "valueQuantity"}
    assert errors_of(reading) == []
    assert errors_of(broken)
