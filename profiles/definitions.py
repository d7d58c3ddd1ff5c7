"""The StructureDefinitions and SearchParameters shipped with the package (JSON files)."""

from __future__ import annotations

import json
from pathlib import Path

PACKAGE_DIR = Path(__file__).parent
STRUCTURE_DEFINITION_DIR = PACKAGE_DIR / "structuredefinitions"
SEARCH_PARAMETER_DIR = PACKAGE_DIR / "searchparameters"

CANONICAL_BASE = "https://diatabase.org/fhir"
PROFILE_BASE = f"{CANONICAL_BASE}/StructureDefinition"
# The documented extension on an ElementDefinition that gives a plausible value range.
PLAUSIBLE_RANGE_URL = f"{PROFILE_BASE}/plausible-range"

BLOOD_GLUCOSE = f"{PROFILE_BASE}/BloodGlucose"
CGM_SENSOR_READING = f"{PROFILE_BASE}/CGMSensorReading"
HBA1C = f"{PROFILE_BASE}/HbA1c"
DIABETES_CONDITION = f"{PROFILE_BASE}/DiabetesCondition"
DIABETES_MEDICATION_STATEMENT = f"{PROFILE_BASE}/DiabetesMedicationStatement"
DIABETES_PATIENT = f"{PROFILE_BASE}/DiabetesPatient"


def _load(directory: Path) -> list[dict]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.json"))]


def load_structure_definitions() -> list[dict]:
    """The shipped profiles, each a fresh dict (callers may keep or change them)."""
    return _load(STRUCTURE_DEFINITION_DIR)


def load_search_parameters() -> list[dict]:
    """The SearchParameters the profiles add where the core ones do not suffice."""
    return _load(SEARCH_PARAMETER_DIR)
