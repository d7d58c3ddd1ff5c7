"""Bulk Data `$export` end to end over HTTP (Bulk Data Access IG 2.0): kick-off, polling,
the manifest, the files; `_type`, `_since`, `_typeFilter`, `_elements`, Patient and Group
level, `patient` in a POST body; cancellation; a job accepted by one server and run by the
next one on the same database. The server runs --insecure-dev here: access control of
exports is tested with real tokens in test_bulk_access.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from fhir_server.settings import Settings
from tests.bulk_client import export, keys, kick_off, resources, wait
from tests.conftest import RunningServer, database_url

HBA1C = "http://loinc.org|4548-4"
GLUCOSE = "http://loinc.org|2339-0"
PATIENTS = ["p1", "p2", "p3", "p4"]


def observation(oid: str, patient: str, loinc: str, value: float, unit: str) -> dict:
    return {
        "resourceType": "Observation", "id": oid, "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": "2025-06-01T08:00:00Z",
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org",
                          "code": unit},
    }


def population() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = [
        {"resourceType": "Patient", "id": p, "gender": "female" if i % 2 else "male",
         "birthDate": f"19{50 + i}-01-01"}
        for i, p in enumerate(PATIENTS)
    ]
    for p in PATIENTS:
        found.append(observation(f"{p}-a1c", p, "4548-4", 7.5, "%"))
        found.append(observation(f"{p}-glu", p, "2339-0", 110, "mg/dL"))
    found.append({
        "resourceType": "Condition", "id": "p1-t2d",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9"}]},
    })
    found.append({"resourceType": "Practitioner", "id": "dr1", "name": [{"family": "House"}]})
    return found


def store(http: httpx.Client, items: list[dict[str, Any]]) -> None:
    bundle = {
        "resourceType": "Bundle", "type": "transaction",
        "entry": [{"resource": r, "request": {"method": "PUT",
                                              "url": f"{r['resourceType']}/{r['id']}"}}
                  for r in items],
    }
    answer = http.post("/", json=bundle, headers={"Content-Type": "application/fhir+json"})
    assert answer.status_code == 200, answer.text[:500]


@pytest.fixture(scope="module")
def bulk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = Settings(db_url=database_url(tmp_path_factory.mktemp("bulk")), insecure_dev=True)
    with RunningServer(settings) as running:
        yield running


@pytest.fixture(scope="module")
def http(bulk_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=bulk_server.url, timeout=60) as client:
        store(client, population())
        store(client, [{"resourceType": "Group", "id": "g1", "type": "person", "actual": True,
                        "member": [{"entity": {"reference": "Patient/p1"}},
                                   {"entity": {"reference": "Patient/p2"}},
                                   {"entity": {"reference": "Patient/p3"}, "inactive": True}]}])
        yield client


def test_kick_off_needs_respond_async_and_ndjson(http: httpx.Client) -> None:
    plain = http.get("/$export")
    assert plain.status_code == 400 and plain.json()["resourceType"] == "OperationOutcome"
    xml = kick_off(http, "/$export", _outputFormat="application/fhir+xml")
    assert xml.status_code == 400
    unknown = kick_off(http, "/$export", _type="Observation,NotAType")
    assert unknown.status_code == 400 and "NotAType" in unknown.text
    lenient = kick_off(http, "/$export", {"Prefer": "respond-async, handling=lenient"},
                       _type="Observation,NotAType")
    assert lenient.status_code == 202
    assert "NotAType" in lenient.text  # said in the kick-off's OperationOutcome
    assert kick_off(http, "/$export", _since="yesterday").status_code == 400
    assert kick_off(http, "/$export", _typeFilter="Observation?nope=1").status_code == 400
    assert kick_off(http, "/$export", _typeFilter="Observation?_count=5").status_code == 400


def test_system_export_holds_every_resource_once(http: httpx.Client) -> None:
    manifest = export(http, "/$export", _type="Patient,Observation,Condition,Practitioner,Group")
    assert manifest["requiresAccessToken"] is False  # --insecure-dev
    assert manifest["request"].endswith("_type=Patient%2CObservation%2CCondition%2C"
                                        "Practitioner%2CGroup")
    assert manifest["error"] == []
    assert manifest["transactionTime"].endswith("Z")
    found = resources(http, manifest)
    expected = keys(population()) + ["Group/g1"]
    assert keys(found) == sorted(expected)  # each once
    for resource in found:
        assert resource["meta"]["versionId"] and resource["meta"]["lastUpdated"]


def test_since_keeps_what_changed_after(http: httpx.Client) -> None:
    first = export(http, "/$export", _type="Observation")
    time.sleep(0.01)  # the next write's lastUpdated is after the transaction time
    changed = observation("p2-glu", "p2", "2339-0", 180, "mg/dL")
    store(http, [changed, observation("p4-glu2", "p4", "2339-0", 95, "mg/dL")])
    later = export(http, "/$export", _type="Observation", _since=first["transactionTime"])
    found = resources(http, later)
    assert keys(found) == ["Observation/p2-glu", "Observation/p4-glu2"]
    assert next(r for r in found if r["id"] == "p2-glu")["valueQuantity"]["value"] == 180


def test_type_filter_narrows_and_ors(http: httpx.Client) -> None:
    manifest = export(http, "/$export", _type="Observation,Patient",
                      _typeFilter=f"Observation?code={HBA1C}")
    found = resources(http, manifest)
    observations = [r for r in found if r["resourceType"] == "Observation"]
    assert sorted(r["id"] for r in observations) == [f"{p}-a1c" for p in PATIENTS]
    assert len([r for r in found if r["resourceType"] == "Patient"]) == len(PATIENTS)
    # Two filters on one type are OR-ed (repeated parameter).
    kicked = http.get("/$export", headers={"Prefer": "respond-async"}, params=[
        ("_type", "Observation"), ("_typeFilter", "Observation?subject=Patient/p1"),
        ("_typeFilter", "Observation?subject=Patient/p3")])
    both = resources(http, wait(http, kicked.headers["content-location"]).json())
    assert keys(both) == ["Observation/p1-a1c", "Observation/p1-glu",
                          "Observation/p3-a1c", "Observation/p3-glu"]


def test_elements_subset_each_type(http: httpx.Client) -> None:
    manifest = export(http, "/$export", _type="Patient,Observation",
                      _elements="Patient.gender,valueQuantity")
    for resource in resources(http, manifest):
        tags = [t["code"] for t in resource["meta"].get("tag", [])]
        assert "SUBSETTED" in tags
        if resource["resourceType"] == "Patient":
            assert "gender" in resource and "birthDate" not in resource
        else:
            assert "valueQuantity" in resource and "effectiveDateTime" not in resource
            assert "status" in resource and "code" in resource  # mandatory: kept


def test_patient_level_export_holds_compartments(http: httpx.Client) -> None:
    everyone = resources(http, export(http, "/Patient/$export"))
    types = {r["resourceType"] for r in everyone}
    assert "Practitioner" not in types  # not in the Patient compartment
    # Group is: R4's CompartmentDefinition lists Group.member.
    assert {"Patient", "Observation", "Condition", "Group"} <= types
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": "Patient/p1"}},
        {"name": "_type", "valueString": "Patient,Observation,Condition"}]}
    found = resources(http, export(http, "/Patient/$export", body=body))
    assert keys(found) == ["Condition/p1-t2d", "Observation/p1-a1c", "Observation/p1-glu",
                           "Patient/p1"]
    system = kick_off(http, "/$export", body=body)
    assert system.status_code == 400  # `patient` is for Patient and Group level


def test_group_export_holds_active_members(http: httpx.Client) -> None:
    found = resources(http, export(http, "/Group/g1/$export", _type="Patient,Observation"))
    patients = {r["id"] for r in found if r["resourceType"] == "Patient"}
    assert patients == {"p1", "p2"}  # p3 is an inactive member
    subjects = {r["subject"]["reference"] for r in found if r["resourceType"] == "Observation"}
    assert subjects == {"Patient/p1", "Patient/p2"}
    assert kick_off(http, "/Group/nope/$export").status_code == 404


def test_a_resource_of_two_members_is_written_once(http: httpx.Client,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Members are searched in batches: a resource in two members' compartments (here an
    Observation with p1 as subject and p2 as performer) must still come once."""
    from fhir_server.jobs import selection

    monkeypatch.setattr(selection, "BATCH", 1)  # one patient per batch
    shared = observation("shared", "p1", "2339-0", 100, "mg/dL")
    shared["performer"] = [{"reference": "Patient/p2"}]
    store(http, [shared])
    found = resources(http, export(http, "/Group/g1/$export", _type="Observation"))
    assert [r["id"] for r in found].count("shared") == 1
    assert len(found) == len({r["id"] for r in found})


def test_cancel_leaves_no_files(http: httpx.Client, bulk_server: RunningServer) -> None:
    kicked = kick_off(http, "/$export")
    status_url = kicked.headers["content-location"]
    job_id = status_url.rsplit("/", 1)[1]
    folder = bulk_server.app.state.jobs.store.files / job_id
    deleted = http.delete(status_url)
    assert deleted.status_code == 202
    assert http.get(status_url).status_code == 404
    assert not folder.exists()
    assert http.delete(status_url).status_code == 404


def test_files_of_a_finished_job_are_deleted_on_request(http: httpx.Client,
                                                        bulk_server: RunningServer) -> None:
    manifest = export(http, "/$export", _type="Patient")
    url = manifest["output"][0]["url"]
    job_id = url.split("/")[-2]
    assert (bulk_server.app.state.jobs.store.files / job_id).exists()
    assert http.delete(url.replace("$export-file", "$export-status").rsplit("/", 1)[0]
                       ).status_code == 202
    assert http.get(url).status_code == 404
    assert not (bulk_server.app.state.jobs.store.files / job_id).exists()


def test_retention_deletes_files(tmp_path: Path) -> None:
    settings = Settings(db_url=database_url(tmp_path), insecure_dev=True, jobs_retention=1)
    with RunningServer(settings) as server, httpx.Client(base_url=server.url,
                                                          timeout=60) as http:
        store(http, population()[:1])
        manifest = export(http, "/$export", _type="Patient")
        url = manifest["output"][0]["url"]
        folder = server.app.state.jobs.store.files / url.split("/")[-2]
        deadline = time.monotonic() + 60
        while folder.exists() or http.get(url).status_code != 404:
            assert time.monotonic() < deadline, "the files outlived their retention"
            time.sleep(0.2)


def test_a_job_survives_a_restart(tmp_path: Path) -> None:
    """Accepted by a server that runs no job (`jobs_workers=0`: an API-only process), the
    job waits in the store while that server stops; the next server runs it."""
    db = database_url(tmp_path)
    with RunningServer(Settings(db_url=db, insecure_dev=True, jobs_workers=0)) as first, \
            httpx.Client(base_url=first.url, timeout=60) as http:
        store(http, population())
        kicked = kick_off(http, "/$export", _type="Patient,Observation")
        status_path = kicked.headers["content-location"].removeprefix(first.url)
        assert http.get(status_path).headers["x-progress"] == "queued"
    with RunningServer(Settings(db_url=db, insecure_dev=True)) as second, \
            httpx.Client(base_url=second.url, timeout=60) as http:
        status = wait(http, status_path)
        assert status.status_code == 200
        found = resources(http, status.json())
        assert keys(found) == keys([r for r in population()
                                    if r["resourceType"] in ("Patient", "Observation")])


def test_capability_statement_lists_export(http: httpx.Client) -> None:
    statement = http.get("/metadata").json()
    rest = statement["rest"][0]
    system_ops = {o["name"]: o["definition"] for o in rest.get("operation", [])}
    assert system_ops.get("export", "").endswith("/bulkdata/OperationDefinition/export")
    group = next(r for r in rest["resource"] if r["type"] == "Group")
    assert any(o["definition"].endswith("group-export") for o in group.get("operation", []))


def test_what_changed_after_the_transaction_time_is_left_out(tmp_path: Path) -> None:
    """The export holds each resource as it was current at the transaction time: one whose
    current version came later (changed or created while the export ran) is left to the
    next `_since` export. The bound is checked on each row read (it is not a clause of the
    export's searches), so it is tested here on the job's work itself, every type."""
    from fhir_server.ingest.loader import Loader
    from fhir_server.jobs.bulk_export import export_to
    from fhir_server.jobs.export_request import SYSTEM, parse_export_request
    from fhir_server.service.fhir import FhirService
    from fhir_server.storage import open_storage
    from fhir_server.storage.base import now_millis

    url = database_url(tmp_path)
    service = FhirService(open_storage(url), Settings(db_url=url))
    try:
        Loader(service).load_resources(population())
        request = parse_export_request(SYSTEM, [], service.registry, False)
        deadline = time.monotonic() + 60
        while now_millis() <= request.transaction_time:  # the next write is later
            assert time.monotonic() < deadline, "the clock did not move"
            time.sleep(0.001)
        later = [observation("p2-glu", "p2", "2339-0", 180, "mg/dL"),
                 observation("p4-glu2", "p4", "2339-0", 95, "mg/dL"),
                 {"resourceType": "Patient", "id": "p5"}]
        Loader(service).load_resources(later)
        folder = tmp_path / "export"
        folder.mkdir()
        result = export_to(service, request, folder, lambda group: iter(()),
                           lambda *a, **k: None)
        found = [orjson.loads(line) for path in sorted(folder.glob("*.ndjson"))
                 for line in path.read_bytes().splitlines()]
        expected = [r for r in population() if r["id"] != "p2-glu"]
        assert keys(found) == keys(expected)
        assert result["resources"] == len(expected)
    finally:
        service.storage.close()


def test_a_group_of_hundreds_of_members_is_exported_whole(tmp_path: Path) -> None:
    """A Group/$export of 501 members, handed over in one batch (a cohort's snapshot gives
    them 500 at a time): every member's compartment is in the export, once. Fails on the
    old code: the ids of a batch of 500 made an SQL expression deeper than SQLite allows
    ("Expression tree is too large"), so the job failed."""
    from fhir_server.ingest.loader import Loader
    from fhir_server.jobs.bulk_export import export_to
    from fhir_server.jobs.export_request import GROUP, parse_export_request
    from fhir_server.service.fhir import FhirService
    from fhir_server.storage import open_storage

    url = database_url(tmp_path)
    service = FhirService(open_storage(url), Settings(db_url=url))
    try:
        members = sorted(f"m{n:03d}" for n in range(501))
        people = [{"resourceType": "Patient", "id": p} for p in [*members, "outsider"]]
        readings = [observation(f"{p}-glu", p, "2339-0", 100, "mg/dL")
                    for p in [*members, "outsider"]]
        Loader(service).load_resources([*people, *readings])
        request = parse_export_request(GROUP, [], service.registry, False, group_id="big")
        folder = tmp_path / "export"
        folder.mkdir()
        export_to(service, request, folder, lambda group: iter([members]),
                  lambda *a, **k: None)
        found = [orjson.loads(line) for path in sorted(folder.glob("*.ndjson"))
                 for line in path.read_bytes().splitlines()]
        expected = [r for r in [*people, *readings] if "outsider" not in r["id"]]
        assert keys(found) == keys(expected)
    finally:
        service.storage.close()
