"""Builders of FHIR R4 resources (as dicts) from what the generator decided.

Each builder writes the elements the diabetes profiles require (issue 5): status, code,
subject, effective[x], UCUM units, meta.profile where a project profile applies.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from . import codes
from .france import Identity
from .population import PatientProfile, Treatment

Resource = dict[str, Any]


def iso_utc(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def ref(resource_type: str, resource_id: str) -> dict[str, str]:
    return {"reference": f"{resource_type}/{resource_id}"}


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def _category(code: str, display: str) -> list[dict[str, Any]]:
    return [{"coding": [_coding(codes.OBS_CATEGORY, code, display)]}]


LAB = _category("laboratory", "Laboratory")
VITAL = _category("vital-signs", "Vital Signs")


def quantity(value: float | int, unit: str, comparator: str | None = None) -> dict[str, Any]:
    q: dict[str, Any] = {"value": value}
    if comparator:
        q["comparator"] = comparator
    q.update(unit=unit, system=codes.UCUM, code=unit)
    return q


def patient(pid: str, profile: PatientProfile, who: Identity) -> Resource:
    return {
        "resourceType": "Patient",
        "id": pid,
        "meta": {"profile": [codes.PROFILE_PATIENT]},
        "identifier": [{"use": "official", "system": codes.INS_TEST_OID, "value": who.ins}],
        "active": True,
        "name": [{"use": "official", "family": who.family, "given": list(who.given)}],
        "gender": profile.sex,
        "birthDate": profile.birth_date.isoformat(),
        "address": [{
            "use": "home",
            "type": "physical",
            "line": [who.line],
            "city": who.city,
            "district": who.departement.name,
            "postalCode": who.postal_code,
            "country": "FR",
        }],
    }


def device(
    device_id: str, pid: str, manufacturer: str, model: str, serial: str, kind: str, active: bool
) -> Resource:
    return {
        "resourceType": "Device",
        "id": device_id,
        "status": "active" if active else "inactive",
        "manufacturer": manufacturer,
        "serialNumber": serial,
        "deviceName": [{"name": model, "type": codes.DEVICE_NAME_TYPE}],
        "type": {"text": kind},
        "patient": ref("Patient", pid),
    }


def _condition_status(status: str) -> dict[str, Any]:
    return {
        "clinicalStatus": {"coding": [{"system": codes.CONDITION_CLINICAL, "code": status}]},
        "verificationStatus": {
            "coding": [{"system": codes.CONDITION_VERIFICATION, "code": "confirmed"}]
        },
        "category": [{"coding": [{
            "system": codes.CONDITION_CATEGORY, "code": "problem-list-item",
            "display": "Problem List Item",
        }]}],
    }


def diabetes_condition(cid: str, pid: str, profile: PatientProfile) -> Resource:
    kinds = list(profile.complications)
    key = "none" if not kinds else kinds[0] if len(kinds) == 1 else "multiple"
    code, display = codes.DIABETES_CODES[(profile.diabetes_type, key)]
    return {
        "resourceType": "Condition",
        "id": cid,
        "meta": {"profile": [codes.PROFILE_CONDITION]},
        **_condition_status("active"),
        "code": {"coding": [_coding(codes.ICD10, code, display)], "text": display},
        "subject": ref("Patient", pid),
        "onsetDateTime": profile.diagnosis_date.isoformat(),
        "recordedDate": profile.diagnosis_date.isoformat(),
    }


def complication_condition(
    cid: str, pid: str, kind: str, onset: date, healed: date | None
) -> Resource:
    """The manifestation (ICD-10 "asterisk" code): not a diabetes code, so no diabetes profile."""
    code, display = codes.COMPLICATION_CODES[kind]
    res: Resource = {
        "resourceType": "Condition",
        "id": cid,
        **_condition_status("resolved" if healed else "active"),
        "code": {"coding": [_coding(codes.ICD10, code, display)], "text": display},
        "subject": ref("Patient", pid),
        "onsetDateTime": onset.isoformat(),
    }
    if healed:
        res["abatementDateTime"] = healed.isoformat()
    res["recordedDate"] = onset.isoformat()
    return res


def medication_statement(msid: str, pid: str, cid: str, treatment: Treatment) -> Resource:
    atc, name, product, dosage = codes.DRUGS[treatment.drug]
    period = {"start": treatment.start.isoformat()}
    if treatment.end:
        period["end"] = treatment.end.isoformat()
    return {
        "resourceType": "MedicationStatement",
        "id": msid,
        "meta": {"profile": [codes.PROFILE_MEDICATION]},
        "status": "completed" if treatment.end else "active",
        "medicationCodeableConcept": {
            "coding": [_coding(codes.ATC, atc, name)], "text": product,
        },
        "subject": ref("Patient", pid),
        "effectivePeriod": period,
        "reasonReference": [ref("Condition", cid)],
        "dosage": [{"text": dosage}],
    }


def encounter(
    eid: str, pid: str, cid: str, inpatient: bool, start: datetime, end: datetime, reason: str
) -> Resource:
    cls = ("IMP", "inpatient encounter") if inpatient else ("AMB", "ambulatory")
    return {
        "resourceType": "Encounter",
        "id": eid,
        "status": "finished",
        "class": {"system": codes.ACT_CODE, "code": cls[0], "display": cls[1]},
        "type": [{"text": "Hospitalisation" if inpatient else "Consultation de diabétologie"}],
        "subject": ref("Patient", pid),
        "period": {"start": iso_utc(start), "end": iso_utc(end)},
        "reasonCode": [{"text": reason}],
        "reasonReference": [ref("Condition", cid)],
    }


def observation(
    oid: str,
    pid: str,
    loinc: tuple[str, str, str],
    value: float | int,
    when: str,
    *,
    category: list[dict[str, Any]] = LAB,
    profile: str | None = None,
    encounter_id: str | None = None,
    device_id: str | None = None,
    comparator: str | None = None,
) -> Resource:
    code, display, unit = loinc
    res: Resource = {"resourceType": "Observation", "id": oid}
    if profile:
        res["meta"] = {"profile": [profile]}
    res["status"] = "final"
    res["category"] = category
    res["code"] = {"coding": [_coding(codes.LOINC, code, display)]}
    res["subject"] = ref("Patient", pid)
    if encounter_id:
        res["encounter"] = ref("Encounter", encounter_id)
    res["effectiveDateTime"] = when
    res["valueQuantity"] = quantity(value, unit, comparator)
    if device_id:
        res["device"] = ref("Device", device_id)
    return res


def blood_pressure(
    oid: str, pid: str, systolic: int, diastolic: int, when: str, encounter_id: str
) -> Resource:
    code, display, unit = codes.BP_PANEL
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": VITAL,
        "code": {"coding": [_coding(codes.LOINC, code, display)]},
        "subject": ref("Patient", pid),
        "encounter": ref("Encounter", encounter_id),
        "effectiveDateTime": when,
        "component": [
            {
                "code": {"coding": [_coding(codes.LOINC, part[0], part[1])]},
                "valueQuantity": quantity(value, unit),
            }
            for part, value in ((codes.SYSTOLIC, systolic), (codes.DIASTOLIC, diastolic))
        ],
    }
