"""Nightscout device status and profiles as FHIR.

- devicestatus -> an Observation coded `device-status` (device-event code system) with the
  uploader as its Device and, as components, what a clinician reads from it: the phone's
  battery (`uploaderBattery` or `uploader.battery`, %), the pump's reservoir (U) and
  battery (%), insulin on board (`openaps.iob.iob`, `loop.iob.iob`, U) and carbohydrates
  on board (`openaps.suggested.COB`, `loop.cob.cob`, g). The loop's predictions and
  reasons are not kept. `devicestatus_of` answers the documents back from those values.
- profile -> a DocumentReference (`application/json` attachment, the document as sent):
  a therapy profile (basal rates, ratios, targets) has no FHIR resource of its own that
  round-trips, and pumps and loops need it back exactly.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from mappers.treatments import EVENT_SYSTEM

from .common import (
    ID_SYSTEM,
    SID,
    DocumentError,
    document_id,
    epoch_ms,
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

STATUS_SYSTEM = SID + "nightscout-devicestatus"
PROFILE_SYSTEM = SID + "nightscout-profile"
UCUM = "http://unitsofmeasure.org"
DEVICE_STATUS = "device-status"
# component code -> (unit, UCUM code, where it is read in the document)
_METRICS = {
    "uploader-battery": ("%", "%", (("uploaderBattery",), ("uploader", "battery"))),
    "pump-reservoir": ("U", "[IU]", (("pump", "reservoir"),)),
    "pump-battery": ("%", "%", (("pump", "battery", "percent"),)),
    "insulin-on-board": ("U", "[IU]", (("openaps", "iob", "iob"), ("loop", "iob", "iob"),
                                       ("pump", "iob", "bolusiob"))),
    "carbs-on-board": ("g", "g", (("openaps", "suggested", "COB"), ("loop", "cob", "cob"))),
}
_DOCUMENT_PATH = {"uploader-battery": ("uploaderBattery",), "pump-reservoir":
                  ("pump", "reservoir"), "pump-battery": ("pump", "battery", "percent"),
                  "insulin-on-board": ("openaps", "iob", "iob"),
                  "carbs-on-board": ("openaps", "suggested", "COB")}


def _dig(doc: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(name)
    return doc


def add_devicestatus(upload: Upload, doc: Any) -> dict[str, Any] | None:
    if not isinstance(doc, dict):
        raise DocumentError("a device status must be a JSON object")
    moment = moment_of(doc, "created_at", "date", "mills")
    device = uploader(upload.site, doc)
    key = f"{epoch_ms(moment)}/{device.name}"
    if not upload.first(key):
        return None
    oid = given_id(doc) or document_id(upload.site, key)
    components = []
    for code, (unit, ucum, paths) in _METRICS.items():
        value = None
        for path in paths:
            found = _dig(doc, path)
            if isinstance(found, int | float | str) and not isinstance(found, bool):
                try:
                    value = number(found, code)
                except DocumentError:
                    value = None
                if value is not None:
                    break
        if value is not None:
            components.append({
                "code": {"coding": [{"system": EVENT_SYSTEM, "code": code}], "text": code},
                "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": ucum}})
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "identifier": [{"system": STATUS_SYSTEM, "value": f"{upload.site}/{key}"},
                       {"system": ID_SYSTEM, "value": oid}],
        "status": "final",
        "code": {"coding": [{"system": EVENT_SYSTEM, "code": DEVICE_STATUS,
                             "display": "Device status"}], "text": "Device status"},
        "subject": {"reference": upload.patient_ref},
        "effectiveDateTime": fhir_time(moment),
        "device": {"reference": upload.device(device)},
    }
    if components:
        resource["component"] = components
    else:
        resource["valueString"] = "no battery, reservoir or on-board values reported"
    upload.add(resource, STATUS_SYSTEM)
    answered = {k: v for k, v in doc.items() if k != "_id"}
    answered.update({"_id": oid, "created_at": iso_utc(moment)})
    return answered


def devicestatus_of(resource: dict[str, Any], device_names: dict[str, str]) -> dict[str, Any]:
    moment = parse_fhir_time(resource["effectiveDateTime"])
    doc: dict[str, Any] = {
        "_id": identifier_value(resource, ID_SYSTEM) or document_id("fhir", resource["id"]),
        "created_at": iso_utc(moment), "mills": epoch_ms(moment)}
    reference = (resource.get("device") or {}).get("reference")
    if reference in device_names:
        doc["device"] = device_names[reference]
    for component in resource.get("component") or ():
        path = _DOCUMENT_PATH.get(component.get("code", {}).get("text"))
        if path is None:
            continue
        target = doc
        for name in path[:-1]:
            target = target.setdefault(name, {})
        target[path[-1]] = component.get("valueQuantity", {}).get("value")
    return doc


def add_profile(upload: Upload, doc: Any) -> dict[str, Any] | None:
    if not isinstance(doc, dict):
        raise DocumentError("a profile must be a JSON object")
    moment = moment_of(doc, "startDate", "created_at", "date", "mills")
    key = f"{epoch_ms(moment)}"
    if not upload.first(key):
        return None
    oid = given_id(doc) or document_id(upload.site, "profile/" + key)
    stored = {k: v for k, v in doc.items() if k != "_id"}
    stored["_id"] = oid
    data = base64.b64encode(json.dumps(stored, separators=(",", ":")).encode()).decode()
    resource = {
        "resourceType": "DocumentReference",
        "identifier": [{"system": PROFILE_SYSTEM, "value": f"{upload.site}/{key}"},
                       {"system": ID_SYSTEM, "value": oid}],
        "status": "current",
        "type": {"coding": [{"system": EVENT_SYSTEM, "code": "therapy-profile",
                             "display": "Insulin pump therapy profile (Nightscout)"}],
                 "text": "Therapy profile"},
        "subject": {"reference": upload.patient_ref},
        "date": fhir_time(moment),
        "content": [{"attachment": {"contentType": "application/json", "data": data}}],
    }
    upload.add(resource, PROFILE_SYSTEM)
    return stored


def profile_of(resource: dict[str, Any]) -> dict[str, Any] | None:
    for content in resource.get("content") or ():
        attachment = content.get("attachment") or {}
        if attachment.get("contentType") == "application/json" and attachment.get("data"):
            try:
                found = json.loads(base64.b64decode(attachment["data"]))
            except ValueError:
                return None
            return found if isinstance(found, dict) else None
    return None
