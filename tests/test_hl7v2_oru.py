"""ORU^R01 to DiagnosticReport + Observations, on our synthetic glucose / HbA1c messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from mappers.hl7v2 import MappingError, to_bundle
from mappers.hl7v2.datatypes import INS_TEST_SYSTEM

DATA = Path(__file__).parent / "data" / "hl7v2" / "diatabase"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
PROFILE = "https://diatabase.org/fhir/StructureDefinition/"


def resources(bundle: dict, resource_type: str) -> list[dict]:
    entries = bundle["entry"]
    return [e["resource"] for e in entries if e["resource"]["resourceType"] == resource_type]


def requests(bundle: dict) -> list[tuple]:
    return [
        (e["request"]["method"], e["request"]["url"], e["request"].get("ifNoneExist"))
        for e in bundle["entry"]
    ]


def loinc(observation: dict) -> str | None:
    return next((c["code"] for c in observation["code"].get("coding", [])
                 if c.get("system") == LOINC), None)


def interpretation_codes(observation: dict) -> list[str]:
    return [c["code"] for i in observation.get("interpretation", []) for c in i["coding"]]


@pytest.fixture(scope="module")
def lab() -> dict:
    return to_bundle((DATA / "glucose_hba1c_oru_r01_v251.hl7").read_bytes())


@pytest.fixture(scope="module")
def meter() -> dict:
    return to_bundle((DATA / "glucometer_lo_hi_sn_v23.hl7").read_bytes())


def test_patient_is_matched_on_the_ins(lab: dict) -> None:
    [patient] = resources(lab, "Patient")
    entry = lab["entry"][0]
    assert entry["request"] == {
        "method": "POST",
        "url": "Patient",
        "ifNoneExist": f"identifier={INS_TEST_SYSTEM}|1234567890123",
    }
    systems = [i["system"] for i in patient["identifier"]]
    assert systems == [INS_TEST_SYSTEM, "urn:oid:1.2.250.1.999.1.2"]
    assert patient["name"][0] == {"use": "official", "family": "TESTPATIENT",
                                  "given": ["Camille", "Marie"]}
    assert patient["birthDate"] == "1970-04-12" and patient["gender"] == "female"


def test_local_codes_with_loinc_alternates_get_loinc_and_profiles(lab: dict) -> None:
    observations = resources(lab, "Observation")
    by_loinc = {loinc(o): o for o in observations}
    assert set(by_loinc) == {"2345-7", "14749-6", "4548-4", "59261-8"}
    glucose = by_loinc["2345-7"]
    assert glucose["code"]["coding"][0] == {"code": "GLU", "display": "Glycémie à jeun"}
    assert glucose["valueQuantity"] == {"value": 126, "unit": "mg/dl", "system": UCUM,
                                        "code": "mg/dL"}
    assert glucose["meta"]["profile"] == [PROFILE + "BloodGlucose"]
    assert by_loinc["14749-6"]["valueQuantity"]["code"] == "mmol/L"
    assert by_loinc["14749-6"]["meta"]["profile"] == [PROFILE + "BloodGlucose"]
    assert by_loinc["4548-4"]["meta"]["profile"] == [PROFILE + "HbA1c"]
    assert by_loinc["4548-4"]["valueQuantity"]["code"] == "%"
    assert by_loinc["59261-8"]["meta"]["profile"] == [PROFILE + "HbA1c"]
    assert glucose["note"] == [{"text": "Prélèvement à jeun confirmé"}]
    assert glucose["effectiveDateTime"] == "2024-03-15T08:00:00+01:00"
    assert interpretation_codes(glucose) == ["H"]
    assert glucose["interpretation"][0]["coding"][0]["system"] == INTERPRETATION


def test_reference_ranges_of_the_lab_message(lab: dict) -> None:
    by_loinc = {loinc(o): o for o in resources(lab, "Observation")}
    underscore = by_loinc["14749-6"]["referenceRange"][0]
    assert (underscore["low"]["value"], underscore["high"]["value"]) == (3.9, 5.8)
    assert underscore["text"] == "3.9_5.8"
    below = by_loinc["59261-8"]["referenceRange"][0]
    assert below["high"]["value"] == 42 and "low" not in below


def test_report_groups_results_specimen_and_encounter(lab: dict) -> None:
    [report] = resources(lab, "DiagnosticReport")
    [specimen] = resources(lab, "Specimen")
    [encounter] = resources(lab, "Encounter")
    entries = {e["fullUrl"]: e for e in lab["entry"]}
    result_types = [entries[r["reference"]]["resource"]["resourceType"] for r in report["result"]]
    assert result_types == ["Observation"] * 4
    assert report["status"] == "final"
    assert report["issued"] == "2024-03-15T10:25:00+01:00"
    assert report["identifier"][0]["value"] == "LAB-99001"
    assert report["identifier"][1]["value"] == "CMD-7781"
    assert specimen["identifier"][0]["value"] == "SPEC-55501"
    assert specimen["collection"]["collectedDateTime"] == "2024-03-15T08:00:00+01:00"
    spec_ref = report["specimen"][0]["reference"]
    assert entries[spec_ref]["resource"] is specimen
    assert all(o["specimen"]["reference"] == spec_ref for o in resources(lab, "Observation"))
    assert encounter["identifier"][0]["value"] == "VN-2024-0042"
    assert encounter["class"]["code"] == "AMB"
    encounter_entry = next(e for e in lab["entry"] if e["resource"] is encounter)
    assert encounter_entry["request"]["ifNoneExist"].endswith("|VN-2024-0042")
    assert report["encounter"]["reference"] == encounter_entry["fullUrl"]


def test_observations_are_upserted_on_filler_number_and_set_id(lab: dict) -> None:
    urls = [u for m, u, _ in requests(lab) if u.startswith("Observation")]
    assert urls == [f"Observation?identifier=urn:id:LABO|LAB-99001-{n}" for n in range(1, 5)]
    assert all(m == "PUT" for m, u, _ in requests(lab) if u.startswith("Observation"))


def test_resending_a_message_gives_identical_conditional_requests() -> None:
    raw = (DATA / "glucose_hba1c_oru_r01_v251.hl7").read_bytes()
    first, second = to_bundle(raw), to_bundle(raw)
    assert requests(first) == requests(second)
    assert first == second  # fullUrls derive from the conditions: the whole Bundle repeats


def test_meter_lo_hi_readings(meter: dict) -> None:
    observations = {o["identifier"][0]["value"]: o for o in resources(meter, "Observation")}
    low, high = observations["POC-2024-001-1"], observations["POC-2024-001-2"]
    assert low["valueString"] == "LO" and "valueQuantity" not in low
    assert interpretation_codes(low) == ["LL", "<"]
    assert high["valueString"] == "HI" and interpretation_codes(high) == ["HH", ">"]
    # no quantity, so no BloodGlucose profile claimed
    assert "profile" not in low["meta"]


def test_meter_sn_comparators_ratio_range(meter: dict) -> None:
    observations = {o["identifier"][0]["value"]: o for o in resources(meter, "Observation")}
    below = observations["POC-2024-001-3"]["valueQuantity"]
    assert below == {"value": 20, "comparator": "<", "unit": "mg/dL", "system": UCUM,
                     "code": "mg/dL"}
    above = observations["POC-2024-001-4"]
    assert above["valueQuantity"]["comparator"] == ">"
    assert above["valueQuantity"]["value"] == 600
    assert above["status"] == "corrected"
    assert above["referenceRange"][0]["low"]["value"] == 70
    assert observations["POC-2024-001-3"]["meta"]["profile"] == [PROFILE + "BloodGlucose"]
    ratio = observations["POC-2024-001-7"]["valueRatio"]
    assert (ratio["numerator"]["value"], ratio["denominator"]["value"]) == (1, 128)
    value_range = observations["POC-2024-001-8"]["valueRange"]
    assert (value_range["low"]["value"], value_range["high"]["value"]) == (5.5, 7.2)
    assert value_range["low"]["code"] == "mmol/L"
    nm_below = observations["POC-2024-001-10"]
    assert nm_below["valueQuantity"]["comparator"] == "<"
    assert nm_below["status"] == "cancelled"


def test_meter_units_statuses_and_text(meter: dict) -> None:
    observations = {o["identifier"][0]["value"]: o for o in resources(meter, "Observation")}
    upper_case = observations["POC-2024-001-5"]
    assert upper_case["valueQuantity"]["code"] == "mg/dL"
    assert upper_case["status"] == "preliminary"
    assert upper_case["effectiveDateTime"] == "2024-03-16T15:00:00Z"
    grams = observations["POC-2024-001-6"]
    assert grams["valueQuantity"] == {"value": 1.05, "unit": "g/l", "system": UCUM,
                                      "code": "g/L"}
    # glucose in g/L is real but not a unit the BloodGlucose profile allows
    assert "profile" not in grams["meta"]
    assert grams["referenceRange"][0]["low"]["value"] == 0.7
    text = observations["POC-2024-001-9"]["valueString"]
    assert text == "Patient & entourage informés\nContrôle à 3 mois"


def test_times_without_offset_are_read_in_the_given_zone() -> None:
    raw = (DATA / "glucometer_lo_hi_sn_v23.hl7").read_bytes()
    bundle = to_bundle(raw, timezone="Europe/Paris")
    [report] = resources(bundle, "DiagnosticReport")
    assert report["effectiveDateTime"] == "2024-03-16T07:00:00+01:00"


def test_latin1_hba1c_message_value_types() -> None:
    bundle = to_bundle((DATA / "hba1c_latin1_v24.hl7").read_bytes())
    [patient] = resources(bundle, "Patient")
    assert patient["name"][0]["family"] == "ÉPREUVE"
    by_loinc = {loinc(o): o for o in resources(bundle, "Observation")}
    assert set(by_loinc) == {"4548-4", "44877-9", "33747-0", "8251-1"}
    hba1c = by_loinc["4548-4"]
    assert hba1c["meta"]["profile"] == [PROFILE + "HbA1c"]
    assert interpretation_codes(hba1c) == ["H", "A"]
    assert by_loinc["44877-9"]["valueCodeableConcept"]["coding"][0]["code"] == "LA33-6"
    assert by_loinc["33747-0"]["valueDateTime"] == "2011-05-03"
    assert by_loinc["8251-1"]["valueString"] == "Ligne un\nLigne deux"
    [report] = resources(bundle, "DiagnosticReport")
    assert report["presentedForm"] == [
        {"contentType": "application/pdf", "data": "JVBERi0xLjQK", "title": "Laboratory report"}
    ]
    assert len(report["result"]) == 4  # the ED is the report's form, not an Observation


@pytest.mark.parametrize(
    ("obx", "expected"),
    [
        ("OBX|1|NM|2339-0^Glucose^LN||5,5|mmol/L", {"valueQuantity": 5.5}),
        ("OBX|1|SN|2339-0^Glucose^LN||=^90|mg/dL", {"valueQuantity": 90}),
        ("OBX|1|SN|2339-0^Glucose^LN||<=^3.9|mmol/L", {"comparator": "<="}),
        ("OBX|1|SN|X^Titre^L||^1^/^64", {"valueRatio": 64}),
        ("OBX|1|TM|X^Time^L||0730", {"valueTime": "07:30:00"}),
        ("OBX|1|DTM|X^When^L||202403151030+0100", {"valueDateTime": "2024-03-15T10:30:00+01:00"}),
        ("OBX|1|ST|X^Text^L||  free text  ", {"valueString": "free text"}),
        ("OBX|1|NM|X^Empty^L||||||||N", {"dataAbsentReason": "not-asked"}),
        ("OBX|1|NM|X^Odd^L||abc|mg/dL", {"valueString": "abc"}),
    ],
)
def test_obx_value_types(obx: str, expected: dict) -> None:
    message = f"MSH|^~\\&|A|F|||20240101||ORU^R01|1|P|2.5\rPID|1||P1\rOBR|1||F1\r{obx}"
    [observation] = resources(to_bundle(message), "Observation")
    key, wanted = next(iter(expected.items()))
    if key == "valueQuantity":
        assert observation["valueQuantity"]["value"] == wanted
    elif key == "comparator":
        assert observation["valueQuantity"]["comparator"] == wanted
    elif key == "valueRatio":
        assert observation["valueRatio"]["denominator"]["value"] == wanted
    elif key == "dataAbsentReason":
        assert observation["dataAbsentReason"]["coding"][0]["code"] == wanted
        assert observation["status"] == "cancelled"
    else:
        assert observation[key] == wanted


@pytest.mark.parametrize(
    ("code", "status"),
    [("F", "final"), ("P", "preliminary"), ("C", "corrected"), ("X", "cancelled"),
     ("W", "entered-in-error"), ("R", "preliminary"), ("", "unknown"), ("?", "unknown")],
)
def test_result_status(code: str, status: str) -> None:
    message = f"MSH|^~\\&|A|F|||20240101||ORU^R01|1|P|2.5\rPID|1||P1\rOBX|1|NM|X^Y^L||1||||||{code}"
    [observation] = resources(to_bundle(message), "Observation")
    assert observation["status"] == status


def test_unsupported_message_type_is_a_clean_error() -> None:
    with pytest.raises(MappingError) as caught:
        to_bundle("MSH|^~\\&|A|F|||20240101||MFN^M02|1|P|2.5\rMFI|1")
    assert (caught.value.segment, caught.value.field) == ("MSH", 9)


def test_two_patients_in_one_oru() -> None:
    message = "\r".join([
        "MSH|^~\\&|A|F|||20240101||ORU^R01|1|P|2.5",
        "PID|1||P1^^^F^MR", "OBR|1||O1", "OBX|1|NM|2339-0^Glucose^LN||90|mg/dL",
        "PID|2||P2^^^F^MR", "OBR|1||O2", "OBX|1|NM|2339-0^Glucose^LN||110|mg/dL",
    ])
    bundle = to_bundle(message)
    patients = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    observations = resources(bundle, "Observation")
    assert [o["subject"]["reference"] for o in observations] == [p["fullUrl"] for p in patients]
