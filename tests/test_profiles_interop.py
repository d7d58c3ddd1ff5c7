"""What the project produces conforms to its own profiles: the example patient story and the
device CSV mapper's Bundles (their CGM readings claim CGMSensorReading)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from fhir_server.model.validation import validate_structure
from mappers.device_csv import to_bundle
from profiles import ProfileValidator
from terminology import TerminologyService

ROOT = Path(__file__).parent.parent
CSV = Path(__file__).parent / "data" / "csv"


@pytest.fixture(scope="module")
def validator() -> ProfileValidator:
    return ProfileValidator(TerminologyService())


def claimed(resources: list[dict]) -> Counter:
    return Counter(
        p.rsplit("/", 1)[-1] for r in resources for p in r.get("meta", {}).get("profile", ())
    )


def test_example_patient_story_conforms(validator: ProfileValidator) -> None:
    bundle = json.loads((ROOT / "examples" / "patient-story.json").read_text(encoding="utf-8"))
    resources = [e["resource"] for e in bundle["entry"]]
    assert set(claimed(resources)) >= {"DiabetesPatient", "BloodGlucose", "HbA1c",
                                       "DiabetesCondition", "DiabetesMedicationStatement"}
    for resource in resources:
        assert validate_structure(resource) == []
        assert validator.validate(resource) == [], resource.get("id")


@pytest.mark.parametrize(
    ("name", "profile"),
    [
        ("dexcom-clarity/dexcom_clarity_g6_cgmquantify.csv", "CGMSensorReading"),
        ("freestyle-libre/librelink_mmol_no_preamble.csv", "CGMSensorReading"),
        ("other-cgm/levels_export.csv", "CGMSensorReading"),
        ("freestyle-libre/librelink_mgdl_glucose_data_preamble.csv", "CGMSensorReading"),
    ],
)
def test_device_csv_bundles_conform(validator: ProfileValidator, name: str, profile: str) -> None:
    result = to_bundle((CSV / name).read_bytes(), patient="Patient/p1")
    resources = [e["resource"] for e in result.bundle["entry"]]
    counts = claimed(resources)
    assert counts[profile] > 0
    problems = [(r.get("resourceType"), i.expression, i.message)
                for r in resources for i in validator.validate(r)]
    assert problems == []
