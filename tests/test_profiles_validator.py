"""The diabetes profiles through ProfileValidator: valid examples, and invalid ones that each
break one rule, with the exact issue code and FHIRPath expression."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from fhir_server.model.validation import validate_structure
from profiles import (
    BLOOD_GLUCOSE,
    CGM_SENSOR_READING,
    HBA1C,
    ProfileIssue,
    ProfileValidator,
)
from profiles.compiled import ProfileDefinitionError
from profiles.validator import validate_definitions
from terminology import TerminologyService
from tests.profile_examples import (
    INS_SYSTEM,
    VALID_CORSICAN_INS,
    VALID_INS,
    cgm_reading,
    diabetes_condition,
    f001_glucose,
    french_patient,
    glucose,
    hba1c,
    medication_statement,
    synthea_diabetes_conditions,
    synthea_glucose,
    synthea_hba1c,
)


@pytest.fixture(scope="module")
def validator() -> ProfileValidator:
    return ProfileValidator(TerminologyService())


def errors(validator: ProfileValidator, resource: dict) -> list[ProfileIssue]:
    return [i for i in validator.validate(resource) if i.severity == "error"]


def pairs(issues: list[ProfileIssue]) -> set[tuple[str, str]]:
    return {(i.code, i.expression) for i in issues}


VALID = [
    ("f001", f001_glucose),
    ("glucose-mmol", glucose),
    ("glucose-mg", lambda: glucose(180, "mg/dL", "2339-0")),
    ("glucose-g", lambda: glucose(1.8, "g/L", "2345-7")),
    ("glucose-meter-LO", lambda: _with(glucose(1.1), "valueQuantity", comparator="<")),
    ("glucose-meter-HI", lambda: _with(glucose(33.3), "valueQuantity", comparator=">")),
    ("glucose-absent", lambda: _absent(glucose())),
    ("cgm-mg", cgm_reading),
    ("cgm-mmol", lambda: cgm_reading(7.9, "mmol/L", "105272-9")),
    ("hba1c-percent", hba1c),
    ("hba1c-hplc", lambda: hba1c(6.4, "%", "17856-6")),
    ("hba1c-ifcc", lambda: hba1c(53, "mmol/mol", "59261-8")),
    ("condition-icd10", diabetes_condition),
    ("condition-cim10", lambda: diabetes_condition(
        "https://smt.esante.gouv.fr/terminologie-cim-10/", "E11.00")),
    ("condition-gestational", lambda: diabetes_condition(
        "http://hl7.org/fhir/sid/icd-10", "O24.4")),
    ("condition-snomed", lambda: diabetes_condition("http://snomed.info/sct", "46635009")),
    ("medication-metformin", medication_statement),
    ("medication-insulin", lambda: medication_statement("A10AE04")),
    ("patient", french_patient),
    ("patient-corsica", lambda: french_patient(VALID_CORSICAN_INS)),
    ("patient-no-ins", lambda: _drop_ins(french_patient())),
]


def _with(resource: dict, element: str, **values: Any) -> dict:
    resource[element].update(values)
    return resource


def _absent(resource: dict) -> dict:
    del resource["valueQuantity"]
    resource["dataAbsentReason"] = {
        "coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "error"}
        ]
    }
    return resource


def _drop_ins(resource: dict) -> dict:
    resource["identifier"] = [i for i in resource["identifier"] if i["system"] != INS_SYSTEM]
    return resource


@pytest.mark.parametrize("make", [m for _, m in VALID], ids=[n for n, _ in VALID])
def test_valid_examples_conform(validator: ProfileValidator, make: Callable[[], dict]) -> None:
    resource = make()
    assert validate_structure(resource) == []
    assert validator.validate(resource) == []


def test_shipped_data_conforms(validator: ProfileValidator) -> None:
    """Synthea glucose and HbA1c results and diabetes conditions, claimed as our profiles."""
    resources = synthea_glucose() + synthea_hba1c() + synthea_diabetes_conditions()
    assert len(resources) >= 10
    for resource in resources:
        assert validator.validate(resource) == [], resource["id"]


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def change(resource: dict) -> None:
        *parents, last = path.split(".")
        target = resource
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        if value is _DELETE:
            del target[last]
        else:
            target[int(last) if last.isdigit() else last] = value

    return change


_DELETE = object()


def _KEEP(resource: dict) -> None:  # noqa: N802 - reads as a constant in the table
    """The example itself breaks the rule."""
GROUP = {"reference": "Group/g1"}

# (id, example, change, expected {(code, expression)}, words the message must contain)
BROKEN: list[tuple[str, Callable[[], dict], Callable[[dict], None], set, tuple[str, ...]]] = [
    # BloodGlucose
    ("bg-code-not-in-valueset", glucose, _set("code.coding.0.code", "1234-5"),
     {("code-invalid", "Observation.code.coding[0]")}, ("1234-5", "glucose-codes")),
    ("bg-no-loinc-coding", glucose,
     _set("code.coding", [{"system": "http://snomed.info/sct", "code": "33747003"}]),
     {("required", "Observation.code.coding")}, ("slice loinc",)),
    # (`mg/dl` is valid UCUM, the litre being `l` too: MG/DL is a misspelling)
    ("bg-unit-spelling", glucose, _set("valueQuantity.code", "MG/DL"),
     {("code-invalid", "Observation.valueQuantity.code")}, ("MG/DL", "glucose-units")),
    ("bg-unit-system", glucose, _set("valueQuantity.system", "http://example.org/units"),
     {("value", "Observation.valueQuantity.system")}, ("http://unitsofmeasure.org",)),
    ("bg-no-value", glucose, _set("valueQuantity", _DELETE),
     {("invariant", "Observation")}, ("bg-1",)),
    ("bg-comparator", glucose, _set("valueQuantity.comparator", "<="),
     {("invariant", "Observation")}, ("bg-2",)),
    ("bg-quantity-without-number", glucose, _set("valueQuantity.value", _DELETE),
     {("required", "Observation.valueQuantity.value")}, ()),
    ("bg-subject-group", glucose, _set("subject", GROUP),
     {("value", "Observation.subject")}, ("Patient", "Group")),
    ("bg-no-subject", glucose, _set("subject", _DELETE),
     {("required", "Observation.subject")}, ()),
    ("bg-no-effective", glucose, _set("effectiveDateTime", _DELETE),
     {("required", "Observation.effective[x]")}, ()),
    ("bg-implausible-mg", lambda: glucose(1800, "mg/dL", "2339-0"), _KEEP,
     {("business-rule", "Observation.valueQuantity.value")},
     ("1800 mg/dL", "0.5–60 mmol/L")),
    ("bg-implausible-low", lambda: glucose(0.2), _KEEP,
     {("business-rule", "Observation.valueQuantity.value")}, ("0.2 mmol/L",)),
    ("bg-implausible-g", lambda: glucose(18, "g/L", "2345-7"), _KEEP,
     {("business-rule", "Observation.valueQuantity.value")}, ("18 g/L",)),
    # CGMSensorReading
    ("cgm-no-device", cgm_reading, _set("device", _DELETE),
     {("required", "Observation.device")}, ()),
    ("cgm-device-is-patient", cgm_reading, _set("device", {"reference": "Patient/p1"}),
     {("value", "Observation.device")}, ("Device",)),
    ("cgm-date-only", cgm_reading, _set("effectiveDateTime", "2024-03-05"),
     {("invariant", "Observation")}, ("cgm-4", "to the second")),
    ("cgm-period", cgm_reading,
     lambda r: r.update(effectivePeriod={"start": r.pop("effectiveDateTime")}),
     {("structure", "Observation.effectivePeriod")}, ("dateTime",)),
    ("cgm-mass-code-molar-unit", lambda: cgm_reading(7.9, "mmol/L", "99504-3"), _KEEP,
     {("invariant", "Observation")}, ("cgm-2", "mg/dL")),
    ("cgm-molar-code-mass-unit", lambda: cgm_reading(142, "mg/dL", "105272-9"), _KEEP,
     {("invariant", "Observation")}, ("cgm-3", "mmol/L")),
    ("cgm-not-a-cgm-code", lambda: cgm_reading(142, "mg/dL", "2339-0"), _KEEP,
     {("invariant", "Observation.code")}, ("cgm-6",)),
    ("cgm-implausible", lambda: cgm_reading(1800), _KEEP,
     {("business-rule", "Observation.valueQuantity.value")}, ("1800 mg/dL",)),
    # HbA1c
    ("hba1c-percent-code-ifcc-unit", lambda: hba1c(53, "mmol/mol", "4548-4"), _KEEP,
     {("invariant", "Observation")}, ("hba1c-2",)),
    ("hba1c-ifcc-code-percent-unit", lambda: hba1c(7.1, "%", "59261-8"), _KEEP,
     {("invariant", "Observation")}, ("hba1c-3",)),
    ("hba1c-implausible-percent", lambda: hba1c(25), _KEEP,
     {("business-rule", "Observation.valueQuantity.value")}, ("25 %", "3–20 %")),
    ("hba1c-implausible-ifcc", lambda: hba1c(250, "mmol/mol", "59261-8"), _KEEP,
     {("business-rule", "Observation.valueQuantity.value")}, ("250 mmol/mol", "9–195")),
    ("hba1c-glucose-code", hba1c, _set("code.coding.0.code", "2339-0"),
     {("code-invalid", "Observation.code.coding[0]")}, ("hba1c-codes",)),
    ("hba1c-unknown-ucum", lambda: hba1c(53, "mmol/mol", "59261-8"),
     _set("valueQuantity.code", "mmol/mole"),
     {("code-invalid", "Observation.valueQuantity.code"), ("invariant", "Observation")},
     ("mmol/mole",)),
    # DiabetesCondition
    ("condition-asthma", diabetes_condition, _set("code.coding.0.code", "J45.9"),
     {("code-invalid", "Condition.code")}, ("J45.9", "diabetes-conditions")),
    ("condition-no-code", diabetes_condition, _set("code", _DELETE),
     {("required", "Condition.code")}, ()),
    ("condition-no-verification", diabetes_condition, _set("verificationStatus", _DELETE),
     {("required", "Condition.verificationStatus")}, ()),
    ("condition-no-clinical-status", diabetes_condition, _set("clinicalStatus", _DELETE),
     {("required", "Condition.clinicalStatus")}, ()),
    ("condition-subject-group", diabetes_condition, _set("subject", GROUP),
     {("value", "Condition.subject")}, ("Patient",)),
    # DiabetesMedicationStatement
    ("medication-statin", lambda: medication_statement("C10AA05"), _KEEP,
     {("code-invalid", "MedicationStatement.medicationCodeableConcept")},
     ("C10AA05", "drugs-used-in-diabetes")),
    ("medication-reference", medication_statement,
     lambda r: r.update(medicationReference={"reference": "Medication/m1"})
     or r.pop("medicationCodeableConcept"),
     {("structure", "MedicationStatement.medicationReference")}, ("CodeableConcept",)),
    ("medication-two-atc-codings", medication_statement,
     lambda r: r["medicationCodeableConcept"]["coding"].append(
         {"system": "http://www.whocc.no/atc", "code": "A10BA"}),
     {("structure", "MedicationStatement.medicationCodeableConcept.coding")},
     ("slice atc", "at most 1")),
    ("medication-date-not-period", medication_statement,
     lambda r: r.update(effectiveDateTime="2023-01-10") or r.pop("effectivePeriod"),
     {("structure", "MedicationStatement.effectiveDateTime")}, ("Period",)),
    ("medication-period-without-start", medication_statement,
     _set("effectivePeriod", {"end": "2024-01-10"}),
     {("required", "MedicationStatement.effectivePeriod.start")}, ()),
    ("medication-no-effective", medication_statement, _set("effectivePeriod", _DELETE),
     {("required", "MedicationStatement.effective[x]")}, ()),
    ("medication-subject-group", medication_statement, _set("subject", GROUP),
     {("value", "MedicationStatement.subject")}, ()),
    # DiabetesPatient
    ("patient-two-ins", french_patient,
     lambda r: r["identifier"].append({"system": INS_SYSTEM, "value": VALID_CORSICAN_INS}),
     {("structure", "Patient.identifier")}, ("slice INS", "at most 1")),
    ("patient-ins-format", french_patient, _set("identifier.0.value", "18412751234"),
     {("invariant", "Patient.identifier[0].value")}, ("ins-1",)),
    ("patient-ins-key", french_patient, _set("identifier.0.value", VALID_INS[:-2] + "41"),
     {("invariant", "Patient.identifier[0].value")}, ("ins-2", "key")),
    ("patient-ins-without-value", french_patient, _set("identifier.0.value", _DELETE),
     {("required", "Patient.identifier[0].value")}, ()),
    ("patient-no-gender", french_patient, _set("gender", _DELETE),
     {("required", "Patient.gender")}, ()),
    ("patient-no-birth-date", french_patient, _set("birthDate", _DELETE),
     {("required", "Patient.birthDate")}, ()),
]


@pytest.mark.parametrize(
    ("make", "change", "expected", "words"),
    [case[1:] for case in BROKEN],
    ids=[case[0] for case in BROKEN],
)
def test_each_broken_rule_is_reported_exactly(
    validator: ProfileValidator,
    make: Callable[[], dict],
    change: Callable[[dict], None],
    expected: set,
    words: tuple[str, ...],
) -> None:
    resource = make()
    if change is not _KEEP:
        assert validator.validate(resource) == [], "the example must be valid before the change"
    change(resource)
    assert validate_structure(resource) == [], "the change must keep the base structure valid"
    found = errors(validator, resource)
    assert pairs(found) == expected, found
    text = " ".join(i.message for i in found)
    for word in words:
        assert word in text
    profile_name = resource["meta"]["profile"][0].rsplit("/", 1)[-1]
    assert all(i.message.startswith(f"{profile_name}: ") for i in found)


def test_string_value_is_the_wrong_type(validator: ProfileValidator) -> None:
    resource = glucose()
    del resource["valueQuantity"]
    resource["valueString"] = "HI"
    found = errors(validator, resource)
    assert ("structure", "Observation.valueString") in pairs(found)
    assert any("Quantity" in i.message for i in found)


def test_unit_consistency(validator: ProfileValidator) -> None:
    """The plausibility range is one physical range, whatever the unit."""
    assert validator.validate(glucose(10, "mmol/L")) == []
    assert validator.validate(glucose(180, "mg/dL", "2339-0")) == []
    refused = validator.validate(glucose(1800, "mg/dL", "2339-0"))
    assert [(i.code, i.expression) for i in refused] == [
        ("business-rule", "Observation.valueQuantity.value")
    ]
    assert "1800 mg/dL (99.91 mmol/L)" in refused[0].message
    assert "0.5–60 mmol/L (9.008–1081 mg/dL)" in refused[0].message


def test_every_problem_is_reported_at_once(validator: ProfileValidator) -> None:
    resource = glucose(1800, "mg/dL", "2339-0")
    resource["subject"] = GROUP
    del resource["effectiveDateTime"]
    resource["code"]["coding"][0]["code"] = "1234-5"
    assert pairs(errors(validator, resource)) == {
        ("business-rule", "Observation.valueQuantity.value"),
        ("value", "Observation.subject"),
        ("required", "Observation.effective[x]"),
        ("code-invalid", "Observation.code.coding[0]"),
    }


def test_extensible_binding_gives_a_warning(validator: ProfileValidator) -> None:
    resource = medication_statement()
    resource["reasonCode"] = [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10",
                                           "code": "E28.2"}]}]
    found = validator.validate(resource)
    assert [(i.severity, i.code, i.expression) for i in found] == [
        ("warning", "code-invalid", "MedicationStatement.reasonCode[0]")
    ]
    assert "extensible" in found[0].message


def test_profiles_argument_replaces_the_claims(validator: ProfileValidator) -> None:
    resource = glucose()
    del resource["meta"]
    assert validator.validate(resource) == []
    assert pairs(validator.validate(resource, [HBA1C])) == {
        ("code-invalid", "Observation.code.coding[0]")
    }
    versioned = validator.validate(resource, [f"{BLOOD_GLUCOSE}|0.1.0"])
    assert versioned == []


def test_unknown_claimed_profile_is_an_error(validator: ProfileValidator) -> None:
    resource = glucose()
    resource["meta"]["profile"].append("https://example.org/StructureDefinition/Nope")
    found = validator.validate(resource)
    assert [(i.severity, i.code, i.expression) for i in found] == [
        ("error", "structure", "Observation.meta.profile")
    ]
    assert "https://example.org/StructureDefinition/Nope" in found[0].message


def test_profile_of_another_type_is_an_error(validator: ProfileValidator) -> None:
    patient = french_patient()
    found = validator.validate(patient, [CGM_SENSOR_READING])
    assert pairs(found) == {("structure", "Patient.meta.profile")}
    assert "applies to Observation" in found[0].message


def test_contained_patient_reference_is_resolved(validator: ProfileValidator) -> None:
    resource = glucose()
    resource["contained"] = [{"resourceType": "Group", "id": "g", "type": "person",
                              "actual": True}]
    resource["subject"] = {"reference": "#g"}
    assert pairs(errors(validator, resource)) == {("value", "Observation.subject")}
    resource["subject"] = {"reference": "urn:uuid:6f1c5a0e-3c5b-4d55-9d4e-8a2f0f1e2d3c"}
    assert errors(validator, resource) == []  # a bundle-local reference cannot be typed here
    resource["subject"] = {"reference": "https://other.example/fhir/Patient/9/_history/2"}
    assert errors(validator, resource) == []


# -- the validator is generic: a made-up profile exercises the same machinery ------------------

CUSTOM = {
    "resourceType": "StructureDefinition",
    "url": "https://example.org/StructureDefinition/StrictDevice",
    "name": "StrictDevice",
    "status": "draft",
    "kind": "resource",
    "abstract": False,
    "type": "Device",
    "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Device",
    "derivation": "constraint",
    "differential": {
        "element": [
            {"id": "Device.status", "path": "Device.status", "min": 1, "fixedCode": "active"},
            {"id": "Device.identifier", "path": "Device.identifier", "slicing": {
                "discriminator": [{"type": "value", "path": "system"}], "rules": "closed"}},
            {"id": "Device.identifier:serial", "path": "Device.identifier", "sliceName": "serial",
             "min": 1, "max": "1"},
            {"id": "Device.identifier:serial.system", "path": "Device.identifier.system",
             "fixedUri": "urn:example:serial"},
            {"id": "Device.type", "path": "Device.type", "binding": {
                "strength": "required", "valueSet": "https://example.org/ValueSet/unknown"}},
            {"id": "Device.note", "path": "Device.note", "max": "0"},
        ]
    },
}


def test_generic_rules_on_a_custom_profile() -> None:
    validator = ProfileValidator(TerminologyService(), [copy.deepcopy(CUSTOM)])
    assert validator.profile_urls == [CUSTOM["url"]]
    device = {
        "resourceType": "Device",
        "meta": {"profile": [CUSTOM["url"]]},
        "status": "inactive",
        "identifier": [{"system": "urn:example:lot", "value": "L1"}],
        "type": {"coding": [{"system": "urn:example", "code": "x"}]},
        "note": [{"text": "no notes allowed"}],
    }
    found = validator.validate(device)
    assert {(i.severity, i.code, i.expression) for i in found} == {
        ("error", "value", "Device.status"),
        ("error", "structure", "Device.identifier[0]"),  # closed slicing: no slice matches
        ("error", "required", "Device.identifier"),  # the serial slice is missing
        ("warning", "code-invalid", "Device.type"),  # unknown ValueSet: cannot check
        ("error", "structure", "Device.note"),
    }
    device.update(status="active", identifier=[{"system": "urn:example:serial", "value": "1"}])
    del device["note"]
    assert [i.severity for i in validator.validate(device)] == ["warning"]


def test_invariant_outside_the_subset_falls_back_to_fhirpathpy() -> None:
    definition = copy.deepcopy(CUSTOM)
    definition["differential"]["element"] = [
        {"id": "Device", "path": "Device", "constraint": [
            # `repeat` is outside the compiled subset: fhirpathpy evaluates it
            {"key": "dev-1", "severity": "error", "human": "A device needs a serial number",
             "expression": "repeat(serialNumber).exists()"},
            # fhirpathpy cannot evaluate htmlChecks(): a warning, not a crash
            {"key": "dev-2", "severity": "error", "human": "unevaluable",
             "expression": "htmlChecks()"},
        ]},
    ]
    validator = ProfileValidator(TerminologyService(), [definition])
    device = {"resourceType": "Device", "meta": {"profile": [CUSTOM["url"]]}}
    found = {(i.severity, i.code, i.expression, i.message.split(":")[1].strip()[:14])
             for i in validator.validate(device)}
    assert found == {
        ("error", "invariant", "Device", "A device needs"),
        ("warning", "invariant", "Device", "rule dev-2 cou"),
    }
    device["serialNumber"] = "SN-1"
    assert [i.severity for i in validator.validate(device)] == ["warning"]


def test_unusable_definitions_are_named() -> None:
    broken = copy.deepcopy(CUSTOM)
    broken["differential"]["element"].append({"id": "Observation.code", "path": "Observation.code"})
    assert validate_definitions([CUSTOM]) == []
    problems = validate_definitions([broken, {"resourceType": "Patient"}])
    assert len(problems) == 2
    assert "Observation.code is not on Device" in problems[0]
    with pytest.raises(ProfileDefinitionError):
        ProfileValidator(TerminologyService(), [broken])


def test_unit_that_does_not_match_the_code_kind_is_a_warning(validator: ProfileValidator) -> None:
    """2339-0 is Glucose [Mass/volume]: in mmol/L the value is accepted, with a warning."""
    molar_unit = glucose(6.3, "mmol/L", "2339-0")
    found = validator.validate(molar_unit)
    assert [(i.severity, i.code, i.expression) for i in found] == [
        ("warning", "invariant", "Observation")
    ]
    assert "bg-3" in found[0].message
    mass_unit = glucose(113, "mg/dL", "15074-8")
    assert ["bg-4" in i.message for i in validator.validate(mass_unit)] == [True]


def test_lengths_and_bounds_on_a_custom_profile() -> None:
    definition = {
        "resourceType": "StructureDefinition",
        "url": "https://example.org/StructureDefinition/Bounded",
        "name": "Bounded",
        "status": "draft",
        "kind": "resource",
        "abstract": False,
        "type": "Observation",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Observation",
        "derivation": "constraint",
        "differential": {"element": [
            # no ids (older tooling): placed by path
            {"path": "Observation.code.text", "maxLength": 10},
            {"path": "Observation.effective[x]", "minValueDateTime": "2000-01-01"},
            {"path": "Observation.value[x]", "maxValueQuantity": {
                "value": 500, "system": "http://unitsofmeasure.org", "code": "mg/dL"}},
        ]},
    }
    validator = ProfileValidator(TerminologyService(), [definition])
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "blood glucose"},
        "effectiveDateTime": "1999-12-31T23:00:00Z",
        "valueQuantity": {"value": 6, "system": "http://unitsofmeasure.org", "code": "g/L"},
    }
    found = validator.validate(observation, [definition["url"]])
    assert pairs(found) == {
        ("value", "Observation.code.text"),
        ("value", "Observation.effectiveDateTime"),
        ("value", "Observation.valueQuantity"),
    }
    assert any("at most 500 mg/dL (found 600" in i.message for i in found)
    observation.update(code={"text": "glucose"}, effectiveDateTime="2024-01-01")
    observation["valueQuantity"]["value"] = 4.5
    assert validator.validate(observation, [definition["url"]]) == []
