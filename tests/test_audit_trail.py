"""The audit trail over HTTP (uvicorn + SQLite): what is recorded, protection, the chain.

Events are read back through the normal search API (`GET /AuditEvent`), after the
server's writer has stored its queue (`flush`, a wait on the queue, not a sleep).
"""

from __future__ import annotations

import base64
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_server.settings import Settings
from tests.conftest import RunningServer

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def patient(name: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": name}]}


def glucose(patient_id: str, value: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": "2024-03-05T10:00:00Z",
        "valueQuantity": {
            "value": value,
            "unit": "mg/dL",
            "system": "http://unitsofmeasure.org",
            "code": "mg/dL",
        },
    }


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audit") / "diatabase.db"


@pytest.fixture(scope="module")
def server(db_path: Path) -> Iterator[RunningServer]:
    with RunningServer(Settings(db_url=f"sqlite:///{db_path}")) as running:
        yield running


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def flush(server: RunningServer) -> None:
    server.app.state.fhir.audit.flush()


def events(http: httpx.Client, query: str = "") -> list[dict[str, Any]]:
    found, url = [], f"/AuditEvent?_count=200&{query}"
    while url:
        response = http.get(url)
        assert response.status_code == 200, response.text[:300]
        bundle = response.json()
        found += [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), "")
    return found


def summary(event: dict[str, Any]) -> tuple:
    """What an auditor reads of an event: interaction, action, outcome, patients, data."""
    patients, data = [], []
    for entity in event.get("entity", []):
        reference = entity.get("what", {}).get("reference")
        if reference and entity["role"]["code"] == "1":
            patients.append(reference.removeprefix("Patient/"))
        elif reference:
            data.append(reference)
    return (
        event["subtype"][0]["code"],
        event["action"],
        event["outcome"],
        tuple(sorted(patients)),
        tuple(sorted(data)),
    )


def request_of(event: dict[str, Any]) -> str:
    for entity in event.get("entity", []):
        if "query" in entity:
            return base64.b64decode(entity["query"]).decode()
    return ""


def test_a_session_is_recorded_as_it_happened(server: RunningServer, http: httpx.Client) -> None:
    flush(server)
    before = {e["id"] for e in events(http, "site=rest")}
    p = http.post("/Patient", json=patient("Martin"), headers=FHIR_JSON).json()["id"]
    q = http.post("/Patient", json=patient("Bernard"), headers=FHIR_JSON).json()["id"]
    obs = http.post("/Observation", json=glucose(p, 110), headers=FHIR_JSON).json()
    assert http.get(f"/Observation/{obs['id']}").status_code == 200
    found = http.get(f"/Observation?subject=Patient/{p}&code=2339-0")
    assert found.json()["total"] == 1
    obs["valueQuantity"]["value"] = 120
    assert http.put(f"/Observation/{obs['id']}", json=obs, headers=FHIR_JSON).status_code == 200
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": glucose(q, v), "request": {"method": "POST", "url": "Observation"}}
            for v in (90, 95)
        ],
    }
    assert http.post("/", json=bundle, headers=FHIR_JSON).status_code == 200
    assert http.get(f"/Patient/{q}/$everything").status_code == 200
    assert http.get("/Observation/no-such-id").status_code == 404
    assert http.delete(f"/Observation/{obs['id']}").status_code == 200
    flush(server)

    ours = [
        e
        for e in events(http, "site=rest")
        if e["id"] not in before and not request_of(e).startswith("GET /AuditEvent")
    ]
    got = Counter(summary(e) for e in ours)
    expected = Counter(
        [
            ("create", "C", "0", (p,), (f"Patient/{p}",)),
            ("create", "C", "0", (q,), (f"Patient/{q}",)),
            ("create", "C", "0", (p,), (f"Observation/{obs['id']}",)),
            ("read", "R", "0", (p,), (f"Observation/{obs['id']}",)),
            ("search-type", "E", "0", (p,), ()),
            ("update", "U", "0", (p,), (f"Observation/{obs['id']}",)),
            ("transaction", "E", "0", (q,), tuple(sorted(_written(ours, "transaction")))),
            ("operation", "E", "0", (q,), (f"Patient/{q}",)),
            ("read", "R", "4", (), ("Observation/no-such-id",)),
            ("delete", "D", "0", (p,), (f"Observation/{obs['id']}",)),
        ]
    )
    assert got == expected
    search = next(e for e in ours if e["subtype"][0]["code"] == "search-type")
    assert request_of(search) == f"GET /Observation?subject=Patient/{p}&code=2339-0"
    query_entity = next(x for x in search["entity"] if "query" in x)
    assert query_entity["detail"] == [{"type": "resources-returned", "valueString": "1"}]
    transaction = next(e for e in ours if e["subtype"][0]["code"] == "transaction")
    assert len(_written(ours, "transaction")) == 2
    assert all(ref.startswith("Observation/") for ref in _written(ours, "transaction"))
    # who: the client's network address, on every event
    assert {e["agent"][0]["network"]["address"] for e in ours} == {"127.0.0.1"}
    assert transaction["recorded"] and transaction["meta"]["versionId"] == "1"


def _written(found: list[dict[str, Any]], interaction: str) -> list[str]:
    event = next(e for e in found if e["subtype"][0]["code"] == interaction)
    return [x["what"]["reference"] for x in event["entity"] if x.get("role", {}).get("code") == "4"]


def test_audit_search_by_patient_date_and_paging(server: RunningServer, http: httpx.Client) -> None:
    p = http.post("/Patient", json=patient("Petit"), headers=FHIR_JSON).json()["id"]
    for value in (100, 101, 102):
        http.post("/Observation", json=glucose(p, value), headers=FHIR_JSON)
    flush(server)
    mine = events(http, f"patient={p}")
    assert len(mine) == 4 and {summary(e)[0] for e in mine} == {"create"}
    assert events(http, f"patient=Patient/{p}&action=C&date=ge2020-01-01") == mine
    assert events(http, f"patient={p}&date=lt2020-01-01") == []
    paged = http.get(f"/AuditEvent?patient={p}&_count=3&_sort=date&_total=accurate").json()
    assert paged["total"] == 4 and len(paged["entry"]) == 3
    following = next(x["url"] for x in paged["link"] if x["relation"] == "next")
    rest = http.get(following).json()["entry"]
    ids = [e["resource"]["id"] for e in paged["entry"] + rest]
    assert sorted(ids, key=int) == ids and len(set(ids)) == 4
    one = mine[0]
    read = http.get(f"/AuditEvent/{one['id']}")
    assert read.status_code == 200 and read.json() == one
    assert http.get("/AuditEvent?patient.name=x").status_code == 400  # chains: refused
    assert http.get("/AuditEvent?code=x").status_code in (200, 400)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/AuditEvent", {"resourceType": "AuditEvent"}),
        ("PUT", "/AuditEvent/1", {"resourceType": "AuditEvent", "id": "1"}),
        ("PUT", "/AuditEvent?action=C", {"resourceType": "AuditEvent"}),
        ("DELETE", "/AuditEvent/1", None),
        ("DELETE", "/AuditEvent?action=C", None),
        ("PATCH", "/AuditEvent/1", [{"op": "remove", "path": "/entity"}]),
    ],
)
def test_audit_events_cannot_be_written_through_the_api(
    server: RunningServer, http: httpx.Client, method: str, path: str, body: Any
) -> None:
    http.post("/Patient", json=patient("Durand"), headers=FHIR_JSON)
    flush(server)
    original = http.get("/AuditEvent/1").json()
    content_type = "application/json-patch+json" if method == "PATCH" else "application/fhir+json"
    response = http.request(
        method, path, json=body, headers={"Content-Type": content_type} if body else {}
    )
    assert response.status_code == 405, response.text[:300]
    assert response.json()["resourceType"] == "OperationOutcome"
    assert response.headers["allow"] == "GET"
    assert http.get("/AuditEvent/1").json() == original


def test_bundle_entries_cannot_write_audit_events(
    server: RunningServer, http: httpx.Client
) -> None:
    entries = [
        {"resource": patient("Roux"), "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "DELETE", "url": "AuditEvent/1"}},
    ]
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    refused = http.post("/", json=transaction, headers=FHIR_JSON)
    assert refused.status_code == 405
    assert http.get("/Patient?family=Roux").json()["total"] == 0  # nothing of it stored
    batch = {**transaction, "type": "batch"}
    answered = http.post("/", json=batch, headers=FHIR_JSON).json()
    statuses = [e["response"]["status"] for e in answered["entry"]]
    assert statuses[0].startswith("201") and statuses[1].startswith("405")
    assert http.get("/AuditEvent/1").status_code == 200


def test_a_failed_transaction_leaves_neither_write_nor_its_event(
    server: RunningServer, http: httpx.Client, db_path: Path
) -> None:
    flush(server)
    rows_before = _count(db_path, "audit_event")
    entries = [
        {"resource": patient("Lefebvre"), "request": {"method": "POST", "url": "Patient"}},
        {
            "resource": {"resourceType": "Observation", "status": "not-a-status"},
            "request": {"method": "POST", "url": "Observation"},
        },
    ]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    assert http.post("/", json=bundle, headers=FHIR_JSON).status_code == 400
    assert http.get("/Patient?family=Lefebvre").json()["total"] == 0
    flush(server)
    failed = [e for e in events(http, "outcome=4&subtype=transaction")]
    assert failed and failed[0]["action"] == "E"
    # one event for the refusal (queued, outcome 4), none committed with the write
    ours = _count(db_path, "audit_event") - rows_before
    assert ours == 2  # the refused transaction, and the search for Lefebvre
    assert not any(
        e for e in events(http, "outcome=0&subtype=transaction") if "Lefebvre" in str(e)
    )


def test_the_chain_is_intact_and_an_edit_or_a_deletion_is_reported(
    tmp_path: Path,
) -> None:
    path = tmp_path / "chain.db"
    with (
        RunningServer(Settings(db_url=f"sqlite:///{path}")) as running,
        httpx.Client(base_url=running.url, timeout=60) as client,
    ):
        pid = client.post("/Patient", json=patient("Moreau"), headers=FHIR_JSON).json()["id"]
        for value in range(5):
            client.post("/Observation", json=glucose(pid, 100 + value), headers=FHIR_JSON)
            client.get(f"/Observation?subject=Patient/{pid}")
    # the server is stopped: every queued read event was stored on the way out
    assert _count(path, "audit_event") >= 11
    ok = verify(path)
    assert ok.returncode == 0 and "chain intact" in ok.stdout, ok.stdout

    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE audit_event SET json = replace(json, '\"outcome\":\"0\"', '\"outcome\":\"4\"') "
            "WHERE seq = 4"
        )
    edited = verify(path)
    assert edited.returncode == 1
    assert "record 4 does not match its hash" in edited.stdout
    assert pid not in edited.stdout  # names records, never their content

    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE audit_event SET json = (SELECT json FROM audit_event WHERE seq = 5) "
                     "WHERE seq = 4")
        conn.execute("DELETE FROM audit_event WHERE seq = 7")
        last = conn.execute("SELECT max(seq) FROM audit_event").fetchone()[0]
        conn.execute("DELETE FROM audit_event WHERE seq = ?", (last,))
    broken = verify(path)
    assert broken.returncode == 1
    assert "record 4 holds record 5: records were moved" in broken.stdout
    assert "record 7 missing (deleted)" in broken.stdout
    assert f"records {last} to {last} missing (the tail was cut)" in broken.stdout


def test_an_edited_index_row_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    with (
        RunningServer(Settings(db_url=f"sqlite:///{path}")) as running,
        httpx.Client(base_url=running.url, timeout=60) as client,
    ):
        client.post("/Patient", json=patient("Simon"), headers=FHIR_JSON)
    with sqlite3.connect(path) as conn:
        seq = conn.execute("SELECT max(seq) FROM audit_ref WHERE role = 'p'").fetchone()[0]
        conn.execute(
            "UPDATE audit_ref SET ref = 'someone-else' WHERE seq = ? AND role = 'p'", (seq,)
        )
    report = verify(path)
    assert report.returncode == 1
    assert f"record {seq}: its search index does not match its content" in report.stdout


def verify(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fhir_server.cli", "audit", "verify", "--db", f"sqlite:///{path}"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
