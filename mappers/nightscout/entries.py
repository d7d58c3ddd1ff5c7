"""Nightscout entries (`sgv`, `mbg`, `cal`) <-> glucose Observations.

- `sgv` (sensor glucose, mg/dL as Nightscout stores it) -> a CGMSensorReading (LOINC
  99504-3), its `direction` in an extension; values under 20 are the CGM's error codes
  (Dexcom writes 0-12 for "sensor not ready", "???"...) and are rejected, not stored as
  glucose.
- `mbg` (meter glucose) -> a BloodGlucose Observation (LOINC 41653-7).
- `cal` (the sensor calibration factors) -> an Observation coded `sensor-calibration` in
  the device-event code system with `slope`, `intercept` and `scale` as components.
Each references the uploader (`device`) as its Device. De-duplication as Nightscout does
it: on `identifier` when the document has one, else on its time (`sysTime`/`date`) and type.
`entry_of` turns any glucose Observation (whatever its source: CSV imports too) back into
the document `GET entries` answers.
"""

from __future__ import annotations

from typing import Any

from mappers.device_csv.resources import (
    CGM,
    LOINC,
    METER,
    MG_DL,
    MMOL_L,
    code_maker,
    observation,
    quantity,
)
from mappers.treatments import EVENT_SYSTEM

from .common import (
    ID_SYSTEM,
    SID,
    DocumentError,
    SkippedDocument,
    document_id,
    epoch_ms,
    extension,
    extension_value,
    fhir_time,
    given_id,
    identifier_value,
    iso_utc,
    moment_of,
    number,
    parse_fhir_time,
    uploader,
)
from .upload import Upload

SYSTEM = SID + "nightscout-entry"
TYPES = ("sgv", "mbg", "cal")
LOWEST_SGV = 20
MMOL_TO_MG = 18.016
_CGM_CODE = code_maker(CGM[MG_DL])
_METER_CODE = code_maker(METER[MG_DL])
# The codes `GET entries` answers from: readings in mg/dL or mmol/L, of a sensor or meter.
SGV_CODES = (CGM[MG_DL].code, CGM[MMOL_L].code)
MBG_CODES = (METER[MG_DL].code, METER[MMOL_L].code)
CALIBRATION = "sensor-calibration"


def _key(doc: dict[str, Any], kind: str, ms: int) -> str:
    identifier = doc.get("identifier")
    if isinstance(identifier, str) and identifier.strip():
        return "id/" + identifier.strip()[:100]
    return f"{ms}/{kind}"


def add_entry(upload: Upload, doc: Any) -> dict[str, Any] | None:
    """Map one document into `upload`; the document as answered (with `_id`), or None when
    it repeats one already in the upload. Raises DocumentError."""
    if not isinstance(doc, dict):
        raise DocumentError("an entry must be a JSON object")
    kind = doc.get("type") or ("sgv" if "sgv" in doc else "mbg" if "mbg" in doc else None)
    if kind not in TYPES:
        raise DocumentError(f"type must be one of {', '.join(TYPES)}, not {kind!r}")
    moment = moment_of(doc, "date", "dateString", "sysTime", "mills", "created_at")
    ms = epoch_ms(moment)
    key = _key(doc, kind, ms)
    if not upload.first(key):
        return None
    oid = given_id(doc) or document_id(upload.site, key)
    identifiers = [{"system": SYSTEM, "value": f"{upload.site}/{key}"},
                   {"system": ID_SYSTEM, "value": oid}]
    device_ref = upload.device(uploader(upload.site, doc))
    effective = fhir_time(moment)
    if kind == "cal":
        resource = _calibration(doc, upload.patient_ref, effective, device_ref)
    else:
        value = number(doc.get(kind), kind)
        if value is None:
            raise DocumentError(f"{kind} entry without a value")
        if value < LOWEST_SGV:
            raise SkippedDocument(f"{kind} {value} is a sensor error code, not a glucose value")
        analyte = CGM[MG_DL] if kind == "sgv" else METER[MG_DL]
        resource = observation(
            code=_CGM_CODE() if kind == "sgv" else _METER_CODE(),
            profile=analyte.profile, category=analyte.category, subject=upload.patient_ref,
            effective=effective, identifier=(SYSTEM, ""),
            value={"valueQuantity": quantity(value, MG_DL)}, device_ref=device_ref)
        direction = doc.get("direction")
        if kind == "sgv" and isinstance(direction, str) and direction.strip():
            resource["extension"] = [extension("direction", direction.strip()[:40])]
    resource["identifier"] = identifiers
    upload.add(resource, SYSTEM)
    answered = {k: v for k, v in doc.items() if k != "_id"}
    answered.update({"_id": oid, "type": kind, "date": ms, "dateString": iso_utc(moment),
                     "sysTime": iso_utc(moment)})
    return answered


def _calibration(doc: dict[str, Any], subject: str, effective: str,
                 device_ref: str) -> dict[str, Any]:
    components = []
    for name in ("slope", "intercept", "scale"):
        value = number(doc.get(name), name)
        if value is not None:
            components.append({
                "code": {"coding": [{"system": EVENT_SYSTEM, "code": f"calibration-{name}"}],
                         "text": name},
                "valueQuantity": {"value": value, "unit": "1",
                                  "system": "http://unitsofmeasure.org", "code": "1"}})
    if not components:
        raise DocumentError("cal entry without slope, intercept or scale")
    return {
        "resourceType": "Observation",
        "identifier": [],
        "status": "final",
        "code": {"coding": [{"system": EVENT_SYSTEM, "code": CALIBRATION,
                             "display": "Sensor calibration"}], "text": "Sensor calibration"},
        "subject": {"reference": subject},
        "effectiveDateTime": effective,
        "device": {"reference": device_ref},
        "component": components,
    }


def entry_of(resource: dict[str, Any], device_names: dict[str, str]) -> dict[str, Any] | None:
    """The Nightscout entry a stored glucose Observation answers as (None: not an entry).

    `device_names` maps Device references to the names to show as `device`."""
    coding = (resource.get("code", {}).get("coding") or [{}])[0]
    code, system = coding.get("code"), coding.get("system")
    effective = resource.get("effectiveDateTime")
    if not isinstance(effective, str):
        return None
    moment = parse_fhir_time(effective)
    oid = identifier_value(resource, ID_SYSTEM) or document_id("fhir", resource.get("id", ""))
    doc: dict[str, Any] = {"_id": oid}
    if system == LOINC and code in SGV_CODES + MBG_CODES:
        value = resource.get("valueQuantity", {}).get("value")
        if not isinstance(value, int | float):
            return None
        if code in (CGM[MMOL_L].code, METER[MMOL_L].code):
            value = round(value * MMOL_TO_MG)
        kind = "sgv" if code in SGV_CODES else "mbg"
        doc.update({"type": kind, kind: value})
        direction = extension_value(resource, "direction")
        if direction:
            doc["direction"] = direction
    elif system == EVENT_SYSTEM and code == CALIBRATION:
        doc["type"] = "cal"
        for component in resource.get("component") or ():
            name = component.get("code", {}).get("text")
            if name in ("slope", "intercept", "scale"):
                doc[name] = component.get("valueQuantity", {}).get("value")
    else:
        return None
    device = (resource.get("device") or {}).get("reference")
    if device and device in device_names:
        doc["device"] = device_names[device]
    offset = moment.utcoffset()
    doc.update({"date": epoch_ms(moment), "dateString": iso_utc(moment),
                "sysTime": iso_utc(moment),
                "utcOffset": int(offset.total_seconds() // 60) if offset else 0})
    return doc
