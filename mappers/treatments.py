"""What people with diabetes log beside their glucose, as FHIR R4: insulin, carbohydrates,
exercise and other events. Shared by the CSV exports (mappers/device_csv) and the
Nightscout uploads (mappers/nightscout), so that a bolus reads the same whichever door it
came through.

- Insulin: a `MedicationAdministration` (status `completed`) of rapid-acting insulin (ATC
  A10AB, "insulins and analogues for injection, fast-acting": boluses, pump basal) or
  long-acting insulin (ATC A10AE), the dose in international units (UCUM `[IU]`, shown
  `U`); a temporary basal rate is `dosage.rateQuantity` in `[IU]/h` over `effectivePeriod`.
- Carbohydrates: an Observation coded LOINC 9059-7 "Carbohydrate intake Estimated" in grams
  (UCUM `g`). Why this code: it is the point-in-time (Pt) mass of carbohydrate the patient
  estimates for one intake, which is what a meal entry in a reader, a CGM app or a
  closed-loop system holds; the other carbohydrate-intake codes are rates over 24 hours
  (81025-9, 9063-9...) or panels.
- Exercise: an Observation coded LOINC 55411-3 "Exercise duration" in minutes, the
  intensity (when the source gives one) in `note`.
- Other events (notes, sensor or site changes, illness...): an Observation coded in the
  project's code system `https://diatabase.org/fhir/CodeSystem/device-event`, its text (if
  any) as `valueString`.

No function here reads any source format: each takes the values a mapper found.
"""

from __future__ import annotations

import re
from typing import Any

ATC = "http://www.whocc.no/atc"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
EVENT_SYSTEM = "https://diatabase.org/fhir/CodeSystem/device-event"
EVENT_IDENTIFIER_SYSTEM = "https://diatabase.org/fhir/sid/device-event"

RAPID = "rapid"
LONG = "long"
INSULINS = {
    RAPID: ("A10AB", "Insulins and analogues for injection, fast-acting",
            "Rapid-acting insulin"),
    LONG: ("A10AE", "Insulins and analogues for injection, long-acting",
           "Long-acting insulin"),
}
CARBS_CODE = ("9059-7", "Carbohydrate intake Estimated")
EXERCISE_CODE = ("55411-3", "Exercise duration")


def insulin_concept(kind: str) -> dict[str, Any]:
    code, display, text = INSULINS[kind]
    return {"coding": [{"system": ATC, "code": code, "display": display}], "text": text}


def units(value: int | float) -> dict[str, Any]:
    return {"value": value, "unit": "U", "system": UCUM, "code": "[IU]"}


def units_per_hour(value: int | float) -> dict[str, Any]:
    return {"value": value, "unit": "U/h", "system": UCUM, "code": "[IU]/h"}


def _identifier(system: str, value: str) -> list[dict[str, str]]:
    return [{"system": system, "value": value}]


def insulin_administration(
    *,
    identifier: tuple[str, str],
    subject: str,
    kind: str,
    effective: str | None = None,
    period: tuple[str, str] | None = None,
    dose: int | float | None = None,
    rate: int | float | None = None,
    device: str | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """A dose (`dose` units at `effective`) or a basal rate (`rate` U/h over `period`)."""
    resource: dict[str, Any] = {
        "resourceType": "MedicationAdministration",
        "identifier": _identifier(*identifier),
        "status": "completed",
        "medicationCodeableConcept": insulin_concept(kind),
        "subject": {"reference": subject},
    }
    if period is not None:
        resource["effectivePeriod"] = {"start": period[0], "end": period[1]}
    else:
        resource["effectiveDateTime"] = effective
    if device:
        resource["device"] = [{"reference": device}]
    if note:
        resource["note"] = [{"text": note}]
    dosage: dict[str, Any] = {}
    if dose is not None:
        dosage["dose"] = units(dose)
    if rate is not None:
        dosage["rateQuantity"] = units_per_hour(rate)
    if dosage:  # mad-1: a dosage needs a dose or a rate; an unrecorded dose has no dosage
        resource["dosage"] = dosage
    return resource


def _observation(
    identifier: tuple[str, str], subject: str, code: dict[str, Any], effective: str,
    device: str | None, note: str | None,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "identifier": _identifier(*identifier),
        "status": "final",
        "code": code,
        "subject": {"reference": subject},
        "effectiveDateTime": effective,
    }
    if device:
        resource["device"] = {"reference": device}
    if note:
        resource["note"] = [{"text": note}]
    return resource


def carbohydrates(
    *, identifier: tuple[str, str], subject: str, effective: str, grams: int | float,
    device: str | None = None, note: str | None = None,
) -> dict[str, Any]:
    code = {"coding": [{"system": LOINC, "code": CARBS_CODE[0], "display": CARBS_CODE[1]}]}
    resource = _observation(identifier, subject, code, effective, device, None)
    resource["valueQuantity"] = {"value": grams, "unit": "g", "system": UCUM, "code": "g"}
    if note:
        resource["note"] = [{"text": note}]
    return resource


def exercise(
    *, identifier: tuple[str, str], subject: str, effective: str,
    minutes: int | float | None, intensity: str | None = None, device: str | None = None,
) -> dict[str, Any]:
    code = {"coding": [{"system": LOINC, "code": EXERCISE_CODE[0],
                        "display": EXERCISE_CODE[1]}]}
    note = f"intensity: {intensity}" if intensity else None
    resource = _observation(identifier, subject, code, effective, device, note)
    if minutes is not None:
        resource["valueQuantity"] = {"value": minutes, "unit": "min", "system": UCUM,
                                     "code": "min"}
    else:
        resource["dataAbsentReason"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
            "code": "not-asked"}]}
    return resource


_SLUG = re.compile(r"[^a-z0-9]+")


def event_code(label: str) -> str:
    """`Site Change` -> `site-change`: the code of an event in EVENT_SYSTEM."""
    return _SLUG.sub("-", label.strip().lower()).strip("-")[:64] or "event"


def event(
    *, identifier: tuple[str, str], subject: str, effective: str, label: str,
    text: str | None = None, device: str | None = None,
) -> dict[str, Any]:
    """A logged event without a measured value (a note, a sensor change, an illness)."""
    code = {"coding": [{"system": EVENT_SYSTEM, "code": event_code(label),
                        "display": label.strip()[:100]}], "text": label.strip()[:100]}
    resource = _observation(identifier, subject, code, effective, device, None)
    if text:
        resource["valueString"] = text
    return resource


def parse_duration_minutes(text: str) -> float | int | None:
    """`hh:mm:ss` or `hh:mm`, as device exports write durations -> minutes; None if blank
    or anything else."""
    parts = text.strip().split(":")
    if len(parts) not in (2, 3) or not all(p.strip().isdigit() for p in parts):
        return None
    hours, minutes, seconds = (int(p) for p in (*parts, "0")[:3])
    total = hours * 60 + minutes + seconds / 60
    return int(total) if total == int(total) else round(total, 2)
