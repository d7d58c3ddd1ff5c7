"""Valid examples for each diabetes profile, for the profile tests.

BloodGlucose: the official R4 example Observation-f001 and Synthea glucose results; HbA1c
and DiabetesCondition: Synthea resources (tests/data/fhir, see SOURCES.md there). The CGM
reading, the medication statement and the French patient are made up here (no public
example of them is in the project data); the INS values are synthetic, with valid keys.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from profiles import (
    BLOOD_GLUCOSE,
    CGM_SENSOR_READING,
    DIABETES_CONDITION,
    DIABETES_MEDICATION_STATEMENT,
    DIABETES_PATIENT,
    HBA1C,
)

DATA = Path(__file__).parent / "data" / "fhir"
SYNTHEA = sorted((DATA / "synthea").glob("*.json"))
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
INS_SYSTEM = "urn:oid:1.2.250.1.213.1.4.8"
VALID_INS = "184127512345640"  # key 40 = 97 - (1841275123456 mod 97)
VALID_CORSICAN_INS = "284052A12345632"  # 2A counts as 19 in the key


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def claiming(resource: dict[str, Any], profile: str) -> dict[str, Any]:
    out = copy.deepcopy(resource)
    out.setdefault("meta", {})["profile"] = [profile]
    return out


def f001_glucose() -> dict[str, Any]:
    return claiming(_load(DATA / "r4-examples" / "Observation-f001.json"), BLOOD_GLUCOSE)


def synthea_observations(codes: set[str]) -> list[dict[str, Any]]:
    found = []
    for path in SYNTHEA:
        for entry in _load(path)["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] != "Observation":
                continue
            if any(c.get("code") in codes for c in resource["code"].get("coding", ())):
                found.append(resource)
    return found


def synthea_hba1c() -> list[dict[str, Any]]:
    return [claiming(r, HBA1C) for r in synthea_observations({"4548-4"})]


def synthea_glucose() -> list[dict[str, Any]]:
    return [claiming(r, BLOOD_GLUCOSE) for r in synthea_observations({"2339-0", "2345-7"})]


def synthea_diabetes_conditions() -> list[dict[str, Any]]:
    found = []
    for path in SYNTHEA:
        for entry in _load(path)["entry"]:
            resource = entry["resource"]
            codes = {c.get("code") for c in resource.get("code", {}).get("coding", ())}
            if resource["resourceType"] == "Condition" and "44054006" in codes:
                found.append(claiming(resource, DIABETES_CONDITION))
    return found


def glucose(value: float = 6.3, unit: str = "mmol/L", code: str = "15074-8") -> dict[str, Any]:
    """A meter reading claiming BloodGlucose."""
    return claiming(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-03-05T08:40:00+01:00",
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
        },
        BLOOD_GLUCOSE,
    )


def cgm_reading(value: float = 142, unit: str = "mg/dL", code: str = "99504-3") -> dict:
    return claiming(
        {
            "resourceType": "Observation",
            "status": "final",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/"
                            "observation-category",
                            "code": "laboratory",
                        }
                    ]
                }
            ],
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-03-05T08:45:00+01:00",
            "device": {"reference": "Device/sensor-1"},
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
        },
        CGM_SENSOR_READING,
    )


def hba1c(value: float = 7.1, unit: str = "%", code: str = "4548-4") -> dict[str, Any]:
    return claiming(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-03-05",
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
        },
        HBA1C,
    )


def diabetes_condition(system: str = "http://hl7.org/fhir/sid/icd-10", code: str = "E11.9"):
    return claiming(
        {
            "resourceType": "Condition",
            "clinicalStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                        "code": "active",
                    }
                ]
            },
            "verificationStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                        "code": "confirmed",
                    }
                ]
            },
            "code": {"coding": [{"system": system, "code": code}]},
            "subject": {"reference": "Patient/p1"},
        },
        DIABETES_CONDITION,
    )


def medication_statement(atc: str = "A10BA02") -> dict[str, Any]:
    return claiming(
        {
            "resourceType": "MedicationStatement",
            "status": "active",
            "medicationCodeableConcept": {
                "coding": [{"system": "http://www.whocc.no/atc", "code": atc}],
                "text": "metformin",
            },
            "subject": {"reference": "Patient/p1"},
            "effectivePeriod": {"start": "2023-01-10"},
            "reasonCode": [
                {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9"}]}
            ],
        },
        DIABETES_MEDICATION_STATEMENT,
    )


def french_patient(ins: str = VALID_INS) -> dict[str, Any]:
    return claiming(
        {
            "resourceType": "Patient",
            "identifier": [
                {"system": INS_SYSTEM, "value": ins},
                {"system": "urn:oid:1.2.250.1.71.4.2.7", "value": "IPP-778"},
            ],
            "name": [{"family": "Martin", "given": ["Jean"]}],
            "gender": "male",
            "birthDate": "1984-12-03",
        },
        DIABETES_PATIENT,
    )
