"""Linkage keys: one key per person across sources and formats, another per project, two
stages held by two parties, released in exports and through the facade."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from fhir_server.cli import main
from fhir_server.deid.linkage import stage1, stage1_key, system, traits
from fhir_server.deid.linkage_ttp import stage2
from fhir_server.ingest.loader import Loader
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage import open_storage
from mappers.hl7v2 import to_bundle
from tests.conftest import RunningServer
from tests.deid_data import write_recipients

MASTER = "linkage-test-master-secret-00000"
TTP = "the-third-party-secret-nobody-else-has-000"
HL7 = Path(__file__).parent / "data" / "hl7v2" / "diatabase" / "glucose_hba1c_oru_r01_v251.hl7"
KEYS = {"cohort-a": "key-a", "cohort-b": "key-b", "cohort-c": "key-c"}
# The family practice's record of the HL7 message's patient (test INS 1234567890123, born
# 1970-04-12, female): its own local id, the INS written with spaces and its 2-digit key.
PRACTICE_PATIENT = {
    "resourceType": "Patient",
    "id": "practice-0042",
    "identifier": [
        {"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "1 23 45 67 890 123 58"},
        {"system": "https://cabinet.example/patients", "value": "MT-778"},
    ],
    "gender": "female",
    "birthDate": "1970-04-12",
}


def test_traits_are_normalised() -> None:
    assert traits(PRACTICE_PATIENT) == "1234567890123|19700412|2"
    corsica = {
        **PRACTICE_PATIENT,
        "identifier": [{**PRACTICE_PATIENT["identifier"][0], "value": "1 70 04 2a 123 456"}],
    }
    assert traits(corsica) == "17004" + "2A123456|19700412|2"
    assert traits({**PRACTICE_PATIENT, "birthDate": "1970-04"}) is None
    assert traits({**PRACTICE_PATIENT, "gender": "unknown"}) is None
    other_system = {**PRACTICE_PATIENT, "identifier": PRACTICE_PATIENT["identifier"][1:]}
    assert traits(other_system) is None


def test_one_changed_trait_gives_another_key_and_projects_differ() -> None:
    key = stage1_key(MASTER.encode())
    base = stage1(key, traits(PRACTICE_PATIENT) or "")
    for changed in (
        {**PRACTICE_PATIENT, "birthDate": "1970-04-13"},
        {**PRACTICE_PATIENT, "gender": "male"},
        {
            **PRACTICE_PATIENT,
            "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "1234567890124"}],
        },
    ):
        assert stage1(key, traits(changed) or "") != base
    assert stage2(TTP.encode(), "cohort-a", base) != stage2(TTP.encode(), "cohort-b", base)


def test_no_dictionary_attack_over_the_nir_space_without_the_keys() -> None:
    """The attacker knows the person's birth date and sex, the project id and the key
    released, and tries 100,000 NIRs (the true one among them) under every function it
    can compute without the two secrets: none gives the key. The same search with the two
    secrets finds it, so the budget was enough to succeed had the keys not been needed."""
    target_traits = traits(PRACTICE_PATIENT)
    assert target_traits is not None
    released = stage2(TTP.encode(), "cohort-a", stage1(stage1_key(MASTER.encode()), target_traits))
    candidates = [f"{1234567840123 + n}|19700412|2" for n in range(100_000)]
    assert target_traits in candidates

    def guesses(candidate: str) -> list[str]:
        raw = candidate.encode()
        plain = hashlib.sha256(raw).hexdigest()
        return [
            plain,
            hmac.new(b"cohort-a", raw, hashlib.sha256).hexdigest(),
            stage2(b"cohort-a", "cohort-a", plain),
            stage2(b"", "cohort-a", stage1(b"", candidate)),
            stage2(TTP.encode(), "cohort-a", plain),  # even with the third party's secret
        ]

    assert not [c for c in candidates if released in guesses(c)]
    key = stage1_key(MASTER.encode())
    found = [c for c in candidates if stage2(TTP.encode(), "cohort-a", stage1(key, c)) == released]
    assert found == [target_traits]


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The hospital's HL7 v2 feed and the practice's FHIR export of the same person, in
    one database: two Patients, different local ids."""
    folder = tmp_path_factory.mktemp("linkage")
    url = f"sqlite:///{folder / 'db.sqlite'}"
    service = FhirService(open_storage(url), Settings(db_url=url))
    (folder / "hl7.json").write_text(json.dumps(to_bundle(HL7.read_bytes())))
    (folder / "practice.json").write_text(json.dumps(PRACTICE_PATIENT))
    report = Loader(service).load_files([folder / "hl7.json", folder / "practice.json"])
    assert not report.failed
    assert service.storage.count("Patient") == 2
    service.storage.close()
    recipients = write_recipients(
        folder / "recipients.json",
        KEYS,
        {r: {"kAnonymity": {"k": 1}} for r in KEYS},
    )
    items = json.loads(recipients.read_text())
    for item in items:
        item["linkage"] = item["id"] != "cohort-c"
    recipients.write_text(json.dumps(items))
    return {"folder": folder, "url": url, "recipients": str(recipients)}


def run(*args: str) -> None:
    assert main(list(args)) == 0


def linkage_values(patients: list[dict[str, Any]], recipient: str) -> list[str]:
    return [
        i["value"]
        for p in patients
        for i in p.get("identifier", ())
        if i["system"] == system(recipient)
    ]


def test_two_sources_one_key_two_projects_two_keys(
    warehouse: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIATABASE_DEID_SECRET", MASTER)
    db, recipients = warehouse["url"], warehouse["recipients"]
    common = ["--db", db, "--recipients", recipients]
    for project in ("cohort-a", "cohort-b"):
        request, answer = tmp_path / f"{project}.request", tmp_path / f"{project}.answer"
        run("deid", "linkage", "request", "--recipient", project, "--out", str(request), *common)
        lines = [orjson.loads(line) for line in request.read_bytes().splitlines()]
        assert len(lines) == 1  # two records, one person
        assert set(lines[0]) == {"project", "stage1"}  # no trait, no id leaves
        # The third party: its secret, not the warehouse's.
        monkeypatch.delenv("DIATABASE_DEID_SECRET")
        monkeypatch.setenv("DIATABASE_LINKAGE_TTP_SECRET", TTP)
        run("deid", "linkage", "answer", "--in", str(request), "--out", str(answer))
        monkeypatch.delenv("DIATABASE_LINKAGE_TTP_SECRET")
        monkeypatch.setenv("DIATABASE_DEID_SECRET", MASTER)
        run("deid", "linkage", "import", "--in", str(answer), *common)
    # Not allowed linkage: refused.
    with pytest.raises(SystemExit, match="not allowed linkage"):
        main(
            [
                "deid",
                "linkage",
                "request",
                "--recipient",
                "cohort-c",
                "--out",
                str(tmp_path / "c"),
                *common,
            ]
        )

    keys = {}
    for project in KEYS:
        out = tmp_path / f"export-{project}"
        run("deid", "export", "--recipient", project, "--out", str(out), "--quiet", *common)
        patients = [orjson.loads(x) for x in (out / "Patient.ndjson").read_bytes().splitlines()]
        assert len(patients) == 2
        keys[project] = linkage_values(patients, project)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["linkageKeys"] == (0 if project == "cohort-c" else 2)
    assert len(keys["cohort-a"]) == 2 and len(set(keys["cohort-a"])) == 1
    assert len(keys["cohort-b"]) == 2 and len(set(keys["cohort-b"])) == 1
    assert keys["cohort-a"][0] != keys["cohort-b"][0]
    assert keys["cohort-c"] == []

    # The facade releases the same keys.
    settings = Settings(
        db_url=db, deid_secret=MASTER, deid_recipients=recipients, insecure_dev=True
    )
    with RunningServer(settings) as running, httpx.Client(base_url=running.url) as http:
        for project, expected in keys.items():
            bundle = http.get(
                "/deid/Patient", headers={"Authorization": f"Bearer {KEYS[project]}"}
            ).json()
            served = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
            assert sorted(linkage_values(served, project)) == sorted(expected)
