"""PID (+ PD1) to Patient and NK1 to RelatedPerson (IG segment maps PID, PD1, NK1)."""

from __future__ import annotations

from mappers.hl7v2.context import MappingContext, Resource
from mappers.hl7v2.datatypes import (
    INS_SYSTEM,
    INS_TEST_SYSTEM,
    address,
    codeable_concept,
    contact_point,
    date_only,
    human_name,
    identifier,
    number,
    person_reference,
)
from mappers.hl7v2.parser import Segment

_GENDER = {"M": "male", "F": "female", "O": "other", "A": "other", "N": "other", "U": "unknown"}
_MARITAL = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"
# R4's v3 MaritalStatus codes (HL7 v2 table 0002 shares them); a sender's own code (`2`,
# `Married`) is kept as text, never labelled with a system it is not in
_MARITAL_CODES = frozenset("ADILMPSTUW")
_SSN = "http://hl7.org/fhir/sid/us-ssn"


def patient_identifiers(pid: Segment, ctx: MappingContext) -> list[dict]:
    """PID-3 (and the older PID-2 / PID-4, PID-19 SSN), without duplicates."""
    found: list[dict] = []
    for n in (3, 2, 4):
        for rep in pid.repetitions(n):
            ident = identifier(rep, ctx.sender_system)
            if ident and ident not in found:
                found.append(ident)
    ssn = pid.text(19)
    if ssn:
        found.append({"system": _SSN, "value": ssn})
    return found


def business_identifier(identifiers: list[dict]) -> dict | None:
    """The identifier a Patient is matched on: INS, then a medical record number, then any."""
    for wanted in (INS_SYSTEM, INS_TEST_SYSTEM):
        for ident in identifiers:
            if ident.get("system") == wanted:
                return ident
    for ident in identifiers:
        codes = [c.get("code") for c in ident.get("type", {}).get("coding", [])]
        if "MR" in codes and ident.get("system") != _SSN:
            return ident
    return identifiers[0] if identifiers else None


def map_patient(pid: Segment, pd1: Segment | None, ctx: MappingContext) -> tuple[Resource, dict]:
    """The Patient and the identifier to match it on (built from MSH-10 when PID has none)."""
    patient: Resource = {"resourceType": "Patient", "meta": ctx.meta()}
    identifiers = patient_identifiers(pid, ctx)
    key = business_identifier(identifiers)
    if key is None:
        # No identifier at all: scope one to this message so that a re-send matches it.
        key = {"system": ctx.message_system, "value": f"{ctx.message.control_id}-PID{pid.index}"}
        identifiers.append(key)
    patient["identifier"] = identifiers
    names = [n for n in (human_name(r) for r in pid.repetitions(5)) if n]
    if names:
        patient["name"] = names
    gender = _GENDER.get(pid.text(8).upper())
    if gender:
        patient["gender"] = gender
    birth = date_only(pid.text(7))
    if birth:
        patient["birthDate"] = birth
    addresses = [a for a in (address(r) for r in pid.repetitions(11)) if a]
    if addresses:
        patient["address"] = addresses
    telecom = [t for t in (contact_point(r) for r in pid.repetitions(13)) if t]
    for rep in pid.repetitions(14):
        work = contact_point(rep)
        if work:
            work.setdefault("use", "work")
            telecom.append(work)
    if telecom:
        patient["telecom"] = telecom
    marital = codeable_concept(pid.value(16))
    if marital:
        codings = []
        for item in marital.get("coding", []):
            if "system" not in item or item["system"].endswith("v2-0002"):
                if item.get("code") not in _MARITAL_CODES:
                    marital.setdefault("text", item.get("display") or item.get("code"))
                    continue
                item["system"] = _MARITAL
            codings.append(item)
        if codings:
            marital["coding"] = codings
        else:
            marital.pop("coding", None)
        if marital:
            patient["maritalStatus"] = marital
    language = codeable_concept(pid.value(15))
    if language:
        patient["communication"] = [{"language": language}]
    _deceased(pid, patient, ctx)
    _multiple_birth(pid, patient)
    mother = pid.value(6)
    if mother.c(1):
        patient["extension"] = [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
                "valueString": mother.c(1),
            }
        ]
    if pd1 is not None:
        _primary_care(pd1, patient)
    return patient, key


def _deceased(pid: Segment, patient: Resource, ctx: MappingContext) -> None:
    died = ctx.dtm(pid.text(29))
    if died:
        patient["deceasedDateTime"] = died
    elif pid.text(30).upper() == "Y":
        patient["deceasedBoolean"] = True
    elif pid.text(30).upper() == "N":
        patient["deceasedBoolean"] = False


def _multiple_birth(pid: Segment, patient: Resource) -> None:
    order = number(pid.text(25))
    if isinstance(order, int) and order > 0:
        patient["multipleBirthInteger"] = order
    elif pid.text(24).upper() in ("Y", "N"):
        patient["multipleBirthBoolean"] = pid.text(24).upper() == "Y"


def _primary_care(pd1: Segment, patient: Resource) -> None:
    """PD1-4 (primary care provider) and PD1-3 (primary facility) as logical references."""
    doctors = [d for d in (person_reference(r) for r in pd1.repetitions(4)) if d]
    if doctors:
        patient["generalPractitioner"] = doctors
    facility = pd1.value(3)
    if facility.c(1):
        patient["managingOrganization"] = {"display": facility.c(1)}


def map_related_person(nk1: Segment, ctx: MappingContext) -> tuple[Resource, dict] | None:
    """NK1 to RelatedPerson, matched on NK1-33 or on patient + name + relationship."""
    if ctx.patient_ref is None:
        return None
    person: Resource = {
        "resourceType": "RelatedPerson",
        "meta": ctx.meta(),
        "active": True,
        "patient": {"reference": ctx.patient_ref},
    }
    names = [n for n in (human_name(r) for r in nk1.repetitions(2)) if n]
    if names:
        person["name"] = names
    relationships = [
        c for c in (codeable_concept(nk1.value(3)), codeable_concept(nk1.value(7))) if c
    ]
    if relationships:
        person["relationship"] = relationships
    addresses = [a for a in (address(r) for r in nk1.repetitions(4)) if a]
    if addresses:
        person["address"] = addresses
    telecom = [t for t in (contact_point(r) for r in nk1.repetitions(5)) if t]
    telecom += [t for t in (contact_point(r) for r in nk1.repetitions(6)) if t]
    if telecom:
        person["telecom"] = telecom
    identifiers = [i for i in (identifier(r, ctx.sender_system) for r in nk1.repetitions(33)) if i]
    if identifiers:
        key = identifiers[0]
    else:
        if not names and not relationships:
            return None
        label = names[0] if names else {}
        parts = [
            ctx.patient_key or "",
            "NK1",
            label.get("family", ""),
            " ".join(label.get("given", [])),
            nk1.text(3),
        ]
        key = {"system": ctx.sender_system, "value": ":".join(parts)}
        identifiers = [key]
    person["identifier"] = identifiers
    return person, key
