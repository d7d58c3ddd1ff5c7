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
from tests.auth_tokens import TestIssuer, bearer
from tests.conftest import RunningServer
from tests.test_ingest_mllp import Listener, oru, segment

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
def issuer(tmp_path_factory: pytest.TempPathFactory) -> TestIssuer:
    return TestIssuer.create(tmp_path_factory.mktemp("issuer"))


@pytest.fixture(scope="module")
def server(db_path: Path, issuer: TestIssuer) -> Iterator[RunningServer]:
    with RunningServer(issuer.settings(db_url=f"sqlite:///{db_path}")) as running:
        yield running


class Clients:
    """Real tokens from the test issuer, one per client of the scripted sessions."""

    def __init__(self, server: RunningServer, issuer: TestIssuer) -> None:
        self.server, self.issuer = server, issuer

    def headers(self, client_id: str, scope: str, user: str | None = None) -> dict[str, str]:
        token = self.issuer.token(
            self.server.url, scope, client_id=client_id, sub=user or client_id
        )
        return {**bearer(token), **FHIR_JSON}


WARD = ("ward-app", "user/Patient.cruds user/Observation.cruds", "dr-martin")
GATEWAY = ("glucose-gateway", "system/Patient.c system/Observation.cs", None)
AUDITOR = ("audit-console", "system/AuditEvent.rs", "auditor-1")
ANALYTICS = ("analytics", "system/*.rs", None)
WRITER = ("admin-tool", "system/*.cruds", None)


@pytest.fixture(scope="module")
def clients(server: RunningServer, issuer: TestIssuer) -> Clients:
    return Clients(server, issuer)


@pytest.fixture(scope="module")
def http(server: RunningServer, clients: Clients) -> Iterator[httpx.Client]:
    """The auditor's client."""
    with httpx.Client(base_url=server.url, timeout=60, headers=clients.headers(*AUDITOR)) as c:
        yield c


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


def who(event: dict[str, Any]) -> tuple[str | None, str | None]:
    """(client id, user) an event names."""
    client = event["agent"][0]["who"].get("identifier", {}).get("value")
    users = [a["who"]["identifier"]["value"] for a in event["agent"] if "altId" in a]
    return client, (users[0] if users else None)


def test_two_clients_sessions_are_recorded_as_they_happened(
    server: RunningServer, clients: Clients, http: httpx.Client
) -> None:
    base = server.url
    with httpx.Client(base_url=base, timeout=60, headers=clients.headers(*WARD)) as ward:
        p = ward.post("/Patient", json=patient("Martin")).json()["id"]
        obs = ward.post("/Observation", json=glucose(p, 110)).json()
        assert ward.get(f"/Observation/{obs['id']}").status_code == 200
        found = ward.get(f"/Observation?subject=Patient/{p}&code=2339-0")
        assert found.json()["total"] == 1
        obs["valueQuantity"]["value"] = 120
        assert ward.put(f"/Observation/{obs['id']}", json=obs).status_code == 200
        assert ward.get("/Observation/no-such-id").status_code == 404
        assert ward.delete(f"/Observation/{obs['id']}").status_code == 200
        assert ward.get(f"/Patient/{p}/$everything").status_code == 200
    with httpx.Client(base_url=base, timeout=60, headers=clients.headers(*GATEWAY)) as gateway:
        q = gateway.post("/Patient", json=patient("Bernard")).json()["id"]
        entries = [
            {"resource": glucose(q, v), "request": {"method": "POST", "url": "Observation"}}
            for v in (90, 95)
        ]
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        assert gateway.post("/", json=bundle).status_code == 200
        assert gateway.get(f"/Observation?subject=Patient/{q}").json()["total"] == 2
        assert gateway.get(f"/Patient/{q}").status_code == 403  # no read scope
    assert httpx.get(f"{base}/Observation", timeout=60).status_code == 401  # no token
    flush(server)

    ward_events = events(http, "agent=ward-app")
    assert {who(e) for e in ward_events} == {("ward-app", "dr-martin")}
    assert Counter(summary(e) for e in ward_events) == Counter(
        [
            ("create", "C", "0", (p,), (f"Patient/{p}",)),
            ("create", "C", "0", (p,), (f"Observation/{obs['id']}",)),
            ("read", "R", "0", (p,), (f"Observation/{obs['id']}",)),
            ("search-type", "E", "0", (p,), ()),
            ("update", "U", "0", (p,), (f"Observation/{obs['id']}",)),
            ("read", "R", "4", (), ("Observation/no-such-id",)),
            ("delete", "D", "0", (p,), (f"Observation/{obs['id']}",)),
            ("operation", "E", "0", (p,), (f"Patient/{p}",)),
        ]
    )
    search = next(e for e in ward_events if e["subtype"][0]["code"] == "search-type")
    assert request_of(search) == f"GET /Observation?subject=Patient/{p}&code=2339-0"
    query_entity = next(x for x in search["entity"] if "query" in x)
    assert query_entity["detail"] == [{"type": "resources-returned", "valueString": "1"}]
    assert {e["agent"][0]["network"]["address"] for e in ward_events} == {"127.0.0.1"}

    gateway_events = events(http, "agent=glucose-gateway")
    assert {who(e) for e in gateway_events} == {("glucose-gateway", None)}
    written = _written(gateway_events, "transaction")
    assert len(written) == 2 and all(ref.startswith("Observation/") for ref in written)
    assert Counter(summary(e) for e in gateway_events) == Counter(
        [
            ("create", "C", "0", (q,), (f"Patient/{q}",)),
            ("transaction", "E", "0", (q,), tuple(sorted(written))),
            ("search-type", "E", "0", (q,), ()),
            ("read", "R", "4", (), (f"Patient/{q}",)),
        ]
    )
    refused = next(e for e in gateway_events if e["outcome"] == "4")
    assert refused["outcomeDesc"].startswith("HTTP 403")
    anonymous = [
        e
        for e in events(http, "outcome=4&subtype=search-type")
        if e["agent"][0]["who"].get("display") == "unauthenticated client"
    ]
    assert anonymous and anonymous[-1]["outcomeDesc"].startswith("HTTP 401")


def test_only_an_audit_scope_finds_audit_events(
    server: RunningServer, clients: Clients, http: httpx.Client
) -> None:
    assert events(http)  # the auditor does
    with httpx.Client(base_url=server.url, timeout=60, headers=clients.headers(*ANALYTICS)) as c:
        refused = c.get("/AuditEvent")
        assert refused.status_code == 403
        assert refused.json()["resourceType"] == "OperationOutcome"
        assert c.get("/AuditEvent/1").status_code == 403
        sideways = [
            "/?_type=AuditEvent",
            "/Patient?_revinclude=AuditEvent:patient",
            "/Patient?_has:AuditEvent:patient:action=C",
        ]
        for path in sideways:
            response = c.get(path)
            assert response.status_code in (200, 400, 403), (path, response.text[:200])
            if response.status_code == 200:
                types = {e["resource"]["resourceType"] for e in response.json().get("entry", [])}
                assert "AuditEvent" not in types, path
    with httpx.Client(base_url=server.url, timeout=60, headers=clients.headers(*WARD)) as ward:
        assert ward.get("/AuditEvent").status_code == 403
        p = ward.post("/Patient", json=patient("Garnier")).json()["id"]
        everything = ward.get(f"/Patient/{p}/$everything").json()
        assert "AuditEvent" not in {e["resource"]["resourceType"] for e in everything["entry"]}


def _written(found: list[dict[str, Any]], interaction: str) -> list[str]:
    event = next(e for e in found if e["subtype"][0]["code"] == interaction)
    return [x["what"]["reference"] for x in event["entity"] if x.get("role", {}).get("code") == "4"]


def test_audit_search_by_patient_date_and_paging(
    server: RunningServer, clients: Clients, http: httpx.Client
) -> None:
    with httpx.Client(base_url=server.url, timeout=60, headers=clients.headers(*WARD)) as ward:
        p = ward.post("/Patient", json=patient("Petit")).json()["id"]
        for value in (100, 101, 102):
            ward.post("/Observation", json=glucose(p, value))
    flush(server)
    # the auditor's own searches are recorded too, naming the patients they showed: the
    # queries below keep to the ward's events
    ward = "agent=ward-app"
    mine = events(http, f"patient={p}&{ward}")
    assert len(mine) == 4 and {summary(e)[0] for e in mine} == {"create"}
    assert events(http, f"patient=Patient/{p}&action=C&date=ge2020-01-01&{ward}") == mine
    assert events(http, f"patient={p}&date=lt2020-01-01") == []
    assert events(http, f"patient={p}&altid=dr-martin&site=rest&subtype=create") == mine
    assert events(http, f"patient={p}&agent=glucose-gateway") == []
    assert events(http, f"entity=Patient/{p}&{ward}") == mine
    created = [r for e in mine for r in summary(e)[4] if r.startswith("Observation/")]
    assert len(created) == 3
    assert [summary(e)[4] for e in events(http, f"entity={created[0]}")] == [(created[0],)]
    paged = http.get(f"/AuditEvent?patient={p}&{ward}&_count=3&_sort=date&_total=accurate")
    paged = paged.json()
    assert paged["total"] == 4 and len(paged["entry"]) == 3
    following = next(x["url"] for x in paged["link"] if x["relation"] == "next")
    rest = http.get(following).json()["entry"]
    ids = [e["resource"]["id"] for e in paged["entry"] + rest]
    assert sorted(ids, key=int) == ids and len(set(ids)) == 4
    flush(server)
    auditor = events(http, f"patient={p}&agent=audit-console")
    assert auditor and {summary(e)[0] for e in auditor} == {"search-type"}
    one = mine[0]
    read = http.get(f"/AuditEvent/{one['id']}")
    assert read.status_code == 200 and read.json() == one
    # refused rather than ignored: an auditor must not take a narrower answer as complete
    for query in ("patient.name=x", "_has:Patient:link:gender=male", "policy=x"):
        assert http.get(f"/AuditEvent?{query}").status_code == 400, query


WRITES = [
    ("POST", "/AuditEvent", {"resourceType": "AuditEvent"}),
    ("PUT", "/AuditEvent/1", {"resourceType": "AuditEvent", "id": "1"}),
    ("PUT", "/AuditEvent?action=C", {"resourceType": "AuditEvent"}),
    ("DELETE", "/AuditEvent/1", None),
    ("DELETE", "/AuditEvent?action=C", None),
    ("PATCH", "/AuditEvent/1", [{"op": "remove", "path": "/entity"}]),
]


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
def test_audit_events_cannot_be_written_through_the_api(
    server: RunningServer, clients: Clients, http: httpx.Client, method: str, path: str, body: Any
) -> None:
    """405 for any client, even one given AuditEvent write scopes (no scope can allow it);
    403 already from authorization for a wildcard scope, which does not cover AuditEvent."""
    with httpx.Client(base_url=server.url, timeout=60, headers=clients.headers(*WARD)) as ward:
        ward.post("/Patient", json=patient("Durand"))
    flush(server)
    original = http.get("/AuditEvent/1").json()
    content_type = "application/json-patch+json" if method == "PATCH" else "application/fhir+json"
    explicit = ("audit-forger", "system/AuditEvent.cruds", None)
    for client, status in ((explicit, 405), (WRITER, 403)):
        headers = {**clients.headers(*client), "Content-Type": content_type}
        response = httpx.request(
            method, f"{server.url}{path}", json=body, headers=headers, timeout=60
        )
        assert response.status_code == status, response.text[:300]
        assert response.json()["resourceType"] == "OperationOutcome"
        if status == 405:
            assert response.headers["allow"] == "GET"
    assert http.get("/AuditEvent/1").json() == original


def test_bundle_entries_cannot_write_audit_events(tmp_path: Path) -> None:
    """In --insecure-dev every scope check passes: the refusal is the audit trail's own."""
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'dev.db'}", insecure_dev=True)
    with (
        RunningServer(settings) as running,
        httpx.Client(base_url=running.url, timeout=60, headers=FHIR_JSON) as dev,
    ):
        dev.post("/Patient", json=patient("Blanc"))
        running.app.state.fhir.audit.flush()
        assert dev.get("/AuditEvent/1").status_code == 200  # development mode reads all
        for method, path, body in WRITES:
            headers = {"Content-Type": "application/json-patch+json"} if method == "PATCH" else {}
            response = dev.request(method, path, json=body, headers=headers)
            assert response.status_code == 405, (method, path)
        entries = [
            {"resource": patient("Roux"), "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "DELETE", "url": "AuditEvent/1"}},
        ]
        transaction = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        assert dev.post("/", json=transaction).status_code == 405
        assert dev.get("/Patient?family=Roux").json()["total"] == 0  # nothing of it stored
        answered = dev.post("/", json={**transaction, "type": "batch"}).json()
        statuses = [e["response"]["status"] for e in answered["entry"]]
        assert statuses[0].startswith("201") and statuses[1].startswith("405")
        assert dev.get("/AuditEvent/1").status_code == 200


def test_a_failed_transaction_leaves_neither_write_nor_its_event(
    server: RunningServer, clients: Clients, http: httpx.Client, db_path: Path
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
    headers = clients.headers(*WARD)
    response = httpx.post(f"{server.url}/", json=bundle, headers=headers, timeout=60)
    assert response.status_code == 400
    flush(server)
    # one event, queued after the rollback: the refusal, naming what was attempted
    assert _count(db_path, "audit_event") - rows_before == 1
    [failed] = [e for e in events(http, "outcome=4&subtype=transaction&agent=ward-app")]
    assert failed["action"] == "E" and failed["outcomeDesc"] == "HTTP 400"
    assert _count_patients(db_path, "Lefebvre") == 0


def test_the_chain_is_intact_and_an_edit_or_a_deletion_is_reported(
    tmp_path: Path,
) -> None:
    path = tmp_path / "chain.db"
    with (
        RunningServer(Settings(db_url=f"sqlite:///{path}", insecure_dev=True)) as running,
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
            'UPDATE audit_event SET json = replace(json, \'"outcome":"0"\', \'"outcome":"4"\') '
            "WHERE seq = 4"
        )
    edited = verify(path)
    assert edited.returncode == 1
    assert "record 4 does not match its hash" in edited.stdout
    assert pid not in edited.stdout  # names records, never their content

    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE audit_event SET json = (SELECT json FROM audit_event WHERE seq = 5) "
            "WHERE seq = 4"
        )
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
        RunningServer(Settings(db_url=f"sqlite:///{path}", insecure_dev=True)) as running,
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


def _count_patients(path: Path, family: str) -> int:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM history WHERE type = 'Patient' AND json LIKE ?",
            (f"%{family}%",),
        )
        return rows.fetchone()[0]


def _count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_mllp_messages_are_audited(
    server: RunningServer, db_path: Path, http: httpx.Client
) -> None:
    """The MLLP listener as `diatabase mllp` runs it, on the server's database: a stored
    message's event commits with its data (one event, naming the peer and the patient), a
    re-sent one and a refused one are recorded when answered."""
    listener = Listener(f"sqlite:///{db_path}")
    try:
        message = oru("AUDIT-1", "AUDIT-INS-1")
        assert segment(listener.send(message), "MSA")[1] == "AA"
        assert segment(listener.send(message), "MSA")[1] == "AA"  # nothing new stored
        refused = message.replace("ORU^R01", "ZZZ^Z01").replace("AUDIT-1", "AUDIT-2")
        assert segment(listener.send(refused), "MSA")[1] in ("AR", "AE")
        listener.service.audit.flush()
    finally:
        listener.close()
    found = sorted(events(http, "site=mllp"), key=lambda e: int(e["id"]))
    assert [(e["outcome"], summary(e)[0]) for e in found] == [
        ("0", "transaction"),
        ("0", "transaction"),
        ("4", "transaction"),
    ]
    stored, again, no = found
    assert stored["agent"][0]["network"]["address"] == "127.0.0.1"
    assert stored["agent"][0]["who"]["display"] == "MSH-3/4 METER^CLINIC"
    assert request_of(stored) == "HL7v2 ORU^R01 control id AUDIT-1"
    patients = summary(stored)[3]
    assert len(patients) == 1 and summary(again)[3] == patients
    assert any(ref.startswith("Observation/") for ref in summary(stored)[4])
    assert summary(again)[4] == () and no["outcomeDesc"].startswith("ACK A")


def test_terminology_is_not_patient_data_unless_refused(
    server: RunningServer, clients: Clients, http: httpx.Client
) -> None:
    """A code check or a ValueSet search is no access to patient data: no event. A refused
    one is a failed authorization: recorded. A terminology request that reaches patient
    data after all (here a search of Patients next to it) is recorded as ever."""
    loinc = "http://loinc.org"
    allowed = clients.headers(*WRITER)
    refused = clients.headers("no-terminology", "system/Observation.c")
    marker = "audit-terminology-probe"
    with httpx.Client(base_url=server.url, timeout=60) as c:
        checked = c.get(
            "/CodeSystem/$validate-code",
            params={"url": loinc, "code": "2339-0", "display": marker},
            headers=allowed,
        )
        assert checked.status_code == 200, checked.text[:300]
        assert c.get(f"/ValueSet?name={marker}", headers=allowed).status_code == 200
        assert c.get(f"/ValueSet?name={marker}", headers=refused).status_code == 403
        assert c.get(f"/Patient?name={marker}", headers=allowed).status_code == 200
    flush(server)
    probes = [(summary(e)[2], request_of(e)) for e in events(http) if marker in request_of(e)]
    assert sorted(probes) == [
        ("0", f"GET /Patient?name={marker}"),
        ("4", f"GET /ValueSet?name={marker}"),
    ]
