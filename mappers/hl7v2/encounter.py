"""PV1 (+ PV2) to Encounter (IG segment map PV1)."""

from __future__ import annotations

from mappers.hl7v2.context import MappingContext, Resource
from mappers.hl7v2.datatypes import codeable_concept, identifier, person_reference
from mappers.hl7v2.parser import Segment

_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
# PV1-2 patient class (HL7 table 0004) to v3 ActEncounterCode.
_CLASS = {
    "I": ("IMP", "inpatient encounter"),
    "O": ("AMB", "ambulatory"),
    "E": ("EMER", "emergency"),
    "P": ("PRENC", "pre-admission"),
    "R": ("AMB", "ambulatory"),
    "B": ("IMP", "inpatient encounter"),
    "N": ("AMB", "ambulatory"),
}
_UNKNOWN_CLASS = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-NullFlavor",
    "code": "UNK",
    "display": "unknown",
}
_STATUS_BY_TRIGGER = {
    "A01": "in-progress",
    "A02": "in-progress",
    "A04": "in-progress",
    "A06": "in-progress",
    "A07": "in-progress",
    "A03": "finished",
    "A05": "planned",
    "A14": "planned",
    "A11": "cancelled",
    "A27": "cancelled",
    "A38": "cancelled",
}
_PARTICIPANTS = ((7, "ATND", "attender"), (8, "REF", "referrer"), (9, "CON", "consultant"),
                 (17, "ADM", "admitter"))


def map_encounter(pv1: Segment, ctx: MappingContext) -> tuple[Resource, dict] | None:
    """The Encounter and its visit number (PV1-19); None without a visit number.

    Without PV1-19 there is no business identifier to make the write idempotent, and a
    PV1 in an A28/A31 or an ORU is often a placeholder: such PV1s are not mapped.
    """
    visit = identifier(pv1.value(19), ctx.sender_system)
    if visit is None or ctx.patient_ref is None:
        return None
    encounter: Resource = {
        "resourceType": "Encounter",
        "meta": ctx.meta(),
        "identifier": [visit],
        "status": _status(pv1, ctx),
        "subject": {"reference": ctx.patient_ref},
    }
    patient_class = pv1.text(2).upper()
    if patient_class in _CLASS:
        code, display = _CLASS[patient_class]
        encounter["class"] = {"system": _ACT_CODE, "code": code, "display": display}
    else:
        encounter["class"] = dict(_UNKNOWN_CLASS)
    service = codeable_concept(pv1.value(10))
    if service:
        encounter["serviceType"] = service
    participants = []
    for field_number, code, display in _PARTICIPANTS:
        for rep in pv1.repetitions(field_number):
            person = person_reference(rep)
            if person:
                kind = {"coding": [{"system": _PARTICIPATION, "code": code, "display": display}]}
                participants.append({"type": [kind], "individual": person})
    if participants:
        encounter["participant"] = participants
    period = {}
    start, end = ctx.dtm(pv1.text(44)), ctx.dtm(pv1.text(45))
    if start:
        period["start"] = start
    if end:
        period["end"] = end
    if period:
        encounter["period"] = period
    location = pv1.value(3)
    label = "/".join(part for part in (location.c(4), location.c(1), location.c(2),
                                       location.c(3)) if part)
    if label:
        encounter["location"] = [{"location": {"display": label}}]
    hospitalization = {}
    admit_source = codeable_concept(pv1.value(14))
    if admit_source:
        hospitalization["admitSource"] = admit_source
    disposition = codeable_concept(pv1.value(36))
    if disposition:
        hospitalization["dischargeDisposition"] = disposition
    if hospitalization:
        encounter["hospitalization"] = hospitalization
    return encounter, visit


def _status(pv1: Segment, ctx: MappingContext) -> str:
    if ctx.dtm(pv1.text(45)):
        return "finished"
    if ctx.message.message_type == "ADT":
        return _STATUS_BY_TRIGGER.get(ctx.message.trigger_event, "unknown")
    return "unknown"
