"""De-identification engine: pseudonyms, rules, dates, watermark, fast path = full walk."""

from __future__ import annotations

import copy
import re
import uuid
from datetime import datetime

import orjson
import pytest

from fhir_server.deid.engine import PSEUDED, Deidentifier, Suppressed
from fhir_server.deid.keys import DeidConfigError, RecipientKeys, master_secret
from fhir_server.deid.pseudonyms import Pseudonymizer, _pack, _unpack
from fhir_server.deid.rules import load_rules, parse_rules
from fhir_server.model import jsonio
from tests.conftest import DATA
from tests.deid_data import french_patients, secrets_of, synthea_bundles

MASTER = b"unit-test-master-secret-000000"
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def engine(recipient: str = "alpha", **parameters: object) -> Deidentifier:
    rules = load_rules()
    if parameters:
        from fhir_server.deid.rules import default_config, with_parameters

        rules = load_rules(with_parameters(default_config(), parameters))
    return Deidentifier(RecipientKeys.derive(MASTER, recipient), rules)


@pytest.mark.parametrize(
    "rid",
    [
        "0dc3d646-f7a5-479f-8bf3-cf0274d82710",
        "p1",
        "a",
        "example-123.x",
        "A" * 19,
        "B" * 20,
        "c" * 41,
        "Zz-.9" * 8,
    ],
)
def test_pseudonyms_are_fhir_ids_and_read_back(rid: str) -> None:
    names = engine().pseudonyms
    pseudonym = names.pseudonym("Patient", rid)
    assert FHIR_ID.fullmatch(pseudonym)
    assert rid not in pseudonym
    assert names.real_id("Patient", pseudonym) == rid
    assert names.pseudonym("Patient", rid) == pseudonym  # deterministic
    # Bound to the type and to the recipient's key.
    assert names.real_id("Observation", pseudonym) is None
    assert engine("beta").pseudonyms.real_id("Patient", pseudonym) is None


def test_uuid_pseudonyms_have_43_characters_and_long_ids_are_keyed_hashes() -> None:
    names = engine().pseudonyms
    assert len(names.pseudonym("Patient", str(uuid.uuid4()))) == 43
    long_id = "x" * 60
    pseudonym = names.pseudonym("Patient", long_id)
    assert FHIR_ID.fullmatch(pseudonym) and pseudonym.startswith("h.")
    assert names.real_id("Patient", pseudonym) is None
    assert engine("beta").pseudonyms.pseudonym("Patient", long_id) != pseudonym


@pytest.mark.parametrize(
    ("rid", "packed"),
    [
        ("p-1-0-obs-12345", "0fa7ed7ed3ea1bb3ed76df8e40"),
        ("A", "0100"),
        ("example.with.dots-and-dashes", "1c7b16a6a657bfc22b61fdda2db3e6a777e75ab217ac"),
        ("x" * 41, "29" + "c71c71" * 10 + "c4"),
        ("abcdefghijklmnopqrst", "1469b71d79f8218a39259a7a29aabb2d00"),  # 16 bytes: padded
    ],
)
def test_packing_of_ids_is_stable(rid: str, packed: str) -> None:
    """Pseudonyms already handed to recipients must keep reading back: the plaintext
    layout of non-UUID ids (length byte, 6 bits per character) never changes."""
    assert _pack(rid).hex() == packed
    assert _unpack(bytes.fromhex(packed)) == rid
    assert _pack(rid + "!") is None and _pack("y" * 42) is None


def test_made_up_pseudonyms_are_rejected() -> None:
    names = Pseudonymizer(bytes(64), bytes(32))
    for text in ["", "abc", "A" * 43, "A" * 64, "h.abc", "!!!"]:
        assert names.real_id("Patient", text) is None


def test_master_secret_is_required() -> None:
    with pytest.raises(DeidConfigError):
        master_secret("short")
    assert master_secret("x" * 16) == b"x" * 16


def test_recipients_get_unlinkable_pseudonyms_shifts_and_watermarks() -> None:
    a, b = engine("alpha"), engine("beta")
    ids = [str(uuid.uuid4()) for _ in range(200)]
    pa = {a.pseudonyms.pseudonym("Patient", i) for i in ids}
    pb = {b.pseudonyms.pseudonym("Patient", i) for i in ids}
    assert not pa & pb
    shifts_a = [a.shift_days(i) for i in ids]
    assert [b.shift_days(i) for i in ids] != shifts_a
    assert all(1 <= abs(s) <= 365 for s in shifts_a)
    assert len(set(shifts_a)) > 100  # keyed per patient, not one global shift


def test_french_patient_loses_every_identifying_element() -> None:
    resources = french_patients(count=1, readings=2)
    patient = resources[0]
    secrets = secrets_of(patient)
    out = engine().transform(copy.deepcopy(patient))
    text = orjson.dumps(out).decode()
    assert not [s for s in secrets if s in text]
    assert out["birthDate"] == patient["birthDate"][:4]
    assert out["address"] == [
        {"postalCode": patient["address"][0]["postalCode"][:2], "country": "FR"}
    ]
    for element in ("name", "telecom", "contact", "text", "extension"):
        assert element not in out
    assert out["identifier"] == [
        {"system": "https://diatabase.org/fhir/sid/deid-pseudonym/alpha", "value": out["id"]}
    ]
    assert PSEUDED in out["meta"]["security"]
    assert out["gender"] == patient["gender"]


def test_clinical_content_is_unchanged_and_notes_removed() -> None:
    resources = french_patients(count=1, readings=2)
    hba1c = next(
        r for r in resources if r.get("code", {}).get("coding", [{}])[0].get("code") == "4548-4"
    )
    raw = jsonio.dumps(hba1c)
    assert b'"value":7.4' in raw or b'"value":7.40' in raw
    exact = (
        b'{"resourceType":"Observation","id":"x1","status":"final","valueQuantity":{"value":7.40}}'
    )
    assert b'"value":7.40' in engine().transform_bytes(exact)
    out = engine().transform(copy.deepcopy(hba1c))
    assert out["code"] == hba1c["code"] and out["valueQuantity"] == hba1c["valueQuantity"]
    assert out["status"] == "final" and "note" not in out


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_date_shift_preserves_intervals_exactly_without_watermark() -> None:
    resources = french_patients(count=2, readings=20)
    shifter = engine(watermark=False)
    before, after = [], []
    for resource in resources:
        if resource["resourceType"] != "Observation" or "effectiveDateTime" not in resource:
            continue
        if "T" not in resource["effectiveDateTime"]:
            continue
        out = shifter.transform(copy.deepcopy(resource))
        before.append((resource["subject"]["reference"], _instant(resource["effectiveDateTime"])))
        after.append((out["subject"]["reference"], _instant(out["effectiveDateTime"])))
        assert out["effectiveDateTime"] != resource["effectiveDateTime"]
        # time of day and zone kept
        assert out["effectiveDateTime"][10:] == resource["effectiveDateTime"][10:]
    for (pa, ta), (pb, tb), (qa, ua), (qb, ub) in zip(
        before, before[1:], after, after[1:], strict=False
    ):
        if pa == pb:
            assert qa == qb and ub - ua == tb - ta


def test_watermark_keeps_date_hour_minute_and_zone() -> None:
    resources = french_patients(count=1, readings=10)
    marked, plain = engine(), engine(watermark=False)
    for resource in resources:
        value = resource.get("effectiveDateTime", "")
        if "T" not in value:
            continue
        with_mark = marked.transform(copy.deepcopy(resource))["effectiveDateTime"]
        without = plain.transform(copy.deepcopy(resource))["effectiveDateTime"]
        assert with_mark[:16] == without[:16] and with_mark[19:] == without[19:]


def _stored_libre_readings() -> list[dict]:
    """Readings of a real FreeStyle Libre export as the server stores them (resources.py
    `prepare`: resourceType, id, meta first), with their device-reading identifiers."""
    from mappers import device_csv

    data = (DATA / "csv/freestyle-libre/libre_reader_cgmanalysis_raw.csv").read_bytes()
    bundle = device_csv.to_bundle(data, patient="Patient/p1", timezone="Europe/Paris").bundle
    stored = []
    for number, entry in enumerate(bundle["entry"][:200]):
        resource = dict(entry["resource"])
        if "device" in resource:
            resource["device"] = {"reference": "Device/d1"}
        meta = {
            "versionId": "1",
            "lastUpdated": "2026-11-22T17:42:03.995Z",
            **resource.pop("meta", {}),
        }
        stored.append(
            {
                "resourceType": resource.pop("resourceType"),
                "id": f"r{number}",
                "meta": meta,
                **resource,
            }
        )
    return stored


# Shapes a byte-level shortcut would get wrong (the engine once had one): displays of
# references, nested identifiers, extensions, notes, local and conditional references.
EDGE_SHAPES = [
    # a Reference with a type and a display, no reference: the display names someone
    {
        "resourceType": "Observation",
        "id": "e1",
        "status": "final",
        "performer": [{"type": "Practitioner", "display": "Dr Jane Doe"}],
    },
    {
        "resourceType": "Observation",
        "id": "e2",
        "subject": {"reference": "Patient/p1", "display": "Jane Doe"},
    },
    {
        "resourceType": "Observation",
        "id": "e3",
        "subject": {"display": "Jane Doe", "reference": "Patient/p1"},
    },
    # a nested identifier (in a Reference) and a top-level one
    {
        "resourceType": "Observation",
        "id": "e4",
        "identifier": [{"value": "x"}],
        "subject": {"identifier": {"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "1"}},
    },
    {
        "resourceType": "Observation",
        "id": "e5",
        "code": {"coding": [{"system": "s", "code": "c", "display": "kept"}]},
        "valueQuantity": {"value": 1, "extension": [{"url": "x"}]},
    },
    {
        "resourceType": "Observation",
        "id": "e6",
        "note": [{"text": "call 06 00 00 00 00"}],
        "effectivePeriod": {"start": "2024-03-01T10:00:00+01:00", "end": "2024-03-02"},
        "hasMember": [{"reference": "#c1"}, {"reference": "Observation?code=x"}],
    },
    {
        "resourceType": "Observation",
        "id": "e7",
        "component": [{"code": {"text": "t"}, "valueDateTime": "2024-03-01T10:00:00.123Z"}],
        "device": {"reference": "urn:uuid:1"},
    },
]


def test_stored_bytes_and_parsed_resources_give_the_same_output() -> None:
    resources = french_patients(count=3, readings=10) + _stored_libre_readings()
    resources += copy.deepcopy(EDGE_SHAPES)
    for bundle in synthea_bundles():
        resources += [e["resource"] for e in bundle["entry"]]
    fast, slow = engine(), engine()
    for resource in resources:
        raw = jsonio.dumps(resource)
        try:
            expected = jsonio.dumps(slow.transform(jsonio.loads(raw)))
        except Suppressed:
            continue
        assert fast.transform_bytes(raw) == expected


def test_the_display_of_a_reference_that_has_only_a_type_is_dropped() -> None:
    out = orjson.loads(engine().transform_bytes(jsonio.dumps(EDGE_SHAPES[0])))
    assert out["performer"] == [{"type": "Practitioner"}]


def test_references_are_pseudonymized_and_displays_dropped() -> None:
    out = engine().transform(
        {
            "resourceType": "Observation",
            "id": "o1",
            "subject": {"reference": "Patient/p1", "display": "Héloïse Dubois"},
            "performer": [
                {"reference": "http://other.example/fhir/Practitioner/dr7/_history/2"},
                {"reference": "Practitioner?identifier=http://npi|123", "display": "Dr X"},
                {"reference": "urn:uuid:7d5e0c2a-1111-4a4a-9b9b-000000000000"},
            ],
            "contained": [{"resourceType": "Patient", "id": "c1", "name": [{"family": "Y"}]}],
            "hasMember": [{"reference": "#c1"}],
        }
    )
    names = engine().pseudonyms
    assert out["subject"] == {"reference": f"Patient/{names.pseudonym('Patient', 'p1')}"}
    assert out["performer"][0] == {
        "reference": f"Practitioner/{names.pseudonym('Practitioner', 'dr7')}"
    }
    # FHIR JSON has no empty objects: references with nothing left to release go entirely.
    assert len(out["performer"]) == 1
    assert out["contained"][0] == {"resourceType": "Patient", "id": "c1"}
    assert out["hasMember"] == [{"reference": "#c1"}]


def test_modifier_extension_not_allowed_suppresses_the_resource() -> None:
    with pytest.raises(Suppressed):
        engine().transform(
            {
                "resourceType": "Observation",
                "id": "o2",
                "modifierExtension": [{"url": "http://x.example/refuted", "valueBoolean": True}],
            }
        )


def test_rules_methods_generalize_perturb_pseudonymize_keep() -> None:
    config = {
        "fhirPathRules": [
            {"path": "Observation.valueQuantity.value", "method": "perturb", "range": 0.1},
            {"path": "Observation.code.text", "method": "pseudonymize"},
            {"path": "Observation.issued", "method": "keep"},
            {"path": "Observation.effectiveDateTime", "method": "generalize", "precision": "month"},
            {"path": "nodesByType('dateTime')", "method": "dateShift"},
        ],
        "parameters": {"watermark": False},
    }
    rules = parse_rules(config, b"")
    custom = Deidentifier(RecipientKeys.derive(MASTER, "alpha"), rules)
    resource = {
        "resourceType": "Observation",
        "id": "o3",
        "code": {"text": "glycémie"},
        "issued": "2024-03-05T10:00:00+01:00",
        "effectiveDateTime": "2024-03-05T09:00:00+01:00",
        "valueQuantity": {"value": 100.0},
        "note": [{"text": "kept: no nodesByName rule here"}],
    }
    out = custom.transform(copy.deepcopy(resource))
    assert out["issued"] == resource["issued"]
    assert out["effectiveDateTime"] == "2024-03"
    assert 90 <= out["valueQuantity"]["value"] <= 110 and out["valueQuantity"]["value"] != 100.0
    assert out["code"]["text"] != "glycémie" and FHIR_ID.fullmatch(out["code"]["text"])
    again = custom.transform(copy.deepcopy(resource))
    assert again["valueQuantity"] == out["valueQuantity"]  # keyed, deterministic


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"fhirPathRules": [{"path": "Patient.name", "method": "shred"}]},
        {"fhirPathRules": [{"path": "Patient.name.where(use='official')", "method": "redact"}]},
        {"fhirPathRules": [{"path": "nodesByType('Reference')", "method": "keep"}]},
        {"fhirPathRules": [{"path": "Patient.birthDate", "method": "generalize"}]},
        {"fhirPathRules": [], "parameters": {"kAnonymity": {"quasiIdentifiers": ["zip9"]}}},
    ],
)
def test_bad_rules_are_refused(config: dict) -> None:
    with pytest.raises(DeidConfigError):
        parse_rules(config, b"")


def test_yaml_rules_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("yaml")
    path = tmp_path / "rules.yaml"
    path.write_text(
        "fhirPathRules:\n  - path: Patient.name\n    method: redact\n"
        "parameters:\n  dateShiftDays: 0\n"
    )
    rules = load_rules(path)
    assert rules.path_rules[0].path == ("name",) and not rules.shift_dates


def test_dates_the_calendar_lacks_are_still_shifted() -> None:
    out = engine(watermark=False).transform(
        {
            "resourceType": "Observation",
            "id": "o4",
            "subject": {"reference": "Patient/p9"},
            "effectiveDateTime": "2024-02-30T10:00:00Z",
            "issued": "2024-02",
        }
    )
    assert out["effectiveDateTime"] != "2024-02-30T10:00:00Z"
    assert out["effectiveDateTime"].endswith("T10:00:00Z")
    assert len(out["issued"]) == 7 and out["issued"] != "2024-02"


def test_display_only_references_lose_their_display() -> None:
    raw = (
        b'{"resourceType":"Claim","id":"c1","patient":{"reference":"Patient/p1"},'
        b'"insurer":{"display":"Dr Jane Doe"},"type":{"coding":[{"system":"s","code":"x",'
        b'"display":"Dr Jane Doe"},{"system":"http://loinc.org","code":"2339-0",'
        b'"display":"Glucose [Mass/volume] in Blood"}]}}'
    )
    out = engine().transform_bytes(raw)
    # A display is kept only when it is the code system's own: never a sender's text.
    assert b"Jane Doe" not in out and b'"display":"Glucose [Mass/volume] in Blood"' in out
    assert "insurer" not in orjson.loads(out)  # nothing left of it


@pytest.mark.parametrize(
    "literal", [b"7.40", b"1e5", b"0.00001", b"12345678.123456789", b"150.3", b"3"]
)
def test_decimal_literals_leave_exactly_as_stored(literal: bytes) -> None:
    raw = (
        b'{"resourceType":"Observation","id":"d1","subject":{"reference":"Patient/p1"},'
        b'"valueQuantity":{"value":' + literal + b',"unit":"%","code":"%"}}'
    )
    assert b'"value":' + literal + b"," in engine().transform_bytes(raw)
