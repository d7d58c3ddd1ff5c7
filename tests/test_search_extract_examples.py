"""Index extraction against official R4 examples (tests/data/fhir, CC0) with exact entries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fhir_server.search.extract import IndexExtractor
from fhir_server.search.registry import SearchParamRegistry
from fhir_server.search.types import (
    DATE_MAX,
    CompositeEntry,
    DateEntry,
    QuantityEntry,
    ReferenceEntry,
    StringEntry,
    TokenEntry,
)

DATA = Path(__file__).parent / "data" / "fhir" / "r4-examples"
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"


def identity_mmol(value, system, code, resource):
    """Test canonicaliser: mmol/L is already canonical, nothing else converts."""
    return [(value, "mmol/L")] if (system, code) == (UCUM, "mmol/L") else []


@pytest.fixture(scope="module")
def extractor() -> IndexExtractor:
    return IndexExtractor(SearchParamRegistry.default(), canonicalize=identity_mmol)


def load(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text(encoding="utf-8"))


def by_param(entries, *params):
    return [entry for entry in entries if entry.param in params]


def test_glucose_observation_f001(extractor):
    entries = extractor.extract(load("Observation-f001"))
    code = TokenEntry("code", LOINC, "15074-8", "glucose [moles/volume] in blood")
    value = QuantityEntry("value-quantity", 6.3, UCUM, "mmol/L", "mmol/l", 6.3, "mmol/L")
    combo_code = code._replace(param="combo-code")
    combo_value = value._replace(param="combo-value-quantity")
    patient = ReferenceEntry("patient", "Patient", "f001", None, None, None)
    assert entries == [
        TokenEntry("_id", None, "f001", None),
        code,
        # effectivePeriod 2013-04-02T09:30:10+01:00 with no end: open to DATE_MAX
        DateEntry("date", 1364891410.0, DATE_MAX),
        TokenEntry(
            "identifier", "http://www.bmc.nl/zorgportal/identifiers/observations", "6323", None
        ),
        patient,
        combo_code,
        combo_value,
        ReferenceEntry("performer", "Practitioner", "f005", None, None, None),
        TokenEntry("status", None, "final", None),
        patient._replace(param="subject"),
        value,
        CompositeEntry("code-value-quantity", (code, value)),
        CompositeEntry("combo-code-value-quantity", (combo_code, combo_value)),
    ]


def test_blood_pressure_components(extractor):
    entries = extractor.extract(load("Observation-blood-pressure"))
    systolic = [
        TokenEntry("component-code", LOINC, "8480-6", "systolic blood pressure"),
        TokenEntry("component-code", SNOMED, "271649006", "systolic blood pressure"),
        TokenEntry(
            "component-code",
            "http://acme.org/devices/clinical-codes",
            "bp-s",
            "systolic blood pressure",
        ),
    ]
    diastolic = TokenEntry("component-code", LOINC, "8462-4", "diastolic blood pressure")
    systolic_value = QuantityEntry(
        "component-value-quantity", 107.0, UCUM, "mm[Hg]", "mmHg", None, None
    )
    diastolic_value = systolic_value._replace(value=60.0)
    assert by_param(entries, "component-code") == [*systolic, diastolic]
    assert by_param(entries, "component-value-quantity") == [systolic_value, diastolic_value]
    # one composite per (coding, value) of the same component, never across components
    assert by_param(entries, "component-code-value-quantity") == [
        CompositeEntry("component-code-value-quantity", (code, systolic_value)) for code in systolic
    ] + [CompositeEntry("component-code-value-quantity", (diastolic, diastolic_value))]
    # combo-* reads `Observation | Observation.component`: here only the components qualify
    combo = by_param(entries, "combo-code-value-quantity")
    assert [(entry.parts[0].code, entry.parts[1].value) for entry in combo] == [
        ("8480-6", 107.0),
        ("271649006", 107.0),
        ("bp-s", 107.0),
        ("8462-4", 60.0),
    ]
    assert {entry.parts[0].param for entry in combo} == {"combo-code"}
    assert {entry.parts[1].param for entry in combo} == {"combo-value-quantity"}
    # the panel itself has no value: no code-value-quantity, but its code is indexed
    assert by_param(entries, "code-value-quantity") == []
    assert by_param(entries, "code") == [
        TokenEntry("code", LOINC, "85354-9", "blood pressure panel with all children optional"),
        TokenEntry("code", None, None, "blood pressure systolic & diastolic"),
    ]
    assert by_param(entries, "based-on") == [
        ReferenceEntry("based-on", None, None, None, "https://acme.org/identifiers", "1234")
    ]
    assert by_param(entries, "date") == [DateEntry("date", 1347840000.0, 1347926400.0)]


def test_condition_f201(extractor):
    entries = extractor.extract(load("Condition-f201"))
    subject = ReferenceEntry("subject", "Patient", "f201", None, None, None)
    assert entries == [
        TokenEntry("_id", None, "f201", None),
        TokenEntry("code", SNOMED, "386661006", "fever"),
        TokenEntry("identifier", None, "12345", None),
        subject._replace(param="patient"),
        StringEntry("abatement-string", "around april 9, 2013", "around April 9, 2013"),
        ReferenceEntry("asserter", "Practitioner", "f201", None, None, None),
        TokenEntry("body-site", SNOMED, "38266002", "entire body as a whole"),
        TokenEntry("category", SNOMED, "55607006", "problem"),
        TokenEntry(
            "category",
            "http://terminology.hl7.org/CodeSystem/condition-category",
            "problem-list-item",
            None,
        ),
        TokenEntry(
            "clinical-status",
            "http://terminology.hl7.org/CodeSystem/condition-clinical",
            "resolved",
            None,
        ),
        ReferenceEntry("encounter", "Encounter", "f201", None, None, None),
        TokenEntry("evidence", SNOMED, "258710007", "degrees c"),
        ReferenceEntry("evidence-detail", "Observation", "f202", None, None, None),
        DateEntry("onset-date", 1364860800.0, 1364947200.0),  # 2013-04-02, the whole day
        DateEntry("recorded-date", 1365033600.0, 1365120000.0),
        TokenEntry("severity", SNOMED, "255604002", "mild"),
        subject,
        TokenEntry(
            "verification-status",
            "http://terminology.hl7.org/CodeSystem/condition-ver-status",
            "confirmed",
            None,
        ),
    ]


def test_patient_f001(extractor):
    entries = extractor.extract(load("Patient-f001"))
    assert by_param(entries, "name") == [
        StringEntry("name", "van de heuvel", "van de Heuvel"),
        StringEntry("name", "pieter", "Pieter"),
        StringEntry("name", "msc", "MSc"),
    ]
    assert by_param(entries, "family", "given") == [
        StringEntry("family", "van de heuvel", "van de Heuvel"),
        StringEntry("given", "pieter", "Pieter"),
    ]
    assert by_param(entries, "identifier") == [
        TokenEntry("identifier", "urn:oid:2.16.840.1.113883.2.4.6.3", "738472983", None),
        TokenEntry("identifier", "urn:oid:2.16.840.1.113883.2.4.6.3", None, None),
    ]
    assert by_param(entries, "telecom", "phone", "email") == [
        TokenEntry("email", None, "p.heuvel@gmail.com", None),
        TokenEntry("phone", None, "0648352638", None),
        TokenEntry("telecom", None, "0648352638", None),
        TokenEntry("telecom", None, "p.heuvel@gmail.com", None),
    ]
    assert by_param(entries, "birthdate") == [
        DateEntry("birthdate", -792806400.0, -792720000.0)  # 1944-11-17
    ]
    assert by_param(entries, "address") == [
        StringEntry("address", "van egmondkade 23", "Van Egmondkade 23"),
        StringEntry("address", "amsterdam", "Amsterdam"),
        StringEntry("address", "1024 rj", "1024 RJ"),
        StringEntry("address", "nld", "NLD"),
    ]
    assert by_param(entries, "deceased", "gender", "active") == [
        TokenEntry("active", None, "true", None),
        TokenEntry("deceased", None, "false", None),  # deceasedBoolean false
        TokenEntry("gender", None, "male", None),
    ]
    assert by_param(entries, "organization") == [
        ReferenceEntry("organization", "Organization", "f001", None, None, None)
    ]
    assert by_param(entries, "language") == [
        TokenEntry("language", "urn:ietf:bcp:47", "nl", "dutch"),
        TokenEntry("language", None, None, "nederlands"),  # CodeableConcept.text for :text
    ]


def test_patient_example_names_and_link(extractor):
    entries = extractor.extract(load("Patient-example"))
    assert by_param(entries, "family") == [
        StringEntry("family", "chalmers", "Chalmers"),
        StringEntry("family", "windsor", "Windsor"),
    ]
    assert by_param(entries, "given") == [
        StringEntry("given", "peter", "Peter"),
        StringEntry("given", "james", "James"),
        StringEntry("given", "jim", "Jim"),
    ]
    assert by_param(entries, "birthdate") == [DateEntry("birthdate", 157161600.0, 157248000.0)]
    assert by_param(entries, "identifier") == [
        TokenEntry("identifier", "urn:oid:1.2.36.146.595.217.0.1", "12345", None)
    ]


@pytest.mark.parametrize("name", sorted(path.stem for path in DATA.glob("*-*.json")))
def test_every_example_extracts_only_known_params(extractor, name):
    resource = load(name)
    resources = (
        [entry["resource"] for entry in resource["entry"]]
        if resource["resourceType"] == "Bundle"
        else [resource]
    )
    registry = extractor.registry
    for item in resources:
        entries = extractor.extract(item)
        known = registry.for_type(item["resourceType"])
        assert entries, item["resourceType"]
        assert {entry.param for entry in entries} <= set(known)
        assert TokenEntry("_id", None, item["id"], None) in entries
        assert len(entries) == len(set(entries))  # no duplicates


def test_imaging_study_example(extractor):
    entries = extractor.extract(load("ImagingStudy-example"))
    dicom = "http://dicom.nema.org/resources/ontology/DCM"
    assert by_param(entries, "modality", "started", "series", "instance", "patient") == [
        ReferenceEntry("patient", "Patient", "dicom", None, None, None),
        TokenEntry("instance", None, "2.16.124.113543.6003.189642796.63084.16748.2599092903", None),
        TokenEntry("modality", dicom, "CT", None),
        TokenEntry("series", None, "2.16.124.113543.6003.2588828330.45298.17418.2723805630", None),
        DateEntry("started", 1293868880.0, 1293868881.0),  # 2011-01-01T11:01:20+03:00
    ]


def test_medication_statement_and_request_examples(extractor):
    statement = extractor.extract(load("MedicationStatement-example001"))
    assert by_param(statement, "effective", "source", "category") == [
        TokenEntry(
            "category",
            "http://terminology.hl7.org/CodeSystem/medication-statement-category",
            "inpatient",
            "inpatient",
        ),
        DateEntry("effective", 1421971200.0, 1422057600.0),  # 2015-01-23
        ReferenceEntry("source", "Patient", "pat1", None, None, None),
    ]
    request = extractor.extract(load("MedicationRequest-medrx0301"))
    # medicationReference points at a contained Medication ("#med0302"): not indexed
    assert by_param(request, "medication", "code") == []
    assert by_param(request, "authoredon", "intent") == [
        DateEntry("authoredon", 1421280000.0, 1421366400.0),
        TokenEntry("intent", None, "order", None),
    ]
