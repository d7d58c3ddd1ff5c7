"""OBR / ORC to DiagnosticReport, OBX (+ NTE) to Observation, SPM to Specimen."""

from __future__ import annotations

from dataclasses import dataclass, field

from mappers.hl7v2.context import MappingContext, Resource
from mappers.hl7v2.datatypes import (
    V2_0203,
    codeable_concept,
    entity_identifier,
    loinc_code,
)
from mappers.hl7v2.parser import Segment
from mappers.hl7v2.values import (
    interpretations,
    reference_range,
    status,
    unit_of,
    value_elements,
)
from mappers.units import to_ucum

PROFILE_BASE = "https://diatabase.org/fhir/StructureDefinition/"
# LOINC codes from DESIGN.md with the UCUM units their property allows.
GLUCOSE_CODES = {
    "2339-0": "mg/dL", "15074-8": "mmol/L", "2345-7": "mg/dL", "14749-6": "mmol/L",
    "41653-7": "mg/dL", "99504-3": "mg/dL",
}
HBA1C_CODES = {"4548-4": "%", "17856-6": "%", "59261-8": "mmol/mol"}
_OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
# OBR-25 result status (table 0123) to DiagnosticReport.status.
_REPORT_STATUS = {
    "O": "registered", "I": "registered", "S": "registered", "A": "partial",
    "P": "preliminary", "R": "preliminary", "N": "preliminary", "C": "corrected",
    "M": "corrected", "F": "final", "X": "cancelled", "D": "entered-in-error",
    "Y": "unknown", "Z": "unknown",
}


@dataclass
class OrderGroup:
    """One OBR (with the ORC before it) and what the segments after it produced."""

    obr: Segment | None
    orc: Segment | None
    filler: dict | None  # the group's business key: filler number, else placer number
    key_type: str = "FILL"
    report: Resource | None = None
    result_refs: list[dict] = field(default_factory=list)
    specimen_refs: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    obx_count: int = 0
    part_of: str | None = None  # a VXU group: the Immunization its OBXs belong to
    effective: str | None = None  # the time its OBXs default to (the administration)


def order_group(obr: Segment | None, orc: Segment | None, ctx: MappingContext) -> OrderGroup:
    filler = None
    placer = None
    for segment, filler_field, placer_field in ((obr, 3, 2), (orc, 3, 2)):
        if segment is None:
            continue
        filler = filler or entity_identifier(segment.value(filler_field), ctx.sender_system)
        placer = placer or entity_identifier(segment.value(placer_field), ctx.sender_system)
    key, key_type = (filler, "FILL") if filler else (placer, "PLAC")
    if key is None and obr is not None:
        control = ctx.message.control_id
        key = {"system": ctx.message_system, "value": f"{control}-OBR{obr.index}"}
        key_type = ""
    return OrderGroup(obr=obr, orc=orc, filler=key, key_type=key_type)


def map_report(group: OrderGroup, ctx: MappingContext) -> Resource:
    """The DiagnosticReport of an OBR group (results filled in when the group closes)."""
    obr = group.obr
    assert obr is not None
    report: Resource = {
        "resourceType": "DiagnosticReport",
        "meta": ctx.meta(),
        "identifier": [],
        "status": _REPORT_STATUS.get(obr.text(25).upper(), "unknown"),
        "code": codeable_concept(obr.value(4)) or {"text": "unspecified"},
    }
    if group.filler and group.key_type:
        report["identifier"].append(
            {**group.filler, "type": {"coding": [{"system": V2_0203, "code": group.key_type}]}}
        )
    elif group.filler:
        report["identifier"].append(dict(group.filler))
    placer = entity_identifier(obr.value(2), ctx.sender_system)
    if placer and placer != group.filler:
        report["identifier"].append(
            {**placer, "type": {"coding": [{"system": V2_0203, "code": "PLAC"}]}}
        )
    section = obr.text(24)
    if section:
        report["category"] = [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": section}]}]
    if ctx.patient_ref:
        report["subject"] = {"reference": ctx.patient_ref}
    if ctx.encounter_ref:
        report["encounter"] = {"reference": ctx.encounter_ref}
    effective = ctx.dtm(obr.text(7))
    if effective:
        report["effectiveDateTime"] = effective
    issued = ctx.dtm(obr.text(22))
    if issued and len(issued) > 19:  # instant: needs seconds and an offset
        report["issued"] = issued
    return report


def close_report(group: OrderGroup) -> None:
    report = group.report
    if report is None:
        return
    if group.result_refs:
        report["result"] = list(group.result_refs)
    if group.specimen_refs:
        report["specimen"] = list(group.specimen_refs)
    if group.notes:
        # R4 DiagnosticReport has no note: the OBR's NTEs are its free-text conclusion.
        report["conclusion"] = "\n".join(group.notes)


def observation_key(obx: Segment, group: OrderGroup | None, ctx: MappingContext) -> dict:
    """Filler order number + OBX set id (position in the group when OBX-1 is empty).

    OBX outside an order (ADT) hang on the visit number, else on the patient and the
    observation time, so that an A08 repeating them does not duplicate them; only an OBX
    with none of these falls back on the message control id.
    """
    set_id = obx.text(1) or str(group.obx_count if group else obx.index)
    observed = obx.text(14)
    if group and group.filler:
        base = group.filler
    elif ctx.encounter_key:
        base = ctx.encounter_key
    elif ctx.patient_key and observed:
        base = {"system": ctx.sender_system, "value": f"{ctx.patient_key}:{observed}"}
    else:
        base = {"system": ctx.message_system, "value": ctx.message.control_id}
    ident = {"value": f"{base['value']}-{set_id}"}
    if base.get("system"):
        ident = {"system": base["system"], **ident}
    sub_id = obx.text(4)
    if sub_id and sub_id != "1":
        ident["value"] += f".{sub_id}"
    return ident


def map_observation(
    obx: Segment, group: OrderGroup | None, ctx: MappingContext
) -> tuple[Resource, dict]:
    code = codeable_concept(obx.value(3)) or {"text": "unspecified"}
    observation: Resource = {
        "resourceType": "Observation",
        "meta": ctx.meta(),
        "status": status(obx),
        "category": [{"coding": [{"system": _OBS_CATEGORY, "code": "laboratory",
                                  "display": "Laboratory"}]}],
        "code": code,
    }
    if ctx.patient_ref:
        observation["subject"] = {"reference": ctx.patient_ref}
    if ctx.encounter_ref:
        observation["encounter"] = {"reference": ctx.encounter_ref}
    effective = ctx.dtm(obx.text(14))
    if not effective and group and group.obr is not None:
        effective = ctx.dtm(group.obr.text(7))
    if effective:
        observation["effectiveDateTime"] = effective
    values, off_scale = value_elements(obx, ctx)
    observation.update(values)
    unit = unit_of(obx)
    ranges = reference_range(obx.text(7), unit) if obx.field(7) else None
    if ranges:
        observation["referenceRange"] = ranges
    flags = interpretations(obx)
    if off_scale and off_scale not in flags:
        flags.append(off_scale)
    if flags:
        observation["interpretation"] = flags
    method = codeable_concept(obx.value(17))
    if method:
        observation["method"] = method
    site = codeable_concept(obx.value(20))
    if site:
        observation["bodySite"] = site
    if group and group.specimen_refs:
        observation["specimen"] = group.specimen_refs[0]
    profile = diabetes_profile(code, observation.get("valueQuantity"))
    if profile:
        observation["meta"]["profile"] = [profile]
    key = observation_key(obx, group, ctx)
    observation["identifier"] = [key]
    return observation, key


def diabetes_profile(code: dict, value_quantity: dict | None) -> str | None:
    """BloodGlucose / HbA1c when the LOINC code is one of ours and the unit fits it."""
    loinc = loinc_code(code)
    if loinc is None or not value_quantity:
        return None
    ucum = value_quantity.get("code") or to_ucum(value_quantity.get("unit"))
    if ucum is None:
        return None
    if GLUCOSE_CODES.get(loinc) == ucum:
        return PROFILE_BASE + "BloodGlucose"
    if HBA1C_CODES.get(loinc) == ucum:
        return PROFILE_BASE + "HbA1c"
    return None


def add_note(resource: Resource, text: str) -> None:
    if text:
        resource.setdefault("note", []).append({"text": text})


def note_text(nte: Segment) -> str:
    """NTE-3 (repeating: one line each)."""
    return "\n".join(rep.text() for rep in nte.repetitions(3) if rep.text())


def map_specimen(spm: Segment, group: OrderGroup | None, ctx: MappingContext):
    """SPM: identifier (2: placer & filler EIs), type (4), collection (17), received (18)."""
    ids = spm.value(2)
    identifiers = []
    for component in (2, 1):  # filler-assigned first: it is the one matched on
        ei = ids.sub_value(component)
        ident = entity_identifier(ei, ctx.sender_system) if ei else None
        if ident and ident not in identifiers:
            identifiers.append(ident)
    if identifiers:
        key = identifiers[0]
    else:
        base = group.filler["value"] if group and group.filler else ctx.message.control_id
        key = {"system": ctx.sender_system, "value": f"{base}-SPM{spm.text(1) or spm.index}"}
        identifiers = [key]
    specimen: Resource = {
        "resourceType": "Specimen",
        "meta": ctx.meta(),
        "identifier": identifiers,
    }
    kind = codeable_concept(spm.value(4))
    if kind:
        specimen["type"] = kind
    if ctx.patient_ref:
        specimen["subject"] = {"reference": ctx.patient_ref}
    collection: dict = {}
    collected = ctx.dtm(spm.value(17).c(1))
    if collected:
        collection["collectedDateTime"] = collected
    method = codeable_concept(spm.value(7))
    if method:
        collection["method"] = method
    site = codeable_concept(spm.value(8))
    if site:
        collection["bodySite"] = site
    if collection:
        specimen["collection"] = collection
    received = ctx.dtm(spm.text(18))
    if received:
        specimen["receivedTime"] = received
    return specimen, key

