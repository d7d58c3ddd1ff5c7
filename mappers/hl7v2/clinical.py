"""DG1 to Condition and AL1 to AllergyIntolerance (IG segment maps DG1, AL1)."""

from __future__ import annotations

from mappers.hl7v2.context import MappingContext, Resource
from mappers.hl7v2.datatypes import codeable_concept, entity_identifier
from mappers.hl7v2.parser import Segment

_CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
# DG1-6 diagnosis type (table 0052) to verification status.
_DIAGNOSIS_TYPE = {"A": "provisional", "W": "provisional", "F": "confirmed"}
# AL1-2 allergen type (table 0127) to category.
_ALLERGEN_CATEGORY = {
    "DA": "medication", "DRUG": "medication", "MA": "medication",
    "FA": "food", "FOOD": "food",
    "EA": "environment", "AA": "environment", "PA": "environment", "LA": "environment",
    "MC": "biologic",
}
# AL1-4 severity (table 0128) to criticality.
_CRITICALITY = {"SV": "high", "MO": "low", "MI": "low", "U": "unable-to-assess"}


def _derived_key(ctx: MappingContext, kind: str, concept: dict) -> dict:
    """Patient + segment + code: the one business key DG1/AL1 offer when no id is sent."""
    codings = concept.get("coding") or [{}]
    code = codings[0].get("code") or concept.get("text", "")
    return {"system": ctx.sender_system, "value": f"{ctx.patient_key}:{kind}:{code}"}


def map_condition(dg1: Segment, ctx: MappingContext) -> tuple[Resource, dict] | None:
    code = codeable_concept(dg1.value(3))
    description = dg1.text(4)
    if code is None and description:
        code = {"text": description}
    elif code is not None and description and "text" not in code:
        code["text"] = description
    if code is None or ctx.patient_ref is None:
        return None
    condition: Resource = {
        "resourceType": "Condition",
        "meta": ctx.meta(),
        "category": [{"coding": [{"system": _CONDITION_CATEGORY, "code": "encounter-diagnosis",
                                  "display": "Encounter Diagnosis"}]}],
        "code": code,
        "subject": {"reference": ctx.patient_ref},
    }
    if ctx.encounter_ref:
        condition["encounter"] = {"reference": ctx.encounter_ref}
    verification = _DIAGNOSIS_TYPE.get(dg1.text(6).upper())
    if verification:
        condition["verificationStatus"] = {
            "coding": [{"system": _VERIFICATION, "code": verification}]
        }
    onset = ctx.dtm(dg1.text(5))
    if onset:
        condition["onsetDateTime"] = onset
    recorded = ctx.dtm(dg1.text(19))
    if recorded:
        condition["recordedDate"] = recorded
    key = entity_identifier(dg1.value(20), ctx.sender_system) or _derived_key(ctx, "DG1", code)
    condition["identifier"] = [key]
    return condition, key


def map_allergy(al1: Segment, ctx: MappingContext) -> tuple[Resource, dict] | None:
    code = codeable_concept(al1.value(3))
    if code is None or ctx.patient_ref is None:
        return None
    allergy: Resource = {
        "resourceType": "AllergyIntolerance",
        "meta": ctx.meta(),
        "clinicalStatus": {"coding": [{"system": _ALLERGY_CLINICAL, "code": "active"}]},
        "code": code,
        "patient": {"reference": ctx.patient_ref},
    }
    allergen_type = al1.value(2)
    category = _ALLERGEN_CATEGORY.get(allergen_type.c(1).upper()) or _ALLERGEN_CATEGORY.get(
        allergen_type.c(2).upper()
    )
    if category:
        allergy["category"] = [category]
    criticality = _CRITICALITY.get(al1.text(4).upper())
    if criticality:
        allergy["criticality"] = criticality
    manifestations = [{"text": r.text()} for r in al1.repetitions(5) if r.text()]
    if manifestations:
        allergy["reaction"] = [{"manifestation": manifestations}]
    onset = ctx.dtm(al1.text(6))
    if onset:
        allergy["onsetDateTime"] = onset
    key = _derived_key(ctx, "AL1", code)
    allergy["identifier"] = [key]
    return allergy, key
