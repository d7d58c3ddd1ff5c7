"""`POST /$submit-cgm-bundle` (HL7 CGM IG 1.0.0) on real servers: the IG's example
submission (tests/data/cgm-ig) stored and found by search, a re-submission creating nothing
(identifiers, or the keyed hash of readings that have none), the IG's rules on the Bundle,
429 with Retry-After past the admission limit, and SMART scopes as for a transaction."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fhir_server.api import cgm_submit
from fhir_server.limits import Limits
from fhir_server.settings import Settings
from mappers.cgm_submission import KEY_SYSTEM
from tests.auth_tokens import TestIssuer, bearer
from tests.conftest import RunningServer

EXAMPLE = json.loads((Path(__file__).parent / "data" / "cgm-ig" /
                      "cgm-data-submission-bundle.json").read_text(encoding="utf-8"))
LOINC = "http://loinc.org"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("cgm")
    settings = Settings(db_url=f"sqlite:///{folder / 'db.sqlite'}", insecure_dev=True,
                        limits=Limits(search_seconds=300, total_count_seconds=60))
    with RunningServer(settings) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as http:
        put = http.put("/Patient/patientExample", json={
            "resourceType": "Patient", "id": "patientExample",
            "identifier": [{"use": "official", "system": "http://example.org",
                            "value": "ee8d4ac0-545c-4501-8d7e-646bfbda1db5"}],
            "name": [{"family": "Peters", "given": ["Amy"]}], "gender": "female",
            "birthDate": "1964-06-20"})
        assert put.status_code in (200, 201), put.text
        yield http


def total(client: httpx.Client, path: str, **params: str) -> int:
    answer = client.get(path, params={**params, "_total": "accurate", "_count": "0"})
    assert answer.status_code == 200, answer.text
    return answer.json()["total"]


def statuses(answer: httpx.Response) -> list[str]:
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "transaction-response"
    return [e["response"]["status"] for e in body["entry"]]


def test_the_ig_example_is_stored_found_and_not_duplicated(client: httpx.Client) -> None:
    first = client.post("/$submit-cgm-bundle", json=EXAMPLE)
    assert statuses(first) == ["201 Created"] * len(EXAMPLE["entry"])
    subject = "Patient/patientExample"
    readings = client.get("/Observation", params={
        "subject": subject, "code": f"{LOINC}|99504-3"}).json()["entry"]
    (reading,) = [e["resource"] for e in readings]
    assert reading["valueQuantity"]["value"] == 120
    assert reading["identifier"][0]["system"] == KEY_SYSTEM  # it came without one
    summary = client.get("/Observation", params={
        "subject": subject, "code": f"{LOINC}|107931-8"}).json()["entry"][0]["resource"]
    members = [m["reference"] for m in summary["hasMember"]]
    assert len(members) == 6 and all(m.startswith("Observation/") for m in members)
    gmi = client.get(members[2]).json()  # the references point at the stored resources
    assert gmi["code"]["coding"][0]["code"] == "97506-0"
    (device,) = client.get("/Device", params={
        "identifier": "http://acme.com/devices|456789"}).json()["entry"]
    assert device["resource"]["serialNumber"] == "ABC123"
    before = total(client, "/Observation", subject=subject)

    again = client.post("/$submit-cgm-bundle", json=EXAMPLE)
    assert statuses(again) == ["200 OK"] * len(EXAMPLE["entry"])
    assert total(client, "/Observation", subject=subject) == before
    assert total(client, "/Device", identifier="http://acme.com/devices|456789") == 1


def test_same_reading_in_another_offset_is_the_same(client: httpx.Client) -> None:
    reading = copy.deepcopy(next(
        e for e in EXAMPLE["entry"] if e["resource"].get("effectiveDateTime", "").endswith(
            "10:30:00Z")))
    reading["resource"]["effectiveDateTime"] = "2024-05-02T12:30:00+02:00"
    reading["fullUrl"] = "urn:uuid:9a4a4c4e-3b1e-4c1d-9d55-1d3c51c0f0a1"
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "timestamp": "2024-05-03T00:00:00Z", "entry": [reading]}
    assert statuses(client.post("/$submit-cgm-bundle", json=bundle)) == ["200 OK"]
    with_identifier = copy.deepcopy(bundle)
    resource = with_identifier["entry"][0]["resource"]
    resource["identifier"] = [{"system": "urn:acme:readings", "value": "R-1"}]
    resource["valueQuantity"]["value"] = 6.8
    # a reading with its own identifier is keyed by it: created once, matched after
    assert statuses(client.post("/$submit-cgm-bundle", json=with_identifier)) == [
        "201 Created"]
    as_parameters = {"resourceType": "Parameters",
                     "parameter": [{"name": "resource", "resource": with_identifier}]}
    assert statuses(client.post("/$submit-cgm-bundle", json=as_parameters)) == ["200 OK"]


@pytest.mark.parametrize(("change", "expression"), [
    (lambda b: b.pop("timestamp"), "Bundle.timestamp"),
    (lambda b: b.update(type="batch"), "Bundle.type"),
])
def test_the_bundle_must_be_a_timestamped_transaction(client: httpx.Client, change,
                                                      expression: str) -> None:
    bundle = copy.deepcopy(EXAMPLE)
    change(bundle)
    before = total(client, "/Observation")
    answer = client.post("/$submit-cgm-bundle", json=bundle)
    assert answer.status_code == 400
    assert answer.json()["issue"][0]["expression"] == [expression]
    assert total(client, "/Observation") == before


def test_capability_statement_names_the_receiver(client: httpx.Client) -> None:
    statement = client.get("/metadata").json()
    assert "http://hl7.org/fhir/uv/cgm/CapabilityStatement/cgm-data-receiver" in statement[
        "instantiates"]
    operations = {o["name"]: o["definition"] for o in statement["rest"][0]["operation"]}
    assert operations["submit-cgm-bundle"] == (
        "http://hl7.org/fhir/uv/cgm/OperationDefinition/submit-cgm-bundle")


def test_overload_is_429_with_retry_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    """With no room for a submission, the answer is 429 + Retry-After and nothing is
    stored (the admission limit set to 0 stands for a server full of submissions)."""
    monkeypatch.setattr(cgm_submit, "MAX_WAITING", 0)
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'db.sqlite'}", insecure_dev=True)
    with RunningServer(settings) as running, httpx.Client(base_url=running.url,
                                                          timeout=120) as http:
        answer = http.post("/$submit-cgm-bundle", json=EXAMPLE)
        assert answer.status_code == 429
        assert answer.headers["retry-after"] == "5"
        assert answer.json()["issue"][0]["code"] == "throttled"
        assert http.get("/Observation", params={"_total": "accurate"}).json()["total"] == 0


def test_scopes_as_for_a_transaction(tmp_path: Path) -> None:
    issuer = TestIssuer.create(tmp_path)
    settings = issuer.settings(db_url=f"sqlite:///{tmp_path / 'db.sqlite'}")
    with RunningServer(settings) as running, httpx.Client(base_url=running.url,
                                                          timeout=120) as http:
        admin = issuer.token(running.url, "system/*.cruds")
        http.put("/Patient/patientExample", headers=bearer(admin),
                 json={"resourceType": "Patient", "id": "patientExample"})
        assert http.post("/$submit-cgm-bundle", json=EXAMPLE).status_code == 401
        reader = issuer.token(running.url, "system/Observation.rs system/Device.rs")
        refused = http.post("/$submit-cgm-bundle", json=EXAMPLE, headers=bearer(reader))
        assert refused.status_code == 403
        assert "Bundle.entry[0]" in refused.json()["issue"][0]["diagnostics"]
        other = issuer.token(running.url, "patient/Observation.c patient/Device.c",
                             patient="someone-else")
        assert http.post("/$submit-cgm-bundle", json=EXAMPLE,
                         headers=bearer(other)).status_code == 403
        writer = issuer.token(running.url, "system/Observation.cr system/Device.cr")
        assert statuses(http.post("/$submit-cgm-bundle", json=EXAMPLE,
                                  headers=bearer(writer))) == ["201 Created"] * len(
            EXAMPLE["entry"])
