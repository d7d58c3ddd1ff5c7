"""Objection to research use, enforced in every research output from its commit, on a
real server (uvicorn + SQLite) and the real de-identified export and view stores:

- recorded between two pages of a facade search: the next page and every later request
  (reads, searches, includes, totals, `$everything`) lack the patient and everything of
  theirs; the clinical API still serves them; withdrawal brings them back;
- an export started before it lacks the patient's resources written after it;
- a view store made before it never serves them, and its rows go at the next follow.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from fhir_server.deid.engine import Deidentifier
from fhir_server.rights.objections import objection_consent
from fhir_server.settings import Settings
from tests.conftest import RunningServer
from tests.deid_data import write_recipients

SECRET = "objection-test-master-secret-0123456789"
KEYS = {"open": "key-open-objection"}
HEADERS = {"Authorization": f"Bearer {KEYS['open']}"}
READINGS = 5


def population() -> list[dict[str, Any]]:
    """Two patients; their readings interleaved (a-1, b-1, a-2, ...) so that every page of
    a search in storage order holds both."""
    resources: list[dict[str, Any]] = [
        {"resourceType": "Patient", "id": "obj-a", "gender": "female", "birthDate": "1970"},
        {"resourceType": "Patient", "id": "obj-b", "gender": "male", "birthDate": "1980"},
    ]
    for n in range(1, READINGS + 1):
        for who in ("a", "b"):
            resources.append({
                "resourceType": "Observation", "id": f"{who}-{n}", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
                "subject": {"reference": f"Patient/obj-{who}"},
                "effectiveDateTime": f"2026-03-0{n}T08:00:00Z",
                "valueQuantity": {"value": 100 + n, "unit": "mg/dL",
                                  "system": "http://unitsofmeasure.org", "code": "mg/dL"},
            })
    return resources


def engine(folder: Path) -> Deidentifier:
    """The recipient's engine as the server makes it (its rules, k = 1)."""
    from fhir_server.deid.recipients import Recipients

    return Recipients.load(folder / "recipients.json", SECRET.encode()).fresh_engine("open")


def settings(folder: Path, **values: Any) -> Settings:
    write_recipients(folder / "recipients.json", KEYS, {"open": {"kAnonymity": {"k": 1}}})
    return Settings(
        db_url=f"sqlite:///{folder / 'store.db'}", deid_secret=SECRET,
        deid_recipients=str(folder / "recipients.json"), insecure_dev=True,
        jobs_dir=str(folder / "jobs"), **values,
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[RunningServer, httpx.Client]]:
    with RunningServer(settings(tmp_path)) as running, httpx.Client(
        base_url=running.url, timeout=120
    ) as http:
        for resource in population():
            put = http.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
            assert put.status_code == 201, put.text
        yield running, http


def entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] != "outcome"]


def next_link(bundle: dict[str, Any]) -> str | None:
    return next((x["url"] for x in bundle["link"] if x["relation"] == "next"), None)


def names_a(resource: dict[str, Any], pseudonym: str) -> bool:
    return pseudonym in orjson.dumps(resource).decode()


def object_(http: httpx.Client) -> str:
    consent = objection_consent("obj-a", "letter", "2026-12-07T10:00:00Z")
    answer = http.post("/Consent", json=consent)
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def withdraw(http: httpx.Client, consent_id: str) -> None:
    consent = http.get(f"/Consent/{consent_id}").json()
    consent["status"] = "inactive"
    assert http.put(f"/Consent/{consent_id}", json=consent).status_code == 200


def test_an_objection_between_two_pages_applies_to_every_later_request(
    server: tuple[RunningServer, httpx.Client], tmp_path: Path
) -> None:
    _, http = server
    a = engine(tmp_path).pseudonyms.pseudonym("Patient", "obj-a")
    first = http.get("/deid/Observation", params={"_count": "4"}, headers=HEADERS).json()
    assert any(names_a(r, a) for r in entries(first))  # the check below can fail
    consent_id = object_(http)

    later: list[dict[str, Any]] = []
    url = next_link(first)
    while url:
        page = http.get(url, headers=HEADERS).json()
        later += entries(page)
        url = next_link(page)
    assert later and not any(names_a(r, a) for r in later)
    b_on_first = sum(1 for r in entries(first) if not names_a(r, a))
    assert len(later) == READINGS - b_on_first  # nothing of b skipped or repeated

    assert http.get(f"/deid/Patient/{a}", headers=HEADERS).status_code == 404
    assert http.get(f"/deid/Patient/{a}/$everything", headers=HEADERS).status_code == 404
    patients = entries(http.get("/deid/Patient", headers=HEADERS).json())
    assert [p["gender"] for p in patients] == ["male"]
    total = http.get("/deid/Observation", params={"_total": "accurate", "_count": "2"},
                     headers=HEADERS).json()
    assert total["total"] == READINGS  # b's readings only: counted on what is released
    counted = http.get("/deid/Observation", params={"_summary": "count"}, headers=HEADERS)
    assert counted.json()["total"] == READINGS
    by_subject = http.get("/deid/Observation", params={"subject": f"Patient/{a}"},
                          headers=HEADERS).json()
    assert entries(by_subject) == []
    included = http.get("/deid/Observation", params={"_include": "Observation:subject",
                                                     "_count": "100"}, headers=HEADERS).json()
    assert entries(included) and not any(names_a(r, a) for r in entries(included))
    revincluded = http.get("/deid/Patient", params={"_revinclude": "Observation:subject"},
                           headers=HEADERS).json()
    assert len(entries(revincluded)) == 1 + READINGS
    # clinical care is not affected
    assert http.get("/Patient/obj-a").status_code == 200
    assert len(entries(http.get("/Observation", params={"subject": "Patient/obj-a"}).json())) \
        == READINGS

    withdraw(http, consent_id)
    assert http.get(f"/deid/Patient/{a}", headers=HEADERS).status_code == 200
    total = http.get("/deid/Observation", params={"_total": "accurate"}, headers=HEADERS).json()
    assert total["total"] == 2 * READINGS
    # a deleted objection is withdrawn too
    consent_id = object_(http)
    assert http.get(f"/deid/Patient/{a}", headers=HEADERS).status_code == 404
    assert http.delete(f"/Consent/{consent_id}").status_code in (200, 204)
    assert http.get(f"/deid/Patient/{a}", headers=HEADERS).status_code == 200


def test_an_export_started_before_the_objection_lacks_what_it_writes_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export checks objections chunk by chunk: with chunks of two lines, the
    objection recorded while the second chunk of readings is read leaves that chunk and
    every later one (the Patient file included) without patient A."""
    from fhir_server.deid import export
    from fhir_server.deid.keys import signing_key
    from fhir_server.service.fhir import FhirService
    from fhir_server.storage import open_storage

    monkeypatch.setattr(export, "CHUNK", 2)
    config = settings(tmp_path)
    service = FhirService(open_storage(config.db_url), config)
    for resource in population():
        service.resources.update(resource["resourceType"], resource["id"], resource)
    calls = []

    def progress(n: int) -> None:
        calls.append(n)
        if len(calls) == 3:  # the Patients (one batch), the first readings, then here
            service.resources.create("Consent", objection_consent("obj-a", "phone", "2026-12-07"))

    key = signing_key(SECRET.encode())
    manifest = export.run_export(service, engine(tmp_path), tmp_path / "out", key,
                                 ["Patient", "Observation"], progress)
    service.storage.close()
    pseudonyms = engine(tmp_path).pseudonyms
    observations = (tmp_path / "out" / "Observation.ndjson").read_text()
    assert pseudonyms.pseudonym("Observation", "a-1") in observations  # before: written
    for n in range(2, READINGS + 1):
        assert pseudonyms.pseudonym("Observation", f"a-{n}") not in observations
    for n in range(1, READINGS + 1):
        assert pseudonyms.pseudonym("Observation", f"b-{n}") in observations
    patients = (tmp_path / "out" / "Patient.ndjson").read_text()
    assert pseudonyms.pseudonym("Patient", "obj-a") not in patients
    assert pseudonyms.pseudonym("Patient", "obj-b") in patients
    assert manifest["suppressedResources"]["byObjection"] == READINGS  # a-2..a-5 and A
    counts = {o["type"]: o["count"] for o in manifest["output"]}
    assert counts == {"Observation": 2 * READINGS - (READINGS - 1), "Patient": 1}


def test_a_view_store_never_serves_an_objecting_patient(tmp_path: Path) -> None:
    from fhir_server.deid.views import ViewStore, fill, fingerprint, follow, view_path
    from fhir_server.service.fhir import FhirService
    from fhir_server.storage import open_storage

    views = tmp_path / "views"
    config = settings(tmp_path, deid_views=str(views))
    service = FhirService(open_storage(config.db_url), config)
    for resource in population():
        service.resources.update(resource["resourceType"], resource["id"], resource)
    store = ViewStore(view_path(views, "open"), fingerprint(engine(tmp_path)))
    types = ["Patient", "Observation"]
    fill(service, engine(tmp_path), store, types)
    assert store.count() == 2 + 2 * READINGS
    a = engine(tmp_path).pseudonyms.pseudonym("Patient", "obj-a")
    consent = service.resources.create(
        "Consent", objection_consent("obj-a", "portal", "2026-12-07")).stored.id
    with RunningServer(config) as running, httpx.Client(base_url=running.url, timeout=120) as http:
        # the rows are still there, and never served
        assert store.count() == 2 + 2 * READINGS
        assert http.get(f"/deid/Patient/{a}", headers=HEADERS).status_code == 404
        found = entries(http.get("/deid/Observation", params={"_count": "100"},
                                 headers=HEADERS).json())
        assert len(found) == READINGS and not any(names_a(r, a) for r in found)
        report = follow(service, engine(tmp_path), store, types)
        assert report.removed == 1 + READINGS and store.count() == 1 + READINGS
        consent_json = orjson.loads(service.storage.read("Consent", consent).json)
        consent_json["status"] = "inactive"
        service.resources.update("Consent", consent, consent_json)
        assert http.get(f"/deid/Patient/{a}", headers=HEADERS).status_code == 200
        fill(service, engine(tmp_path), store, types)
        assert store.count() == 2 + 2 * READINGS
    service.storage.close()
