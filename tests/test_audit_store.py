"""The audit store below HTTP, on both backends: events commit with their write, search,
the chain (several processes writing to one SQLite file), and nothing identifying in logs.

MongoDB runs on mongomock (an in-memory imitation: no MongoDB server can run here), in the
single-writer mode the storage contract suite uses; with MONGODB_URI set these tests do
not change backend (they name theirs).
"""

from __future__ import annotations

import logging
import multiprocessing
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fhir_server.audit import Activity, Agent, open_store
from fhir_server.audit.verify import verify
from fhir_server.model import jsonio
from fhir_server.model.outcome import FhirError
from fhir_server.search.query import parse_search
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage import open_storage
from tests.storage_backends import mongomock_url

CLIENT = Agent(client_id="ward-app", user="dr-martin", address="10.0.0.7")


def glucose(patient_id: str, value: int = 100) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "valueQuantity": {"value": value, "unit": "mg/dL"},
    }


@pytest.fixture(params=["sqlite", "mongomock"])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FhirService]:
    url = f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite" else mongomock_url()
    svc = FhirService(open_storage(url), Settings(db_url=url))
    yield svc
    svc.storage.close()


def search(service: FhirService, *items: tuple[str, str]) -> list[dict]:
    query = parse_search("AuditEvent", list(items), service.registry, strict=True)
    page = service.storage.search(query, 100, None)
    return [jsonio.loads(stored.json) for stored in page.matches]


def test_a_write_and_its_event_commit_together(service: FhirService) -> None:
    trail = service.audit
    with trail.activity(Activity(CLIENT, "create", "POST /Observation")):
        created = service.resources.create("Observation", glucose("p1"))
    [event] = search(service, ("patient", "p1"))
    assert event["subtype"][0]["code"] == "create" and event["outcome"] == "0"
    assert event["agent"][0]["who"]["identifier"]["value"] == "ward-app"
    assert {"reference": f"Observation/{created.stored.id}"} in [
        e.get("what") for e in event["entity"]
    ]

    class Boom(Exception):
        pass

    head = trail.store.head()
    with pytest.raises(Boom), service.storage.transaction() as tx:
        service.resources.create_in(tx, "Observation", glucose("p2"))
        raise Boom  # after the write, before the commit
    assert trail.store.head() == head  # no event was appended with the undone write
    assert search(service, ("patient", "p2")) == []
    assert service.storage.count("Observation") == 1
    assert verify(trail.store).ok


def test_reads_are_queued_and_stored(service: FhirService) -> None:
    service.resources.create("Observation", glucose("p3"))
    with service.audit.activity(Activity(CLIENT, "search-type", "GET /Observation")):
        query = parse_search("Observation", [("subject", "Patient/p3")], service.registry)
        assert len(service.storage.search(query, 10, None).matches) == 1
    service.audit.flush()
    [event] = search(service, ("patient", "p3"), ("subtype", "search-type"))
    assert event["action"] == "E"
    assert event["entity"][0]["detail"] == [{"type": "resources-returned", "valueString": "1"}]
    assert search(service, ("agent", "ward-app"), ("altid", "dr-martin")) == [event]
    assert search(service, ("address", "10.0.0")) == [event]


def test_audit_events_are_refused_at_the_storage_door(service: FhirService) -> None:
    with pytest.raises(FhirError) as refused, service.storage.transaction() as tx:
        service.resources.create_in(tx, "AuditEvent", {"resourceType": "AuditEvent"})
    assert refused.value.status == 405


def test_a_tampered_mongo_record_is_reported() -> None:
    """mongomock: the same checks as on SQLite, on the backend's own documents."""
    url = mongomock_url()
    storage = open_storage(url)
    svc = FhirService(storage, Settings(db_url=url))
    for n in range(4):
        svc.resources.create("Observation", glucose(f"m{n}"))
    store = svc.audit.store
    assert verify(store).ok and verify(store).records >= 4
    store.collection.update_one({"_id": 2}, {"$set": {"out": "4"}})
    store.collection.delete_one({"_id": 3})
    problems = verify(store).problems
    assert "record 2: its search index does not match its content (edited)" in problems
    assert "record 3 missing (deleted)" in problems
    svc.storage.close()


def _create_many(db_url: str, prefix: str, count: int) -> None:
    svc = FhirService(open_storage(db_url), Settings(db_url=db_url))
    agent = Agent(client_id=prefix)
    for n in range(count):
        with svc.audit.activity(Activity(agent, "create", f"POST /Observation ({n})")):
            svc.resources.create("Observation", glucose(f"{prefix}-{n % 3}", n))
    svc.storage.close()


def test_writers_in_several_processes_keep_one_chain(tmp_path: Path) -> None:
    """Two processes creating at once on one SQLite file: the chain stays one line (the
    writers take turns through the file lock, and each appends after the head it reads)."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    FhirService(open_storage(url), Settings(db_url=url)).storage.close()  # schema first
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_create_many, args=(url, name, 40)) for name in ("one", "two")
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=600)
        assert worker.exitcode == 0
    storage = open_storage(url)
    report = verify(open_store(storage))
    storage.close()
    assert report.ok, report.problems
    with sqlite3.connect(tmp_path / "shared.db") as conn:
        clients = dict(
            conn.execute(
                "SELECT ref, count(*) FROM audit_ref WHERE role = 'c' GROUP BY ref"
            ).fetchall()
        )
        seqs = [row[0] for row in conn.execute("SELECT seq FROM audit_event ORDER BY seq")]
    assert clients["one"] == clients["two"] == 40
    assert seqs == list(range(1, len(seqs) + 1))


def test_nothing_identifying_reaches_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Even when storing events fails, the log says how many, never whose."""
    url = f"sqlite:///{tmp_path / 'log.db'}"
    svc = FhirService(open_storage(url), Settings(db_url=url))
    svc.resources.create("Observation", glucose("secret-patient-42"))
    with sqlite3.connect(tmp_path / "log.db") as conn:
        conn.execute("DROP TABLE audit_ref")  # the next queued append fails
    caplog.set_level(logging.DEBUG)
    with svc.audit.activity(Activity(CLIENT, "search-type", "GET /Observation?subject=x")):
        query = parse_search(
            "Observation", [("subject", "Patient/secret-patient-42")], svc.registry
        )
        svc.storage.search(query, 10, None)
    svc.audit.flush()
    assert "could not store 1 audit event(s)" in caplog.text
    assert "secret-patient-42" not in caplog.text and "dr-martin" not in caplog.text
    svc.storage.close()
