"""ORC + RXA (+ RXR) of a VXU order group to Immunization (IG segment maps ORC[Immunization],
RXA[Immunization] and RXR[Immunization]).

The order group's OBX segments become Observations with `partOf` this Immunization, as
the IG's VXU_V04 message map says (see `convert`). What the IG leaves to national guides
is taken from the US CDC immunization guide, the one most senders follow: RXA-9 "00"
(new record) is a primary source, "01".."08" a historical record with its origin; RXA-6
"999" is an unknown amount.
"""

from __future__ import annotations

from mappers.hl7v2.context import MappingContext, Resource
from mappers.hl7v2.datatypes import (
    V2_0203,
    codeable_concept,
    date_only,
    entity_identifier,
    number,
    person_reference,
)
from mappers.hl7v2.errors import MappingError
from mappers.hl7v2.parser import Segment
from mappers.units import quantity

_PERFORMER_FUNCTION = "http://terminology.hl7.org/CodeSystem/v2-0443"
# RXA-20 completion status (HL7 table 0322) to Immunization.status (IG CompletionStatus map);
# a partial administration is completed but subpotent.
_STATUS = {"CP": "completed", "PA": "completed", "RE": "not-done", "NA": "not-done"}
_REPORT_ORIGIN_SYSTEM = "urn:oid:2.16.840.1.114222.4.5.274"  # CDC NIP001 (source of record)
_UNKNOWN_AMOUNT = "999"


def immunization_key(
    orc: Segment | None, rxa: Segment, vaccine: dict, ctx: MappingContext
) -> tuple[dict, list[dict]]:
    """The business identifier (ORC-3 filler, else ORC-2 placer, else patient + vaccine +
    date) and the identifiers the Immunization carries."""
    identifiers: list[dict] = []
    if orc is not None:
        for field, kind in ((3, "FILL"), (2, "PLAC")):
            ident = entity_identifier(orc.value(field), ctx.sender_system)
            if ident:
                identifiers.append(
                    {**ident, "type": {"coding": [{"system": V2_0203, "code": kind}]}}
                )
    if identifiers:
        key = {k: v for k, v in identifiers[0].items() if k != "type"}
        return key, identifiers
    codings = vaccine.get("coding") or [{}]
    code = codings[0].get("code") or vaccine.get("text", "")
    key = {"system": ctx.sender_system,
           "value": f"{ctx.patient_key}:RXA:{code}:{rxa.text(3)}"}
    return key, [key]


def map_immunization(
    rxa: Segment, rxr: Segment | None, orc: Segment | None, ctx: MappingContext
) -> tuple[Resource, dict]:
    """The Immunization of one order group; MappingError when RXA lacks what R4 requires
    (the vaccine, the date, a patient): the sender is told (AE) rather than the record lost."""
    vaccine = codeable_concept(rxa.value(5))
    if vaccine is None:
        raise MappingError("RXA without an administered code (vaccine)", segment="RXA", field=5)
    occurrence = ctx.dtm(rxa.text(3))
    if occurrence is None:
        raise MappingError("RXA without a valid administration date", segment="RXA", field=3)
    if ctx.patient_ref is None:
        raise MappingError("RXA before any PID: whose immunization is it?", segment="RXA")
    immunization: Resource = {
        "resourceType": "Immunization",
        "meta": ctx.meta(),
        "status": _status(rxa),
        "vaccineCode": vaccine,
        "patient": {"reference": ctx.patient_ref},
        "occurrenceDateTime": occurrence,
    }
    if ctx.encounter_ref:
        immunization["encounter"] = {"reference": ctx.encounter_ref}
    recorded = ctx.dtm(rxa.text(22)) or (ctx.dtm(orc.text(9)) if orc is not None else None)
    if recorded:
        immunization["recorded"] = recorded
    if rxa.text(20).upper() == "PA":
        immunization["isSubpotent"] = True
    _source(rxa, immunization)
    _dose(rxa, immunization)
    _substance(rxa, immunization)
    _performers(rxa, orc, immunization)
    refusal = codeable_concept(rxa.value(18))
    if refusal:
        immunization["statusReason"] = refusal
    reasons = [c for c in (codeable_concept(r) for r in rxa.repetitions(19)) if c]
    if reasons:
        immunization["reasonCode"] = reasons
    location = rxa.value(27) or rxa.value(11)
    label = location.c(4) or location.c(1) if location else ""
    if label:
        immunization["location"] = {"display": label}
    if rxr is not None:
        route = codeable_concept(rxr.value(1))
        if route:
            immunization["route"] = route
        site = codeable_concept(rxr.value(2))
        if site:
            immunization["site"] = site
    key, identifiers = immunization_key(orc, rxa, vaccine, ctx)
    immunization["identifier"] = identifiers
    return immunization, key


def _status(rxa: Segment) -> str:
    if rxa.text(21).upper() == "D":
        return "entered-in-error"
    return _STATUS.get(rxa.text(20).upper(), "completed")


def _source(rxa: Segment, immunization: Resource) -> None:
    """RXA-9 administration notes: the CDC NIP001 source-of-record codes."""
    for note in rxa.repetitions(9):
        code = note.c(1)
        if code == "00":
            immunization["primarySource"] = True
            return
        if code.isdigit() and len(code) == 2:
            immunization["primarySource"] = False
            origin = codeable_concept(note) or {}
            for item in origin.get("coding", []):
                if "system" not in item or note.c(3).upper() == "NIP001":
                    item["system"] = _REPORT_ORIGIN_SYSTEM
            if origin:
                immunization["reportOrigin"] = origin
            return


def _dose(rxa: Segment, immunization: Resource) -> None:
    amount = rxa.text(6)
    value = number(amount)
    if value is None or amount == _UNKNOWN_AMOUNT or value <= 0:
        return
    units = rxa.value(7)
    dose = quantity(value, units.c(1) or units.c(2))
    immunization["doseQuantity"] = dose


def _substance(rxa: Segment, immunization: Resource) -> None:
    lots = [rep.text() for rep in rxa.repetitions(15) if rep.text()]
    if lots:
        immunization["lotNumber"] = lots[0]
    expiry = date_only(rxa.text(16))
    if expiry and len(expiry) == 10:
        immunization["expirationDate"] = expiry
    maker = rxa.value(17)
    if maker:
        reference: dict = {}
        if maker.c(1):
            system = "http://hl7.org/fhir/sid/mvx" if maker.c(3).upper() == "MVX" else None
            reference["identifier"] = {"value": maker.c(1), **({"system": system} if system
                                                              else {})}
        if maker.c(2):
            reference["display"] = maker.c(2)
        if reference:
            immunization["manufacturer"] = reference


def _performers(rxa: Segment, orc: Segment | None, immunization: Resource) -> None:
    """RXA-10 administering (AP) and ORC-12 ordering (OP) providers, as logical references
    (the mapper creates no Practitioner)."""
    performers = []
    sources = [(rep, "AP") for rep in rxa.repetitions(10)]
    if orc is not None:
        sources += [(rep, "OP") for rep in orc.repetitions(12)]
    for value, function in sources:
        actor = person_reference(value)
        if actor:
            performers.append({
                "function": {"coding": [{"system": _PERFORMER_FUNCTION, "code": function}]},
                "actor": actor,
            })
    if performers:
        immunization["performer"] = performers
