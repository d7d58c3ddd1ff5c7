"""CGM metrics as FHIR, coded as the HL7 CGM implementation guide 1.0.0 codes them
(http://hl7.org/fhir/uv/cgm): a CGM Summary Observation (LOINC 107931-8) whose
`hasMember` are Times in Ranges (106793-3, five components), mean glucose (97507-8 in
mg/dL, or 105273-7 in mmol/L), GMI (97506-0), CV (104638-2), days of wear (104636-6) and
sensor active percentage (104637-4); and the CGM Summary PDF DiagnosticReport (107931-8)
with the AGP attached.

Each resource has an id derived from the patient and the period, so that storing the
summary again for the same period writes a new version of the same resources. A figure
the data cannot give (no CGM reading: no mean) is left out with a dataAbsentReason.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from typing import Any

from fhir_server.clinical.metrics import CgmMetrics
from fhir_server.clinical.period import first_day, last_day

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
IG = "http://hl7.org/fhir/uv/cgm/StructureDefinition/"
CATEGORY = [
    {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "laboratory",
            }
        ]
    }
]
SUMMARY = "107931-8"
TIMES_IN_RANGES = "106793-3"
# band (metrics.ranges key) -> LOINC component code
RANGE_CODES = {
    "very_low": "104642-4",
    "low": "104641-6",
    "in_range": "97510-2",
    "high": "104640-8",
    "very_high": "104639-0",
}
MEAN_MG_DL, MEAN_MMOL_L, GMI, CV = "97507-8", "105273-7", "97506-0", "104638-2"
DAYS_OF_WEAR, SENSOR_ACTIVE = "104636-6", "104637-4"
DISPLAY = {
    SUMMARY: "Continuous glucose monitoring summary panel - Reporting Period",
    TIMES_IN_RANGES: "Continuous glucose monitoring time in ranges panel",
    "104642-4": "Continuous glucose monitoring time below glucose threshold level 2",
    "104641-6": "Continuous glucose monitoring time below glucose threshold level 1",
    "97510-2": "Continuous glucose monitoring time in range",
    "104640-8": "Continuous glucose monitoring time above glucose threshold level 1",
    "104639-0": "Continuous glucose monitoring time above glucose threshold level 2",
    MEAN_MG_DL: (
        "Glucose [Mass/volume] mean in Interstitial fluid by Continuous glucose monitoring"
    ),
    MEAN_MMOL_L: (
        "Glucose [Moles/volume] mean in Interstitial fluid by Continuous glucose monitoring"
    ),
    GMI: "Glucose management indicator",
    CV: "Coefficient of variation of glucose by Continuous glucose monitoring",
    DAYS_OF_WEAR: "Continuous glucose monitoring duration of use",
    SENSOR_ACTIVE: "Continuous glucose monitoring sensor wear time active",
}
PROFILES = {
    SUMMARY: IG + "cgm-summary",
    TIMES_IN_RANGES: IG + "cgm-summary-times-in-ranges",
    MEAN_MG_DL: IG + "cgm-summary-mean-glucose-mass-per-volume",
    MEAN_MMOL_L: IG + "cgm-summary-mean-glucose-moles-per-volume",
    GMI: IG + "cgm-summary-gmi",
    CV: IG + "cgm-summary-coefficient-of-variation",
    DAYS_OF_WEAR: IG + "cgm-summary-days-of-wear",
    SENSOR_ACTIVE: IG + "cgm-summary-sensor-active-percentage",
}
PDF_PROFILE = IG + "cgm-summary-pdf"
# id suffix of each member
SUFFIX = {
    TIMES_IN_RANGES: "tir",
    MEAN_MG_DL: "mean",
    MEAN_MMOL_L: "mean-mmol",
    GMI: "gmi",
    CV: "cv",
    DAYS_OF_WEAR: "days",
    SENSOR_ACTIVE: "active",
}
NO_DATA = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
            "code": "not-performed",
            "display": "Not Performed",
        }
    ],
    "text": "No CGM reading in the period",
}


def concept(code: str) -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": code, "display": DISPLAY[code]}]}


def quantity(value: float | None, code: str, unit: str) -> dict[str, Any] | None:
    if value is None:
        return None
    return {"value": round(value, 2), "unit": unit, "system": UCUM, "code": code}


def percent(value: float | None) -> dict[str, Any] | None:
    return quantity(value, "%", "%")


def summary_id(patient_id: str, metrics: CgmMetrics, unit: str = "mg/dL") -> str:
    """`cgm-` and 16 hex digits of the patient, the period and the mean's unit."""
    key = f"{patient_id}|{first_day(metrics.period)}|{last_day(metrics.period)}|{unit}"
    return "cgm-" + hashlib.sha256(key.encode()).hexdigest()[:16]


class SummaryBuilder:
    """The resources of one summary. `persisted`: references as `Type/id` (the resources
    are stored with these ids); otherwise `urn:uuid:` full URLs, as in a Bundle of
    resources that exist nowhere else."""

    def __init__(
        self, patient_id: str, metrics: CgmMetrics, unit: str = "mg/dL", persisted: bool = False
    ) -> None:
        self.patient_id = patient_id
        self.metrics = metrics
        self.unit = unit
        self.persisted = persisted
        self.base_id = summary_id(patient_id, metrics, unit)
        self.period = {
            "start": first_day(metrics.period).isoformat(),
            "end": last_day(metrics.period).isoformat(),
        }

    def reference(self, resource_type: str, rid: str) -> str:
        if self.persisted:
            return f"{resource_type}/{rid}"
        return "urn:uuid:" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"{resource_type}/{rid}"))

    def observation(self, code: str, rid: str) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "id": rid,
            "meta": {"profile": [PROFILES[code]]},
            "status": "final",
            "category": CATEGORY,
            "code": concept(code),
            "subject": {"reference": f"Patient/{self.patient_id}"},
            "effectivePeriod": dict(self.period),
        }

    def with_value(self, code: str, value: dict[str, Any] | None) -> dict[str, Any]:
        resource = self.observation(code, f"{self.base_id}-{SUFFIX[code]}")
        if value is None:
            resource["dataAbsentReason"] = NO_DATA
        else:
            resource["valueQuantity"] = value
        return resource

    def members(self) -> list[dict[str, Any]]:
        m = self.metrics
        tir = self.observation(TIMES_IN_RANGES, f"{self.base_id}-tir")
        tir["component"] = [
            {"code": concept(code), "valueQuantity": percent(m.ranges[band])}
            for band, code in RANGE_CODES.items()
        ]
        if m.readings == 0:
            for component in tir["component"]:
                del component["valueQuantity"]
                component["dataAbsentReason"] = NO_DATA
        if self.unit == "mmol/L":
            mean = self.with_value(MEAN_MMOL_L, quantity(m.mean_mmol_l, "mmol/L", "mmol/l"))
        else:
            mean = self.with_value(MEAN_MG_DL, quantity(m.mean_mg_dl, "mg/dL", "mg/dl"))
        return [
            tir,
            mean,
            self.with_value(GMI, percent(m.gmi_percent)),
            self.with_value(CV, percent(m.cv_percent)),
            self.with_value(DAYS_OF_WEAR, quantity(m.days_with_data, "d", "days")),
            self.with_value(SENSOR_ACTIVE, percent(m.active_percent)),
        ]

    def summary(self, members: list[dict[str, Any]]) -> dict[str, Any]:
        resource = self.observation(SUMMARY, self.base_id)
        resource["hasMember"] = [
            {"reference": self.reference("Observation", member["id"])} for member in members
        ]
        if self.metrics.flags:
            # said, not hidden: the consensus asks for 14 days and 70 % of data
            resource["note"] = [{"text": "Insufficient data: " + ", ".join(self.metrics.flags)}]
        return resource

    def pdf_report(self, summary: dict[str, Any], pdf: bytes, title: str) -> dict[str, Any]:
        return {
            "resourceType": "DiagnosticReport",
            "id": f"{self.base_id}-pdf",
            "meta": {"profile": [PDF_PROFILE]},
            "status": "final",
            "category": CATEGORY,
            "code": concept(SUMMARY),
            "subject": {"reference": f"Patient/{self.patient_id}"},
            "effectivePeriod": dict(self.period),
            "result": [{"reference": self.reference("Observation", summary["id"])}],
            "presentedForm": [
                {
                    "contentType": "application/pdf",
                    "language": title.split("|")[0],
                    "data": base64.b64encode(pdf).decode("ascii"),
                    "title": title.split("|")[-1],
                }
            ],
        }

    def resources(self) -> list[dict[str, Any]]:
        """The summary first, then its members."""
        members = self.members()
        return [self.summary(members), *members]

    def entry(self, resource: dict[str, Any], base_url: str) -> dict[str, Any]:
        if self.persisted:
            full_url = f"{base_url}/{resource['resourceType']}/{resource['id']}"
        else:
            full_url = self.reference(resource["resourceType"], resource["id"])
        return {"fullUrl": full_url, "resource": resource}


def collection(entries: list[dict[str, Any]], timestamp: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": timestamp,
        "entry": entries,
    }
