"""Nightscout treatments <-> MedicationAdministration and Observations.

One treatment may give several resources (a Meal Bolus holds insulin and carbohydrates),
all built by mappers/treatments.py as the CSV exports' are:
- `insulin` -> MedicationAdministration of rapid-acting insulin (ATC A10AB), in `[IU]`;
- `Temp Basal` -> MedicationAdministration of rapid-acting insulin (pumps deliver their
  basal with it) with `dosage.rateQuantity` (`absolute`, else `rate`, in `[IU]/h`) over
  `effectivePeriod` (`created_at` + `duration` minutes); a percentage-only temp basal keeps
  the percentage in `note` (no rate is known);
- `carbs` -> carbohydrate intake (LOINC 9059-7, g);
- `glucose` of a `BG Check` (or of any treatment whose `glucoseType` is Finger) -> a
  BloodGlucose Observation (41653-7 mg/dL, 14743-9 mmol/L, from `units`); a Bolus Wizard's
  sensor glucose is a copy of a reading already uploaded as an entry, and is not stored;
- `Exercise` with a `duration` -> exercise duration (LOINC 55411-3, min);
- anything else (Note, Site Change, Sensor Start, Temporary Target...) -> an event
  Observation coded with the eventType, its notes as the value.
Every resource keeps the eventType in an extension, so that `GET treatments` answers the
documents from the stored resources. De-duplication as Nightscout does it: `identifier`,
else `_id`, else `created_at` + `eventType`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from mappers import treatments as made
from mappers.device_csv.resources import METER, MG_DL, MMOL_L, code_maker, observation, quantity

from .common import (
    ID_SYSTEM,
    SID,
    DocumentError,
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

SYSTEM = SID + "nightscout-treatment"
MMOL_TO_MG = 18.016


def _key(doc: dict[str, Any], event_type: str, ms: int) -> str:
    identifier = doc.get("identifier")
    if isinstance(identifier, str) and identifier.strip():
        return "id/" + identifier.strip()[:100]
    oid = given_id(doc)
    if oid:
        return "oid/" + oid
    return f"{ms}/{made.event_code(event_type)}"


def _notes(doc: dict[str, Any]) -> str | None:
    notes = doc.get("notes")
    return notes.strip()[:2000] if isinstance(notes, str) and notes.strip() else None


def add_treatment(upload: Upload, doc: Any) -> dict[str, Any] | None:
    """Map one treatment into `upload`; the document as answered (with `_id`), or None
    when it repeats one already in the upload. Raises DocumentError."""
    if not isinstance(doc, dict):
        raise DocumentError("a treatment must be a JSON object")
    event_type = doc.get("eventType")
    event_type = event_type.strip()[:100] if isinstance(event_type, str) else ""
    event_type = event_type or "<none>"
    moment = moment_of(doc, "created_at", "timestamp", "date", "mills")
    ms = epoch_ms(moment)
    key = _key(doc, event_type, ms)
    if not upload.first(key):
        return None
    oid = given_id(doc) or document_id(upload.site, key)
    effective = fhir_time(moment)
    subject = upload.patient_ref
    device_ref = upload.device(uploader(upload.site, doc))
    notes = _notes(doc)
    parts: list[tuple[str, dict[str, Any]]] = []

    def ident(part: str) -> tuple[str, str]:
        return SYSTEM, f"{upload.site}/{key}/{part}"

    insulin = number(doc.get("insulin"), "insulin")
    carbs = number(doc.get("carbs"), "carbs")
    duration = number(doc.get("duration"), "duration")
    if event_type.lower() == "temp basal":
        absolute = number(doc.get("absolute"), "absolute")
        rate = absolute if absolute is not None else number(doc.get("rate"), "rate")
        percent = number(doc.get("percent"), "percent")
        if rate is None and percent is None:
            raise DocumentError("Temp Basal without absolute, rate or percent")
        end = moment + timedelta(minutes=float(duration or 0))
        note = notes
        if rate is None:
            note = "; ".join(filter(None, [f"temporary basal {percent:+g} %", notes]))
        parts.append(("basal", made.insulin_administration(
            identifier=ident("basal"), subject=subject, kind=made.RAPID,
            period=(effective, fhir_time(end)), rate=rate, device=device_ref, note=note)))
    if insulin is not None and insulin > 0:
        parts.append(("insulin", made.insulin_administration(
            identifier=ident("insulin"), subject=subject, kind=made.RAPID, effective=effective,
            dose=insulin, device=device_ref, note=notes)))
    if carbs is not None and carbs > 0:
        parts.append(("carbs", made.carbohydrates(
            identifier=ident("carbs"), subject=subject, effective=effective, grams=carbs,
            device=device_ref, note=notes)))
    glucose = number(doc.get("glucose"), "glucose")
    glucose_type = str(doc.get("glucoseType") or "").lower()
    if glucose is not None and (event_type.lower() == "bg check" or glucose_type == "finger"):
        units = str(doc.get("units") or "").lower()
        mmol = units.startswith("mmol") or (not units and glucose < 35)
        analyte = METER[MMOL_L if mmol else MG_DL]
        parts.append(("glucose", observation(
            code=code_maker(analyte)(), profile=analyte.profile, category=analyte.category,
            subject=subject, effective=effective, identifier=ident("glucose"),
            value={"valueQuantity": quantity(glucose, analyte.unit)}, device_ref=device_ref,
            note=notes)))
    if event_type.lower() == "exercise" and duration is not None:
        parts.append(("exercise", made.exercise(
            identifier=ident("exercise"), subject=subject, effective=effective,
            minutes=duration, device=device_ref)))
    if not parts:
        text = notes
        if doc.get("targetBottom") is not None or doc.get("targetTop") is not None:
            target = f"target {doc.get('targetBottom')}-{doc.get('targetTop')}"
            text = "; ".join(filter(None, [target, notes]))
        if duration:
            text = "; ".join(filter(None, [text, f"{duration:g} min"]))
        parts.append(("event", made.event(
            identifier=ident("event"), subject=subject, effective=effective,
            label=event_type, text=text, device=device_ref)))
    for _, resource in parts:
        resource["identifier"].append({"system": ID_SYSTEM, "value": oid})
        resource.setdefault("extension", []).append(extension("event-type", event_type))
        upload.add(resource, SYSTEM)
    answered = {k: v for k, v in doc.items() if k != "_id"}
    answered.update({"_id": oid, "eventType": event_type, "created_at": iso_utc(moment)})
    return answered


def treatments_of(resources: list[dict[str, Any]],
                  device_names: dict[str, str]) -> list[dict[str, Any]]:
    """Stored treatment resources back into Nightscout documents (the parts of one
    treatment merged), latest first."""
    documents: dict[str, dict[str, Any]] = {}
    for resource in resources:
        value = identifier_value(resource, SYSTEM)
        if not value:
            continue
        treatment, _, part = value.rpartition("/")
        when = resource.get("effectiveDateTime") or (
            resource.get("effectivePeriod") or {}).get("start")
        if not isinstance(when, str):
            continue
        moment = parse_fhir_time(when)
        doc = documents.setdefault(treatment, {
            "_id": identifier_value(resource, ID_SYSTEM) or document_id("fhir", treatment),
            "eventType": extension_value(resource, "event-type") or "Note",
            "created_at": iso_utc(moment), "mills": epoch_ms(moment)})
        device = (resource.get("device") or {})
        device = device[0] if isinstance(device, list) and device else device
        reference = device.get("reference") if isinstance(device, dict) else None
        if reference in device_names:
            doc["enteredBy"] = device_names[reference]
        _merge_part(doc, part, resource)
    return sorted(documents.values(), key=lambda d: d["mills"], reverse=True)


def _merge_part(doc: dict[str, Any], part: str, resource: dict[str, Any]) -> None:
    dosage = resource.get("dosage") or {}
    if part == "insulin":
        doc["insulin"] = dosage.get("dose", {}).get("value")
    elif part == "basal":
        rate = dosage.get("rateQuantity", {}).get("value")
        if rate is not None:
            doc["absolute"] = doc["rate"] = rate
        period = resource.get("effectivePeriod") or {}
        if period.get("start") and period.get("end"):
            span = parse_fhir_time(period["end"]) - parse_fhir_time(period["start"])
            doc["duration"] = span.total_seconds() / 60
    elif part == "carbs":
        doc["carbs"] = resource.get("valueQuantity", {}).get("value")
    elif part == "glucose":
        quantity_ = resource.get("valueQuantity", {})
        doc["glucose"] = quantity_.get("value")
        doc["glucoseType"] = "Finger"
        doc["units"] = "mmol" if quantity_.get("code") == MMOL_L else "mg/dl"
    elif part == "exercise":
        doc["duration"] = resource.get("valueQuantity", {}).get("value")
    elif part == "event" and resource.get("valueString"):
        doc["notes"] = resource["valueString"]
    notes = (resource.get("note") or [{}])[0].get("text")
    if notes and "notes" not in doc:
        doc["notes"] = notes
