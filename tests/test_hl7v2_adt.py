"""ADT^A01/A04/A08/A28/A31 to Patient, Encounter, RelatedPerson, Condition, Allergy.

The messages are synthetic (invented patient, test INS OID).
"""

from __future__ import annotations

import pytest

from mappers.hl7v2 import MappingError, to_bundle
from mappers.hl7v2.datatypes import INS_SYSTEM, INS_TEST_SYSTEM

INS_AUTHORITY = "ASIP-SANTE-INS-NIR-TEST&1.2.250.1.213.1.4.10&ISO"


def segment(name: str, fields: dict[int, str]) -> str:
    """A segment with the given fields at their numbers (the rest empty)."""
    values = [fields.get(n, "") for n in range(1, max(fields) + 1)]
    return "|".join([name, *values])


def adt(trigger: str, address: str = "3 rue du Test^^Paris^^75011^FRA^H", control: str = "1"):
    return "\r".join([
        f"MSH|^~\\&|DPI|HOPITAL^1.2.250.1.999.9^ISO|||20240501101500+0200||ADT^{trigger}^ADT_A01|"
        f"{control}|P|2.5|||||FRA|8859/1",
        "EVN||20240501101500+0200",
        f"PID|1||2880512345678^^^{INS_AUTHORITY}^INS~IPP42^^^HOPITAL&1.2.250.1.999.9.1&ISO^PI||"
        f"MARTIN^Lucie^Anne^^Mme^^L~NOMNAIS^Lucie^^^^^M||19880512|F|||{address}||"
        "0102030405^PRN^PH~^NET^Internet^lucie@example.org|0600000000^WPN^CP||M",
        "PD1|||Centre de Santé Test|12345^GENERALISTE^Paul",
        "NK1|1|MARTIN^Pierre|SPO^Spouse^HL70063||0611111111^PRN^PH||C^Emergency Contact^HL70131",
        segment("PV1", {1: "1", 2: "I", 3: "CARDIO^101^A^HOPITAL", 7: "1001^CARDIOLOGUE^Jean",
                        10: "CAR", 14: "7",
                        19: "V2024-99^^^HOPITAL&1.2.250.1.999.9.2&ISO^VN",
                        44: "20240501100000+0200"}),
        "AL1|1|DA|70618^Penicillin^RXNORM|SV|Urticaria~Dyspnea|20100101",
        "DG1|1||E11.9^Type 2 diabetes mellitus without complications^I10||20240501|F",
        "ZBE|1|local|data",
    ])


def by_type(bundle: dict, resource_type: str) -> list[dict]:
    return [e for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type]


@pytest.mark.parametrize("trigger", ["A01", "A04", "A08", "A28", "A31"])
def test_every_adt_trigger_upserts_the_patient_on_the_ins(trigger: str) -> None:
    bundle = to_bundle(adt(trigger))
    [entry] = by_type(bundle, "Patient")
    assert entry["request"] == {
        "method": "PUT",
        "url": f"Patient?identifier={INS_TEST_SYSTEM}|2880512345678",
    }
    patient = entry["resource"]
    assert patient["identifier"][0]["system"] == INS_TEST_SYSTEM
    assert patient["identifier"][1] == {
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                             "code": "PI"}]},
        "system": "urn:oid:1.2.250.1.999.9.1",
        "value": "IPP42",
    }


def test_a08_updates_the_same_patient_as_a01() -> None:
    admit = to_bundle(adt("A01"))
    moved = to_bundle(adt("A08", address="9 avenue Neuve^^Lyon^^69001^FRA^H", control="2"))
    admit_patient, = by_type(admit, "Patient")
    update_patient, = by_type(moved, "Patient")
    assert admit_patient["request"] == update_patient["request"]
    assert update_patient["resource"]["address"][0]["city"] == "Lyon"
    assert admit_patient["resource"]["address"][0]["city"] == "Paris"


def test_production_ins_oid_and_namespace_only_authority() -> None:
    message = adt("A28").replace(INS_AUTHORITY, "&1.2.250.1.213.1.4.8&ISO")
    [entry] = by_type(to_bundle(message), "Patient")
    assert entry["request"]["url"] == f"Patient?identifier={INS_SYSTEM}|2880512345678"
    by_namespace = adt("A28").replace(INS_AUTHORITY, "ASIP-SANTE-INS-NIR")
    [entry] = by_type(to_bundle(by_namespace), "Patient")
    assert entry["resource"]["identifier"][0]["system"] == INS_SYSTEM


def test_patient_demographics() -> None:
    [entry] = by_type(to_bundle(adt("A01")), "Patient")
    patient = entry["resource"]
    assert patient["name"] == [
        {"use": "official", "family": "MARTIN", "given": ["Lucie", "Anne"], "prefix": ["Mme"]},
        {"use": "maiden", "family": "NOMNAIS", "given": ["Lucie"]},
    ]
    assert patient["birthDate"] == "1988-05-12"
    assert patient["gender"] == "female"
    assert patient["address"] == [{"use": "home", "line": ["3 rue du Test"], "city": "Paris",
                                   "postalCode": "75011", "country": "FRA"}]
    assert patient["telecom"] == [
        {"system": "phone", "value": "0102030405", "use": "home"},
        {"system": "email", "value": "lucie@example.org"},
        {"system": "phone", "value": "0600000000", "use": "mobile"},
    ]
    assert patient["maritalStatus"]["coding"][0]["code"] == "M"
    assert patient["generalPractitioner"] == [
        {"identifier": {"value": "12345"}, "display": "Paul GENERALISTE"}
    ]
    assert patient["managingOrganization"] == {"display": "Centre de Santé Test"}


def test_encounter_related_person_condition_allergy() -> None:
    bundle = to_bundle(adt("A01"))
    patient_url = by_type(bundle, "Patient")[0]["fullUrl"]
    [encounter] = by_type(bundle, "Encounter")
    assert encounter["request"]["method"] == "PUT"
    assert encounter["request"]["url"].endswith("urn:oid:1.2.250.1.999.9.2|V2024-99")
    resource = encounter["resource"]
    assert resource["status"] == "in-progress"
    assert resource["class"]["code"] == "IMP"
    assert resource["period"] == {"start": "2024-05-01T10:00:00+02:00"}
    assert resource["participant"][0]["individual"]["display"] == "Jean CARDIOLOGUE"
    assert resource["subject"]["reference"] == patient_url

    [related] = by_type(bundle, "RelatedPerson")
    assert related["resource"]["name"][0]["family"] == "MARTIN"
    assert [r["coding"][0]["code"] for r in related["resource"]["relationship"]] == ["SPO", "C"]
    assert related["resource"]["patient"]["reference"] == patient_url

    [condition] = by_type(bundle, "Condition")
    coding = condition["resource"]["code"]["coding"][0]
    assert (coding["system"], coding["code"]) == ("http://hl7.org/fhir/sid/icd-10", "E11.9")
    assert condition["resource"]["verificationStatus"]["coding"][0]["code"] == "confirmed"
    assert condition["resource"]["encounter"]["reference"] == encounter["fullUrl"]
    assert condition["request"]["method"] == "PUT"

    [allergy] = by_type(bundle, "AllergyIntolerance")
    resource = allergy["resource"]
    assert resource["category"] == ["medication"]
    assert resource["criticality"] == "high"
    assert [m["text"] for m in resource["reaction"][0]["manifestation"]] == [
        "Urticaria", "Dyspnea"
    ]
    assert resource["onsetDateTime"] == "2010-01-01"


def test_resent_adt_gives_the_same_conditional_requests() -> None:
    def urls(bundle: dict) -> list[str]:
        return [e["request"]["url"] for e in bundle["entry"]]

    assert urls(to_bundle(adt("A01"))) == urls(to_bundle(adt("A01")))


def test_pv1_without_visit_number_is_not_mapped() -> None:
    message = adt("A04").replace("V2024-99^^^HOPITAL&1.2.250.1.999.9.2&ISO^VN", "")
    bundle = to_bundle(message)
    assert by_type(bundle, "Encounter") == []
    assert "encounter" not in by_type(bundle, "Condition")[0]["resource"]


def test_message_header_is_optional() -> None:
    assert by_type(to_bundle(adt("A01")), "MessageHeader") == []
    [header] = by_type(to_bundle(adt("A01"), message_header=True), "MessageHeader")
    assert header["resource"]["eventCoding"]["code"] == "A01"
    assert header["resource"]["source"]["endpoint"] == "urn:oid:1.2.250.1.999.9"
    assert "ifNoneExist" not in header["request"]


def test_adt_obx_hang_on_the_visit_number_across_messages() -> None:
    def with_obx(trigger: str, control: str) -> str:
        return adt(trigger, control=control) + "\rOBX|1|NM|29463-7^Body weight^LN||72|kg|||||F"

    first = by_type(to_bundle(with_obx("A01", "1")), "Observation")
    again = by_type(to_bundle(with_obx("A08", "2")), "Observation")
    assert first[0]["request"] == again[0]["request"]
    assert first[0]["request"]["url"].endswith("urn:oid:1.2.250.1.999.9.2|V2024-99-1")
    assert first[0]["resource"]["valueQuantity"]["code"] == "kg"


def test_repeated_segments_for_the_same_thing_make_one_entry() -> None:
    message = adt("A08")
    pv1 = next(s for s in message.split("\r") if s.startswith("PV1"))
    dg1 = next(s for s in message.split("\r") if s.startswith("DG1"))
    bundle = to_bundle("\r".join([message, pv1, dg1]))
    assert len(by_type(bundle, "Encounter")) == 1
    assert len(by_type(bundle, "Condition")) == 1
    urls = [e["request"]["url"] for e in bundle["entry"]]
    assert len(urls) == len(set(urls))


def test_adt_without_pid_is_a_clean_error() -> None:
    with pytest.raises(MappingError) as caught:
        to_bundle("MSH|^~\\&|A|F|||20240101||ADT^A01|1|P|2.5\rEVN||20240101")
    assert caught.value.segment == "PID"
