"""VXU^V04 to Immunization (HL7 v2-to-FHIR IG: RXA, RXR and ORC[Immunization] segment maps,
VXU_V04 message map), ADT^A40 merges, events refused rather than mis-applied, and the
warnings (ERR of severity W beside an AA) for content accepted but not stored.

No VXU or A40 sample is among the shared real messages, so these messages are built to the
v2.5.1 structure (VXU_V04: MSH PID PD1 NK1 ORC RXA RXR OBX; ADT_A39: MSH EVN PID MRG) with
the codes senders use (CVX vaccines, MVX manufacturers, NIP001 sources, tables 0162/0163).
"""

from __future__ import annotations

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from mappers.hl7v2 import MappingError, build_ack, map_message, to_bundle

FACILITY = "CLINIQUE^1.2.250.1.999.7^ISO"


def vxu(
    rxa_tail: str = "|||CP|A",
    control: str = "VXU-1",
    extra: tuple[str, ...] = (),
    orc: str = "ORC|RE||IZ-778^CLINIQUE|||||||||1234^DUPONT^MARIE",
) -> str:
    return "\r".join([
        f"MSH|^~\\&|MYEHR|{FACILITY}|IIS|REGISTRY|20240301103000+0100||VXU^V04^VXU_V04|"
        f"{control}|P|2.5.1|||ER|AL",
        "PID|1||PAT-77^^^CLINIQUE&1.2.250.1.999.7&ISO^MR||MARTIN^LUC||20100504|M",
        "NK1|1|MARTIN^ANNE|MTH^Mother^HL70063",
        orc,
        "RXA|0|1|20240301100000|20240301100000|08^Hep B, adolescent or pediatric^CVX|0.5|"
        "mL^mL^UCUM||00^New immunization record^NIP001|5678^MOREAU^PAUL|^^^CLINIQUE||||"
        f"LOT-1234|20251231|MSD^Merck and Co., Inc.^MVX{rxa_tail}",
        "RXR|IM^Intramuscular^HL70162|LA^Left Arm^HL70163",
        "OBX|1|CE|64994-7^Vaccine funding program eligibility category^LN|1|"
        "V02^VFC eligible - Medicaid^HL70064||||||F|||20240301",
        *extra,
    ])


def resources(bundle: dict, rtype: str) -> list[dict]:
    return [e for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def test_vxu_becomes_an_immunization_per_the_ig_segment_maps() -> None:
    """Fails on the old mapper: RXA was dropped and the message still acknowledged AA."""
    bundle = to_bundle(vxu(), timezone="Europe/Paris")
    [entry] = resources(bundle, "Immunization")
    [patient] = resources(bundle, "Patient")
    immunization = entry["resource"]
    assert entry["request"] == {"method": "PUT",
                                "url": "Immunization?identifier=urn:id:CLINIQUE|IZ-778"}
    assert immunization["status"] == "completed"  # RXA-20 CP
    assert immunization["vaccineCode"]["coding"][0] == {
        "system": "http://hl7.org/fhir/sid/cvx", "code": "08",
        "display": "Hep B, adolescent or pediatric"}  # RXA-5
    assert immunization["patient"] == {"reference": patient["fullUrl"]}
    assert immunization["occurrenceDateTime"] == "2024-03-01T10:00:00+01:00"  # RXA-3
    assert immunization["doseQuantity"] == {"value": 0.5, "unit": "mL",
                                            "system": "http://unitsofmeasure.org",
                                            "code": "mL"}  # RXA-6/7
    assert immunization["lotNumber"] == "LOT-1234"  # RXA-15
    assert immunization["expirationDate"] == "2025-12-31"  # RXA-16
    assert immunization["manufacturer"]["identifier"] == {
        "system": "http://hl7.org/fhir/sid/mvx", "value": "MSD"}  # RXA-17
    assert immunization["primarySource"] is True  # RXA-9 00 (new record)
    functions = [p["function"]["coding"][0]["code"] for p in immunization["performer"]]
    assert functions == ["AP", "OP"]  # RXA-10 administering, ORC-12 ordering
    assert immunization["route"]["coding"][0]["code"] == "IM"  # RXR-1
    assert immunization["site"]["coding"][0]["code"] == "LA"  # RXR-2
    [ident] = immunization["identifier"]
    assert ident["value"] == "IZ-778" and ident["type"]["coding"][0]["code"] == "FILL"


def test_the_order_groups_obx_is_part_of_the_immunization() -> None:
    bundle = to_bundle(vxu())
    [immunization] = resources(bundle, "Immunization")
    [observation] = resources(bundle, "Observation")
    resource = observation["resource"]
    assert resource["partOf"] == [{"reference": immunization["fullUrl"]}]
    assert "category" not in resource  # not a laboratory result
    assert resource["code"]["coding"][0]["code"] == "64994-7"
    assert resource["valueCodeableConcept"]["coding"][0]["code"] == "V02"


@pytest.mark.parametrize(("tail", "status"), [
    ("|||RE|A", "not-done"),  # refused
    ("|||NA|A", "not-done"),  # not administered
    ("|||CP|D", "entered-in-error"),  # RXA-21 delete
    ("|||PA|A", "completed"),  # partially administered: completed, subpotent
])
def test_completion_status_and_action_code(tail: str, status: str) -> None:
    [entry] = resources(to_bundle(vxu(tail)), "Immunization")
    assert entry["resource"]["status"] == status
    assert entry["resource"].get("isSubpotent", False) is (tail == "|||PA|A")


def test_refusal_reason_and_a_historical_record() -> None:
    message = vxu("|00^Parental decision^NIP002||RE|A").replace(
        "00^New immunization record^NIP001", "01^Historical information^NIP001")
    [entry] = resources(to_bundle(message), "Immunization")
    immunization = entry["resource"]
    assert immunization["statusReason"]["coding"][0]["code"] == "00"  # RXA-18
    assert immunization["primarySource"] is False
    assert immunization["reportOrigin"]["coding"][0]["code"] == "01"


def test_without_an_order_number_the_key_is_patient_vaccine_and_date() -> None:
    first = to_bundle(vxu(orc="ORC|RE"))
    again = to_bundle(vxu(orc="ORC|RE", control="VXU-2"))
    [one] = resources(first, "Immunization")
    [two] = resources(again, "Immunization")
    assert one["request"]["url"] == two["request"]["url"]  # a re-send updates, not adds
    assert "PAT-77:RXA:08:20240301100000" in one["request"]["url"]


def test_rxa_without_a_vaccine_is_an_error_not_a_silent_loss() -> None:
    message = vxu().replace("08^Hep B, adolescent or pediatric^CVX", "")
    with pytest.raises(MappingError) as caught:
        to_bundle(message)
    assert (caught.value.segment, caught.value.field) == ("RXA", 5)


def test_segments_not_stored_are_warned_in_the_ack() -> None:
    """Fails on the old mapper: IN1 and Z segments were dropped and the ACK said nothing."""
    message = vxu(extra=("IN1|1|PLAN^Plan|INS01", "IN1|2|PLAN2^Plan 2|INS02", "ZXY|1|x"))
    mapped = map_message(message)
    assert [(w.segment, w.sequence, w.count) for w in mapped.warnings] == [
        ("IN1", 1, 2), ("ZXY", 1, 1)]
    ack = build_ack(message, "AA", warnings=mapped.warnings)
    lines = ack.rstrip("\r").split("\r")
    assert lines[1].split("|")[:3] == ["MSA", "AA", "VXU-1"]
    errs = [line.split("|") for line in lines if line.startswith("ERR")]
    assert [(e[2], e[3], e[4]) for e in errs] == [
        ("IN1^1", "0^Message accepted^HL70357", "W"),
        ("ZXY^1", "0^Message accepted^HL70357", "W"),
    ]
    assert "not stored" in errs[0][8] and "2 segments" in errs[0][8]
    parsed = parse_message(ack, validation_level=VALIDATION_LEVEL.STRICT)
    assert parsed.msa.msa_1.value == "AA"


def test_a_fully_mapped_message_has_no_warning() -> None:
    assert map_message(vxu()).warnings == []


def a40(*segments: str) -> str:
    return "\r".join([
        "MSH|^~\\&|ADT|CHU^1.2.250.1.999.9^ISO|DIA|DIA|20240501101500+0200||ADT^A40^ADT_A39|"
        "M-40|P|2.5",
        "EVN|A40|20240501101500",
        *segments,
    ])


def test_a40_gives_the_survivor_update_and_a_merge() -> None:
    mapped = map_message(a40(
        "PID|1||NEW-1^^^CHU&1.2.250.1.999.9&ISO^PI||DURAND^ALICE||19800101|F",
        "MRG|OLD-1^^^CHU&1.2.250.1.999.9&ISO^PI~OLD-2^^^CHU&1.2.250.1.999.9&ISO^PI",
    ))
    [patient] = resources(mapped.bundle, "Patient")
    assert patient["request"]["url"] == "Patient?identifier=urn:oid:1.2.250.1.999.9|NEW-1"
    [merge] = mapped.merges
    assert merge.survivor["value"] == "NEW-1"
    assert [(p["system"], p["value"]) for p in merge.prior] == [
        ("urn:oid:1.2.250.1.999.9", "OLD-1"), ("urn:oid:1.2.250.1.999.9", "OLD-2")]
    assert mapped.warnings == []


def test_a40_without_mrg_is_an_error() -> None:
    with pytest.raises(MappingError) as caught:
        to_bundle(a40("PID|1||NEW-1^^^CHU&1.2.250.1.999.9&ISO^PI||DURAND^ALICE"))
    assert caught.value.segment == "MRG"


@pytest.mark.parametrize("event", ["A29", "A23", "A34", "A37"])
def test_events_that_would_be_misapplied_are_refused_as_unsupported(event: str) -> None:
    """Fails on the old mapper: a delete (A29) or unlink (A37) was stored as an update."""
    message = a40("PID|1||NEW-1^^^CHU&1.2.250.1.999.9&ISO^PI||DURAND^ALICE").replace(
        "ADT^A40^ADT_A39", f"ADT^{event}")
    with pytest.raises(MappingError) as caught:
        to_bundle(message)
    ack = build_ack(message, "AR", str(caught.value), error=caught.value)
    err = next(line for line in ack.split("\r") if line.startswith("ERR")).split("|")
    assert err[2] == "MSH^1^9"
    assert err[3] == "201^Unsupported event code^HL70357"
