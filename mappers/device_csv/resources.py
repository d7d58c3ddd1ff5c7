"""FHIR resources for device readings: codes, profiles, identifiers, Observation and Device.

Identifier systems (all under https://diatabase.org/fhir/sid/):
- `device-reading`: one Observation of a device or CSV export. Its value is
  `{source key}/{UTC instant}/{LOINC code}/{kind}`, where the source key is the device serial
  number (prefixed by the vendor) or, without one, a key derived from the patient reference;
  the kind says which record of the export (historic, scan, strip, egv, ...). The same file
  imported twice gives the same identifiers, so `ifNoneExist` makes the second import a no-op.
  Note that the instant depends on the time zone option: import with the same zone.
- `device-serial/{vendor}`: a device's serial number, per vendor (serials are unique per
  manufacturer only).
- `device-key`: a device the export names without a serial number (one per format and patient).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

SID = "https://diatabase.org/fhir/sid/"
READING_SYSTEM = SID + "device-reading"
DEVICE_SERIAL_SYSTEM = SID + "device-serial/"
DEVICE_KEY_SYSTEM = SID + "device-key"
PROFILE = "https://diatabase.org/fhir/StructureDefinition/"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"

MG_DL = "mg/dL"
MMOL_L = "mmol/L"


@dataclass(frozen=True, slots=True)
class Analyte:
    """What a reading measures: LOINC code, display, UCUM unit, profile and category."""

    code: str
    display: str
    unit: str
    profile: str | None
    category: str = "laboratory"
    system: str = LOINC


# The HL7 CGM IG (hl7.org/fhir/uv/cgm) files sensor readings under category `laboratory`.
CGM = {
    MG_DL: Analyte("99504-3", "Glucose [Mass/volume] in Interstitial fluid", MG_DL,
                   "CGMSensorReading"),
    MMOL_L: Analyte("105272-9", "Glucose [Moles/volume] in Interstitial fluid", MMOL_L,
                    "CGMSensorReading"),
}
METER = {
    MG_DL: Analyte("41653-7", "Glucose [Mass/volume] in Capillary blood by Glucometer", MG_DL,
                   "BloodGlucose"),
    MMOL_L: Analyte("14743-9", "Glucose [Moles/volume] in Capillary blood by Glucometer",
                    MMOL_L, "BloodGlucose"),
}
# Blood beta-ketone (3-hydroxybutyrate) from a meter strip; no diabetes profile covers it.
KETONE = Analyte("53060-9", "3-Hydroxybutyrate [Moles/volume] in Blood", MMOL_L, None)

# Profiles implied by a code, for rows of declarative mappings that name their own code.
PROFILE_BY_CODE = {
    **{a.code: a.profile for a in (*CGM.values(), *METER.values())},
    **dict.fromkeys(("2339-0", "15074-8", "2345-7", "14749-6"), "BloodGlucose"),
    **dict.fromkeys(("4548-4", "17856-6", "59261-8"), "HbA1c"),
}

_UNIT_SPELLINGS = {"mg/dl": MG_DL, "mmol/l": MMOL_L, "%": "%", "mmol/mol": "mmol/mol",
                   "g/l": "g/L"}


def ucum_unit(text: str) -> str:
    """The UCUM code for the unit spellings exports use (mg/dl -> mg/dL); else unchanged."""
    return _UNIT_SPELLINGS.get(text.strip().lower(), text.strip())


def unit_in(text: str) -> str | None:
    """The glucose unit named in a column header such as `Historic Glucose(mg/dL)`."""
    match = re.search(r"(mg/dl|mmol/l)", text, re.IGNORECASE)
    return ucum_unit(match.group(1)) if match else None


_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]")


def safe_key(text: str) -> str:
    return _UNSAFE.sub("-", text.strip())[:80]


def patient_key(patient: str) -> str:
    """A short stable key for a patient reference, for identifiers of serial-less sources."""
    return "p-" + hashlib.sha256(patient.encode("utf-8")).hexdigest()[:20]


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A meter or sensor named by an export. Without a serial, `key` stands in for it."""

    vendor: str
    serial: str | None
    name: str | None
    manufacturer: str | None
    kind: str  # text for Device.type
    key: str

    def identifier(self) -> tuple[str, str]:
        if self.serial:
            return DEVICE_SERIAL_SYSTEM + self.vendor, self.serial
        return DEVICE_KEY_SYSTEM, self.key

    def source_key(self) -> str:
        return _source_key(self)


@lru_cache(maxsize=256)
def _source_key(device: DeviceInfo) -> str:
    return safe_key(f"{device.vendor}-{device.serial}") if device.serial else safe_key(device.key)


def device_resource(device: DeviceInfo, patient_ref: str | None) -> dict[str, Any]:
    system, value = device.identifier()
    resource: dict[str, Any] = {
        "resourceType": "Device",
        "identifier": [{"system": system, "value": value}],
        "status": "active",
        "type": {"text": device.kind},
    }
    if device.serial:
        resource["serialNumber"] = device.serial
    if device.manufacturer:
        resource["manufacturer"] = device.manufacturer
    if device.name:
        resource["deviceName"] = [{"name": device.name, "type": "model-name"}]
    if patient_ref:
        resource["patient"] = {"reference": patient_ref}
    return resource


def quantity(value: int | float, unit: str, comparator: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"value": value}
    if comparator:
        result["comparator"] = comparator
    result.update({"unit": unit, "system": UCUM, "code": unit})
    return result


def observation(
    *,
    code: dict[str, Any],
    profile: str | None,
    category: str | None,
    subject: str,
    effective: str,
    identifier: tuple[str, str],
    value: dict[str, Any],
    device_ref: str | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """An Observation; `value` is one `value[x]` element, e.g. {"valueQuantity": {...}}."""
    resource: dict[str, Any] = {"resourceType": "Observation"}
    if profile:
        resource["meta"] = {"profile": [PROFILE + profile]}
    resource["identifier"] = [{"system": identifier[0], "value": identifier[1]}]
    resource["status"] = "final"
    if category:
        resource["category"] = [
            {"coding": [{"system": CATEGORY_SYSTEM, "code": category}]}
        ]
    resource["code"] = code
    resource["subject"] = {"reference": subject}
    resource["effectiveDateTime"] = effective
    resource.update(value)
    if device_ref:
        resource["device"] = {"reference": device_ref}
    if note:
        resource["note"] = [{"text": note}]
    return resource


ObservationBuilder = Callable[[str, str, str, dict[str, Any], str | None], dict[str, Any]]


def observation_builder(
    *,
    make_code: Callable[[], dict[str, Any]],
    profile: str | None,
    category: str | None,
    identifier_system: str,
    note: str | None = None,
) -> ObservationBuilder:
    """`observation` for the many readings of one kind: what they share is decided once.

    Returns `build(identifier, subject, effective, value, device_ref)`, whose resources equal
    `observation(...)`'s key for key and in the same order, with new dicts and lists every
    time (the server rewrites references in place).
    """
    if not profile or not category or note:
        def general(identifier: str, subject: str, effective: str, value: dict[str, Any],
                    device_ref: str | None) -> dict[str, Any]:
            return observation(code=make_code(), profile=profile, category=category,
                               subject=subject, effective=effective,
                               identifier=(identifier_system, identifier), value=value,
                               device_ref=device_ref, note=note)
        return general
    profile_url = PROFILE + profile

    def build(identifier: str, subject: str, effective: str, value: dict[str, Any],
              device_ref: str | None) -> dict[str, Any]:
        resource = {
            "resourceType": "Observation",
            "meta": {"profile": [profile_url]},
            "identifier": [{"system": identifier_system, "value": identifier}],
            "status": "final",
            "category": [{"coding": [{"system": CATEGORY_SYSTEM, "code": category}]}],
            "code": make_code(),
            "subject": {"reference": subject},
            "effectiveDateTime": effective,
        }
        resource.update(value)
        if device_ref:
            resource["device"] = {"reference": device_ref}
        return resource

    return build


def code_maker(analyte: Analyte) -> Callable[[], dict[str, Any]]:
    """A function giving the analyte's CodeableConcept: a new one per call (one per
    Observation, since the server may edit resources in place)."""
    system, code, display = analyte.system, analyte.code, analyte.display

    def make() -> dict[str, Any]:
        return {"coding": [{"system": system, "code": code, "display": display}]}

    return make
