"""Access control of Bulk Data with real tokens (tests/auth_tokens.py) on a closed server:
the kick-off needs a scope for each exported type, a job runs with the visibility of the
token that started it (a patient-context token exports only its patient, even from a
background thread), status and files are its owner's only, and every export and import is
in the audit trail."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.auth_tokens import TestIssuer, bearer
from tests.bulk_client import ASYNC, export, keys, kick_off, resources, wait
from tests.conftest import RunningServer, database_url
from tests.test_bulk_export import population, store


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    issuer = TestIssuer.create(tmp_path_factory.mktemp("issuer"))
    settings = issuer.settings(db_url=database_url(tmp_path_factory.mktemp("db")))
    with RunningServer(settings) as server:

        def client(scope: str, **claims: Any) -> httpx.Client:
            token = issuer.token(server.url, scope, **claims)
            return httpx.Client(base_url=server.url, timeout=60, headers=bearer(token))

        admin = client("system/*.cruds")
        store(admin, population())
        yield {"server": server, "client": client, "admin": admin}


def test_system_export_needs_a_token_and_serves_its_owner(world: dict[str, Any]) -> None:
    server = world["server"]
    anonymous = kick_off(httpx.Client(base_url=server.url, timeout=60), "/$export")
    assert anonymous.status_code == 401
    reader = world["client"]("system/*.rs")
    manifest = export(reader, "/$export", _type="Patient,Observation")
    assert manifest["requiresAccessToken"] is True
    url = manifest["output"][0]["url"]
    assert httpx.get(url, timeout=60).status_code == 401  # the files need the token too
    other = world["client"]("system/*.rs", client_id="another-client")
    assert other.get(url).status_code == 404  # not its job
    status_url = url.replace("$export-file", "$export-status").rsplit("/", 1)[0]
    assert other.get(status_url).status_code == 404
    assert other.delete(status_url).status_code == 404
    assert reader.get(url).status_code == 200


def test_each_type_needs_its_scope(world: dict[str, Any]) -> None:
    observations = world["client"]("system/Observation.rs")
    refused = kick_off(observations, "/$export", _type="Patient")
    assert refused.status_code == 403
    manifest = export(observations, "/$export")  # no _type: the types it may search
    assert {item["type"] for item in manifest["output"]} == {"Observation"}
    writer = world["client"]("system/*.cud")
    assert kick_off(writer, "/$export").status_code == 403


def test_a_patient_context_token_exports_its_own_patient_only(world: dict[str, Any]) -> None:
    """The job runs in a background thread: it must carry the token's patient context
    there (without it, it would read every patient)."""
    mine = world["client"]("launch/patient patient/*.rs", patient="p1")
    found = resources(mine, export(mine, "/Patient/$export"), None)
    assert keys(found) == ["Condition/p1-t2d", "Observation/p1-a1c", "Observation/p1-glu",
                           "Patient/p1"]
    asked_for_another = {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": "Patient/p2"}}]}
    other = resources(mine, export(mine, "/Patient/$export", body=asked_for_another))
    assert other == []
    system = resources(mine, export(mine, "/$export", _type="Patient,Observation"))
    assert {r.get("subject", {}).get("reference", f"Patient/{r['id']}") for r in system} == {
        "Patient/p1"}


def test_exports_are_audited(world: dict[str, Any]) -> None:
    reader = world["client"]("system/*.rs", client_id="audited-exporter")
    kicked = kick_off(reader, "/$export", _type="Patient")
    assert wait(reader, kicked.headers["content-location"]).status_code == 200
    auditor = world["client"]("system/AuditEvent.rs")
    deadline = time.monotonic() + 60
    while True:
        events = auditor.get("/AuditEvent", params={"agent": "audited-exporter",
                                                    "_count": "100"}).json()
        requests = [e["resource"] for e in events.get("entry", [])]
        sites = {e["source"]["site"] for e in requests}
        if {"rest", "jobs"} <= sites:
            break
        assert time.monotonic() < deadline, f"no job event in the trail: {sites}"
        time.sleep(0.2)
    job_event = next(e for e in requests if e["source"]["site"] == "jobs")
    assert job_event["outcome"] == "0"


def test_import_needs_write_access_on_every_type(world: dict[str, Any]) -> None:
    line = b'{"resourceType": "Patient", "id": "imported-1"}\n'
    upload = {**ASYNC, "Content-Type": "application/fhir+ndjson"}
    reader = world["client"]("system/*.rs")
    assert reader.post("/$import", content=line, headers=upload).status_code == 403
    patients_only = world["client"]("system/Patient.cruds")
    assert patients_only.post("/$import", content=line, headers=upload).status_code == 403
    writer = world["client"]("system/*.cruds", client_id="importer")
    kicked = writer.post("/$import", content=line, headers=upload)
    assert kicked.status_code == 202
    status = wait(writer, kicked.headers["content-location"])
    assert status.status_code == 200 and status.json()["output"][0]["count"] == 1
    other = world["client"]("system/*.cruds", client_id="another-importer")
    assert other.get(kicked.headers["content-location"]).status_code == 404
    assert writer.get("/Patient/imported-1").status_code == 200


def test_cohorts_are_not_for_a_patient_context_token(world: dict[str, Any]) -> None:
    admin = world["admin"]
    store(admin, [{"resourceType": "Group", "id": "cohort-1", "type": "person",
                   "actual": False, "characteristic": [{
                       "code": {"coding": [{"system": "http://loinc.org", "code": "46098-0"}]},
                       "valueCodeableConcept": {"coding": [{
                           "system": "http://hl7.org/fhir/administrative-gender",
                           "code": "female"}]},
                       "exclude": False}]}])
    mine = world["client"]("launch/patient patient/*.rs", patient="p1")
    assert mine.post("/Group/cohort-1/$evaluate").status_code == 403
    researcher = world["client"]("system/Group.rs system/Patient.rs")
    evaluated = researcher.post("/Group/cohort-1/$evaluate")
    assert evaluated.status_code == 200, evaluated.text[:300]
    observations_only = world["client"]("system/Group.rs system/Observation.rs")
    assert observations_only.get("/Group/cohort-1/$members").status_code == 403
