"""Index extraction on hand-written edge cases: dates, accents, codings, identifiers,
references of every form, quantities with a canonicaliser, odd or missing data."""

from __future__ import annotations

import pytest

from fhir_server.search.extract import CURRENCY_SYSTEM, IndexExtractor
from fhir_server.search.registry import SearchParamRegistry
from fhir_server.search.types import (
    DATE_MAX,
    DATE_MIN,
    CompositeEntry,
    DateEntry,
    NumberEntry,
    QuantityEntry,
    ReferenceEntry,
    StringEntry,
    TokenEntry,
    UriEntry,
)

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
JAN_2024 = 1704067200.0  # 2024-01-01T00:00:00Z
MAR_2024 = 1709251200.0  # 2024-03-01T00:00:00Z
MAR_5_2024 = 1709596800.0  # 2024-03-05T00:00:00Z


def glucose_canonical(value, system, code, resource):
    """Test canonicaliser: glucose to mmol/L (1 mmol/L = 18 mg/dL here, to keep floats exact),
    and grams to both g and mg to exercise several canonical forms."""
    if system != UCUM:
        return []
    if code == "mg/dL":
        return [(value / 18, "mmol/L")]
    if code == "mmol/L":
        return [(value, "mmol/L")]
    if code == "g":
        return [(value, "g"), (value * 1000, "mg")]
    if code == "boom":
        raise RuntimeError("converter bug")
    return []


@pytest.fixture(scope="module")
def extractor() -> IndexExtractor:
    return IndexExtractor(
        SearchParamRegistry.default(),
        canonicalize=glucose_canonical,
        local_bases=["https://diatabase.example/fhir/"],
    )


def entries_of(extractor, resource, *params):
    return [entry for entry in extractor.extract(resource) if entry.param in params]


def observation(**fields) -> dict:
    return {"resourceType": "Observation", "id": "o1", "status": "final", **fields}


# -- dates ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("effective", "expected"),
    [
        ({"effectiveDateTime": "2024"}, (JAN_2024, 1735689600.0)),
        ({"effectiveDateTime": "2024-03"}, (MAR_2024, 1711929600.0)),
        ({"effectiveDateTime": "2024-03-05"}, (MAR_5_2024, MAR_5_2024 + 86400)),
        # no time zone: UTC
        ({"effectiveDateTime": "2024-03-05T10:00:00"}, (MAR_5_2024 + 36000, MAR_5_2024 + 36001)),
        ({"effectiveDateTime": "2024-03-05T10:00:00Z"}, (MAR_5_2024 + 36000, MAR_5_2024 + 36001)),
        # +02:00 is two hours earlier in UTC than the same wall clock in Z
        (
            {"effectiveDateTime": "2024-03-05T10:00:00+02:00"},
            (MAR_5_2024 + 28800, MAR_5_2024 + 28801),
        ),
        (
            {"effectiveDateTime": "2024-03-05T01:00:00-05:30"},
            (MAR_5_2024 + 23400, MAR_5_2024 + 23401),
        ),
        (
            {"effectiveInstant": "2024-03-05T10:00:00.250Z"},
            (MAR_5_2024 + 36000.25, MAR_5_2024 + 36000.251),
        ),
        ({"effectivePeriod": {"start": "2024-03", "end": "2024-03-05"}}, (MAR_2024, 1709683200.0)),
        ({"effectivePeriod": {"start": "2024-03-05"}}, (MAR_5_2024, DATE_MAX)),
        ({"effectivePeriod": {"end": "2024"}}, (DATE_MIN, 1735689600.0)),
        (
            {"effectiveTiming": {"event": ["2024-03-05", "2024-01-01T00:00:00Z", "2024-03"]}},
            (JAN_2024, 1711929600.0),
        ),
    ],
)
def test_dates_are_periods_at_their_precision(extractor, effective, expected):
    assert entries_of(extractor, observation(**effective), "date") == [DateEntry("date", *expected)]


@pytest.mark.parametrize(
    "effective",
    [
        {"effectiveDateTime": "2023-02-29"},
        {"effectiveDateTime": "2024-13"},
        {"effectiveDateTime": "24-03-05"},
        {"effectiveDateTime": "2024-03-05T25:00:00Z"},
        {"effectiveDateTime": "2024-03-05T10:00:00+15:00"},
        {"effectiveDateTime": "yesterday"},
        {"effectiveDateTime": ""},
        {"effectiveDateTime": 20240305},
        {"effectivePeriod": {"start": "2024-03-05", "end": "2024-03-01"}},
        {"effectivePeriod": {"start": "not a date"}},
        {"effectivePeriod": {}},
        {"effectivePeriod": "2024"},
        {"effectiveTiming": {"event": ["soon"]}},
    ],
)
def test_invalid_dates_give_no_entry(extractor, effective):
    resource = observation(**effective)
    assert entries_of(extractor, resource, "date") == []
    assert TokenEntry("status", None, "final", None) in extractor.extract(resource)


def test_last_updated_and_meta(extractor):
    resource = observation(
        meta={
            "lastUpdated": "2024-03-05T10:00:00.5+01:00",
            "profile": ["https://diatabase.org/fhir/StructureDefinition/BloodGlucose"],
            "source": "urn:device:meter-42",
            "tag": [{"system": "urn:tags", "code": "cgm", "display": "CGM"}],
            "security": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                    "code": "R",
                }
            ],
        }
    )
    assert entries_of(
        extractor, resource, "_lastUpdated", "_profile", "_source", "_tag", "_security"
    ) == [
        DateEntry("_lastUpdated", MAR_5_2024 + 32400.5, MAR_5_2024 + 32400.6),
        UriEntry("_profile", "https://diatabase.org/fhir/StructureDefinition/BloodGlucose"),
        TokenEntry(
            "_security", "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "R", None
        ),
        UriEntry("_source", "urn:device:meter-42"),
        TokenEntry("_tag", "urn:tags", "cgm", "cgm"),
    ]


# -- strings and tokens ----------------------------------------------------------------------


def test_accents_case_and_spaces_are_normalised(extractor):
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "name": [
            {
                "family": "Lefèvre-Dupré",
                "given": ["Hélène", "  Marie   Ève "],
                "prefix": ["Mme"],
                "text": "Hélène LEFÈVRE",
            }
        ],
        "address": [
            {
                "line": ["12 rue de l'Église"],
                "city": "Saint-Étienne",
                "postalCode": "42000",
                "country": "FR",
            }
        ],
    }
    assert entries_of(extractor, patient, "name") == [
        StringEntry("name", "lefevre-dupre", "Lefèvre-Dupré"),
        StringEntry("name", "helene", "Hélène"),
        StringEntry("name", "marie eve", "  Marie   Ève "),
        StringEntry("name", "mme", "Mme"),
        StringEntry("name", "helene lefevre", "Hélène LEFÈVRE"),
    ]
    assert entries_of(extractor, patient, "address-city", "address") == [
        StringEntry("address", "12 rue de l'eglise", "12 rue de l'Église"),
        StringEntry("address", "saint-etienne", "Saint-Étienne"),
        StringEntry("address", "42000", "42000"),
        StringEntry("address", "fr", "FR"),
        StringEntry("address-city", "saint-etienne", "Saint-Étienne"),
    ]


def test_multiple_codings_and_text(extractor):
    resource = observation(
        code={
            "coding": [
                {"system": LOINC, "code": "2339-0", "display": "Glucose [Mass/volume] in Blood"},
                {"system": "urn:local", "code": "GLY"},
                {"display": "Glycémie"},
                {},
                "not a coding",
            ],
            "text": "Glycémie capillaire",
        }
    )
    assert entries_of(extractor, resource, "code") == [
        TokenEntry("code", LOINC, "2339-0", "glucose [mass/volume] in blood"),
        TokenEntry("code", "urn:local", "GLY", "glycemie capillaire"),  # display from text
        TokenEntry("code", None, None, "glycemie"),
        # CodeableConcept.text is already searchable through the GLY coding: no extra entry
    ]


def test_identifiers(extractor):
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [
            {
                "system": "urn:oid:1.2.250.1.213.1.4.10",
                "value": "279035121518989",
                "type": {"text": "INS (test)"},
            },
            {"value": "local-42"},
            {"system": "urn:only-system"},
            {"type": {"text": "nothing else"}},
        ],
        "telecom": [
            {"system": "phone", "value": "+33 6 12 34 56 78"},
            {"system": "email", "value": "helene@example.org"},
            {"system": "phone"},
        ],
    }
    assert entries_of(extractor, patient, "identifier") == [
        TokenEntry("identifier", "urn:oid:1.2.250.1.213.1.4.10", "279035121518989", "ins (test)"),
        TokenEntry("identifier", None, "local-42", None),
        TokenEntry("identifier", "urn:only-system", None, None),
    ]
    assert entries_of(extractor, patient, "phone", "email") == [
        TokenEntry("email", None, "helene@example.org", None),
        TokenEntry("phone", None, "+33 6 12 34 56 78", None),
    ]


def test_booleans_and_codes(extractor):
    patient = {"resourceType": "Patient", "id": "p1", "active": False, "gender": "female"}
    assert entries_of(extractor, patient, "active", "gender", "deceased") == [
        TokenEntry("active", None, "false", None),
        TokenEntry("deceased", None, "false", None),  # no deceased[x]: exists() is false
        TokenEntry("gender", None, "female", None),
    ]
    dead = {"resourceType": "Patient", "id": "p2", "deceasedDateTime": "2020-05"}
    assert entries_of(extractor, dead, "deceased", "death-date") == [
        DateEntry("death-date", 1588291200.0, 1590969600.0),
        TokenEntry("deceased", None, "true", None),
    ]


# -- references ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        (
            {"reference": "Patient/123"},
            ReferenceEntry("subject", "Patient", "123", None, None, None),
        ),
        (
            {"reference": "Patient/123/_history/4"},
            ReferenceEntry("subject", "Patient", "123", None, None, None),
        ),
        (
            {"reference": "https://diatabase.example/fhir/Patient/123"},
            ReferenceEntry(
                "subject",
                "Patient",
                "123",
                "https://diatabase.example/fhir/Patient/123",
                None,
                None,
            ),
        ),
        (  # a foreign server's Patient/123 is not our Patient/123: no id
            {"reference": "http://other.example/fhir/Patient/123"},
            ReferenceEntry(
                "subject", "Patient", None, "http://other.example/fhir/Patient/123", None, None
            ),
        ),
        (
            {"reference": "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0", "type": "Patient"},
            ReferenceEntry(
                "subject",
                "Patient",
                None,
                "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0",
                None,
                None,
            ),
        ),
        (
            {"identifier": {"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "2790351215"}},
            ReferenceEntry(
                "subject", None, None, None, "urn:oid:1.2.250.1.213.1.4.10", "2790351215"
            ),
        ),
        (
            {
                "reference": "Group/g1",
                "identifier": {"system": "urn:groups", "value": "G1"},
            },
            ReferenceEntry("subject", "Group", "g1", None, "urn:groups", "G1"),
        ),
    ],
)
def test_reference_forms(extractor, subject, expected):
    assert entries_of(extractor, observation(subject=subject), "subject") == [expected]


@pytest.mark.parametrize(
    "subject",
    [{"reference": "#contained-patient"}, {"display": "Hélène"}, {"reference": ""}, "Patient/1"],
)
def test_references_without_a_target_give_nothing(extractor, subject):
    assert entries_of(extractor, observation(subject=subject), "subject", "patient") == []


def test_patient_param_keeps_only_patient_references(extractor):
    to_patient = observation(subject={"reference": "Patient/p1"})
    to_group = observation(subject={"reference": "Group/g1"})
    assert entries_of(extractor, to_patient, "patient") == [
        ReferenceEntry("patient", "Patient", "p1", None, None, None)
    ]
    assert entries_of(extractor, to_group, "patient") == []
    assert entries_of(extractor, to_group, "subject") == [
        ReferenceEntry("subject", "Group", "g1", None, None, None)
    ]


def test_canonical_reference_params(extractor):
    response = {
        "resourceType": "QuestionnaireResponse",
        "id": "qr1",
        "status": "completed",
        "questionnaire": "https://diatabase.org/fhir/Questionnaire/hypo|1.0",
    }
    assert entries_of(extractor, response, "questionnaire") == [
        ReferenceEntry(
            "questionnaire",
            None,
            None,
            "https://diatabase.org/fhir/Questionnaire/hypo|1.0",
            None,
            None,
        )
    ]


def test_medication_choice_reference_or_code(extractor):
    by_reference = {
        "resourceType": "MedicationRequest",
        "id": "m1",
        "medicationReference": {"reference": "Medication/metformin"},
    }
    by_code = {
        "resourceType": "MedicationRequest",
        "id": "m2",
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.whocc.no/atc", "code": "A10BA02"}]
        },
    }
    assert entries_of(extractor, by_reference, "medication", "code") == [
        ReferenceEntry("medication", "Medication", "metformin", None, None, None)
    ]
    assert entries_of(extractor, by_code, "medication", "code") == [
        TokenEntry("code", "http://www.whocc.no/atc", "A10BA02", None)
    ]


# -- quantities and numbers ------------------------------------------------------------------


def test_quantity_with_canonical_form(extractor):
    resource = observation(
        code={"coding": [{"system": LOINC, "code": "2339-0"}]},
        valueQuantity={"value": 180, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"},
    )
    value = QuantityEntry("value-quantity", 180.0, UCUM, "mg/dL", "mg/dL", 10.0, "mmol/L")
    assert entries_of(extractor, resource, "value-quantity") == [value]
    assert entries_of(extractor, resource, "code-value-quantity") == [
        CompositeEntry("code-value-quantity", (TokenEntry("code", LOINC, "2339-0", None), value))
    ]


def test_quantity_with_several_canonical_forms_or_none(extractor):
    grams = observation(valueQuantity={"value": 2, "system": UCUM, "code": "g"})
    assert entries_of(extractor, grams, "value-quantity") == [
        QuantityEntry("value-quantity", 2.0, UCUM, "g", None, 2.0, "g"),
        QuantityEntry("value-quantity", 2.0, UCUM, "g", None, 2000.0, "mg"),
    ]
    unknown = observation(valueQuantity={"value": 7.5, "unit": "%"})
    assert entries_of(extractor, unknown, "value-quantity") == [
        QuantityEntry("value-quantity", 7.5, None, None, "%", None, None)
    ]
    failing = observation(valueQuantity={"value": 1, "system": UCUM, "code": "boom"})
    assert entries_of(extractor, failing, "value-quantity") == [
        QuantityEntry("value-quantity", 1.0, UCUM, "boom", None, None, None)
    ]


@pytest.mark.parametrize(
    "value",
    [{"unit": "mg/dL"}, {"value": "12"}, {"value": True}, {"value": float("nan")}, "12 mg/dL"],
)
def test_quantity_without_a_number_gives_nothing(extractor, value):
    assert entries_of(extractor, observation(valueQuantity=value), "value-quantity") == []


def test_age_range_and_money():
    extractor = IndexExtractor(SearchParamRegistry.default())
    condition = {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p1"},
        "onsetAge": {"value": 42, "unit": "a", "system": UCUM, "code": "a"},
        "abatementRange": {"low": {"value": 50, "system": UCUM, "code": "a"}, "high": {}},
    }
    assert entries_of(extractor, condition, "onset-age", "abatement-age") == [
        QuantityEntry("abatement-age", 50.0, UCUM, "a", None, None, None),
        QuantityEntry("onset-age", 42.0, UCUM, "a", "a", None, None),
    ]
    claim = {
        "resourceType": "ChargeItem",
        "id": "ci1",
        "status": "billed",
        "subject": {"reference": "Patient/p1"},
        "priceOverride": {"value": 12.5, "currency": "EUR"},
    }
    assert entries_of(extractor, claim, "price-override") == [
        QuantityEntry("price-override", 12.5, CURRENCY_SYSTEM, "EUR", "EUR", None, None)
    ]


def test_numbers(extractor):
    risk = {
        "resourceType": "RiskAssessment",
        "id": "r1",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "prediction": [{"probabilityDecimal": 0.25}, {"probabilityDecimal": 1}, {}],
    }
    assert entries_of(extractor, risk, "probability") == [
        NumberEntry("probability", 0.25),
        NumberEntry("probability", 1.0),
    ]


# -- custom parameters, odd data, unknown types ----------------------------------------------


def test_custom_extension_parameter_is_extracted_once_added():
    registry = SearchParamRegistry.default()
    extractor = IndexExtractor(registry)
    url = "https://diatabase.org/fhir/StructureDefinition/glucose-context"
    resource = observation(
        extension=[
            {
                "url": url,
                "valueCodeableConcept": {"coding": [{"system": "urn:ctx", "code": "pre"}]},
            },
            {"url": "urn:other", "valueString": "ignored"},
        ]
    )
    assert entries_of(extractor, resource, "glucose-context") == []
    registry.add(
        {
            "resourceType": "SearchParameter",
            "url": "https://diatabase.org/fhir/SearchParameter/glucose-context",
            "code": "glucose-context",
            "base": ["Observation"],
            "type": "token",
            "expression": f"Observation.extension('{url}').value",
        }
    )
    assert entries_of(extractor, resource, "glucose-context") == [
        TokenEntry("glucose-context", "urn:ctx", "pre", None)
    ]


def test_missing_values_give_no_entries(extractor):
    assert extractor.extract({"resourceType": "Observation"}) == []
    assert extractor.extract({"resourceType": "Observation", "id": "o1"}) == [
        TokenEntry("_id", None, "o1", None)
    ]


@pytest.mark.parametrize(
    "resource",
    [
        None,
        [],
        "Observation",
        {},
        {"resourceType": 12},
        observation(code="not a concept", subject=[1, None, {"reference": 5}], category=[None]),
        observation(valueQuantity=[], effectiveDateTime=None, component=[{"code": 7}, None, 3]),
        observation(meta={"tag": "oops", "lastUpdated": 5, "profile": [None, 3]}),
        {"resourceType": "Patient", "name": [None, {"given": [None, 5]}, "Bob"], "birthDate": []},
    ],
)
def test_odd_data_never_raises(extractor, resource):
    entries = extractor.extract(resource)
    assert isinstance(entries, list)
    assert all(
        entry.param.startswith("_") or entry.param in ("status", "deceased") for entry in entries
    )


def test_unknown_resource_type_gives_only_resource_level_params(extractor):
    resource = {
        "resourceType": "DiabetesDiary",
        "id": "d1",
        "meta": {"tag": [{"system": "urn:tags", "code": "x"}], "lastUpdated": "2024"},
        "code": {"coding": [{"system": LOINC, "code": "2339-0"}]},
    }
    assert extractor.extract(resource) == [
        TokenEntry("_id", None, "d1", None),
        DateEntry("_lastUpdated", JAN_2024, 1735689600.0),
        TokenEntry("_tag", "urn:tags", "x", None),
    ]


# -- what the extractor remembers between resources -----------------------------------------


def test_same_top_level_keys_on_different_types_use_each_types_parameters(extractor) -> None:
    """Which parameters apply is remembered per type and key set: a Condition and an
    Observation with the same keys each get what a fresh extractor gives them."""
    fields = {"code": {"coding": [{"system": LOINC, "code": "2339-0"}]},
              "subject": {"reference": "Patient/p1"}, "category": [{"text": "lab"}]}
    condition = {"resourceType": "Condition", "id": "c1", **fields}
    obs = {"resourceType": "Observation", "id": "c1", **fields}
    expected = {}
    for resource in (condition, obs):
        fresh = IndexExtractor(SearchParamRegistry.default(), canonicalize=glucose_canonical)
        expected[resource["resourceType"]] = sorted(map(repr, fresh.extract(resource)))
    assert expected["Condition"] != expected["Observation"]
    for _ in range(2):
        for resource in (condition, obs):
            got = sorted(map(repr, extractor.extract(resource)))
            assert got == expected[resource["resourceType"]]


def test_remembered_references_keep_each_parameter_and_base(extractor) -> None:
    """The same reference text, parsed once, is labelled with each parameter that holds it;
    a foreign absolute reference never becomes a local id."""
    local = "https://diatabase.example/fhir/Patient/p7"
    foreign = "https://other.example/fhir/Patient/p7"
    for _ in range(2):
        found = entries_of(extractor, observation(subject={"reference": local}),
                           "subject", "patient")
        assert {(e.param, e.target_type, e.target_id) for e in found} == {
            ("subject", "Patient", "p7"), ("patient", "Patient", "p7")}
        found = entries_of(extractor, observation(subject={"reference": foreign}), "subject")
        assert [(e.target_type, e.target_id, e.url) for e in found] == [
            ("Patient", None, foreign)]


def test_elements_converted_before_give_the_same_entries_as_a_fresh_extractor(extractor) -> None:
    """Tokens and references are converted once per JSON content across resources: a repeat
    gets equal entries under its own parameter, a changed element (same dict, edited in
    place) gets its own, and key order or 1 / 1.0 / true never mix entries up."""
    code = {"coding": [{"system": LOINC, "code": "2339-0", "display": "Glucose Bld"}]}
    first = observation(code=code, subject={"reference": "Patient/p1"})
    second = observation(code=dict(code), subject={"reference": "Patient/p1"},
                         category=[dict(code)])
    for resource in (first, second, first):
        fresh = IndexExtractor(SearchParamRegistry.default(), canonicalize=glucose_canonical,
                               local_bases=["https://diatabase.example/fhir/"])
        assert sorted(map(repr, extractor.extract(resource))) == sorted(
            map(repr, fresh.extract(resource)))
    assert {e.param for e in entries_of(extractor, second, "category", "code")} == {
        "category", "code"}
    code["coding"][0]["code"] = "15074-8"  # edited in place after being remembered
    assert [e.code for e in entries_of(extractor, first, "code")] == ["15074-8"]
    odd = [{"system": "urn:x", "value": "1"}, {"value": "1", "system": "urn:x"},
           {"system": "urn:x", "value": "1", "period": {"start": "2024"}}]
    for identifier in odd:
        found = entries_of(extractor, observation(identifier=[identifier]), "identifier")
        assert [(e.system, e.code) for e in found] == [("urn:x", "1")]
