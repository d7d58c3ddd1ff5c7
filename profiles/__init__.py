"""Diabetes profiles (FHIR R4 StructureDefinitions) and a generic validator for them.

A library: it imports `terminology`, never `fhir_server`.
"""

from profiles.core_validator import CoreValidator
from profiles.definitions import (
    BLOOD_GLUCOSE,
    CANONICAL_BASE,
    CGM_SENSOR_READING,
    DIABETES_CONDITION,
    DIABETES_MEDICATION_STATEMENT,
    DIABETES_PATIENT,
    HBA1C,
    PLAUSIBLE_RANGE_URL,
    load_search_parameters,
    load_structure_definitions,
)
from profiles.rules import ProfileRule, RequiredProfiles, RuleError, rules_from_setting
from profiles.validator import ProfileIssue, ProfileValidator

__all__ = [
    "BLOOD_GLUCOSE",
    "CANONICAL_BASE",
    "CGM_SENSOR_READING",
    "CoreValidator",
    "DIABETES_CONDITION",
    "DIABETES_MEDICATION_STATEMENT",
    "DIABETES_PATIENT",
    "HBA1C",
    "PLAUSIBLE_RANGE_URL",
    "ProfileIssue",
    "ProfileRule",
    "ProfileValidator",
    "RequiredProfiles",
    "RuleError",
    "load_search_parameters",
    "load_structure_definitions",
    "rules_from_setting",
]
