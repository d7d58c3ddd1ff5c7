"""The Storage contract: what every backend must do, checked below the HTTP layer.

Run against each backend of `storage_backends.BACKENDS` (SQLite for real; MongoDB adds
itself there).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fhir_server.search.types import ReferenceEntry, TokenEntry
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage.base import Storage
from tests.storage_backends import BACKENDS


@pytest.fixture(params=sorted(BACKENDS))
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    store = BACKENDS[request.param](tmp_path)
    yield store
    store.close()


@pytest.fixture
def service(storage: Storage) -> FhirService:
    return FhirService(storage, Settings(db_url="unused"))


def query(service: FhirService, rtype: str, **params: str):
    return service.search.parse(rtype, list(params.items()), strict=True)


def put(storage: Storage, rtype: str, rid: str, version: int, when: float, index=()) -> None:
    with storage.transaction() as tx:
        tx.put(rtype, rid, version, when, b'{"v":%d}' % version, list(index), "PUT")


def test_put_read_vread_and_unknown(storage: Storage) -> None:
    put(storage, "Patient", "a", 1, 1000.0)
    put(storage, "Patient", "a", 2, 1001.0)
    current = storage.read("Patient", "a")
    assert current is not None and current.version == 2 and current.json == b'{"v":2}'
    assert not current.deleted
    first = storage.vread("Patient", "a", 1)
    assert first is not None and first.json == b'{"v":1}' and first.last_updated == 1000.0
    assert storage.read("Patient", "zzz") is None
    assert storage.vread("Patient", "a", 3) is None
    assert storage.read("Observation", "a") is None


def test_delete_is_a_version_and_history_keeps_all(storage: Storage) -> None:
    put(storage, "Patient", "d", 1, 2000.0, [TokenEntry("gender", None, "female", None)])
    with storage.transaction() as tx:
        tx.delete("Patient", "d", 2, 2001.0)
    current = storage.read("Patient", "d")
    assert current is not None and current.deleted and current.version == 2
    page = storage.history("Patient", "d", None, None, 10, None)
    assert [(e.version, e.deleted) for e in page.entries] == [(2, True), (1, False)]
    assert storage.count("Patient") == 0


def test_transaction_rolls_back_everything(storage: Storage) -> None:
    put(storage, "Patient", "keep", 1, 3000.0)
    with pytest.raises(RuntimeError), storage.transaction() as tx:
        tx.put("Patient", "new", 1, 3001.0, b"{}", [], "POST")
        tx.put("Patient", "keep", 2, 3001.0, b'{"changed":1}', [], "PUT")
        tx.delete("Patient", "keep", 3, 3002.0)
        raise RuntimeError("abort")
    assert storage.read("Patient", "new") is None
    kept = storage.read("Patient", "keep")
    assert kept is not None and kept.version == 1 and not kept.deleted


def test_transaction_sees_its_own_writes(storage: Storage, service: FhirService) -> None:
    with storage.transaction() as tx:
        tx.put(
            "Patient",
            "own",
            1,
            4000.0,
            b"{}",
            [TokenEntry("identifier", "urn:s", "v1", None)],
            "POST",
        )
        assert tx.read("Patient", "own") is not None
        assert tx.search_ids(query(service, "Patient", identifier="urn:s|v1"), 2) == ["own"]


def test_history_levels_since_and_paging(storage: Storage) -> None:
    for i in range(5):
        put(storage, "Observation", f"o{i}", 1, 5000.0 + i)
    put(storage, "Patient", "p", 1, 5010.0)
    system = storage.history(None, None, None, None, 100, None)
    assert [e.id for e in system.entries][:2] == ["p", "o4"]
    typed = storage.history("Observation", None, 5002.0, None, 2, None)
    assert [e.id for e in typed.entries] == ["o4", "o3"]
    assert typed.next_cursor
    rest = storage.history("Observation", None, 5002.0, None, 2, typed.next_cursor)
    assert [e.id for e in rest.entries] == ["o2"]
    assert rest.next_cursor is None


def test_history_at_gives_version_current_then(storage: Storage) -> None:
    put(storage, "Patient", "t", 1, 6000.0)
    put(storage, "Patient", "t", 2, 6010.0)
    at = storage.history("Patient", "t", None, 6005.0, 10, None)
    assert [e.version for e in at.entries] == [1]


def test_index_entries_replace_on_update_and_go_on_delete(
    storage: Storage, service: FhirService
) -> None:
    put(
        storage,
        "Observation",
        "x",
        1,
        7000.0,
        [ReferenceEntry("subject", "Patient", "p1", None, None, None)],
    )
    put(
        storage,
        "Observation",
        "x",
        2,
        7001.0,
        [ReferenceEntry("subject", "Patient", "p2", None, None, None)],
    )
    with storage.transaction() as tx:
        assert tx.search_ids(query(service, "Observation", subject="Patient/p1"), 5) == []
        assert tx.search_ids(query(service, "Observation", subject="Patient/p2"), 5) == ["x"]
        tx.delete("Observation", "x", 3, 7002.0)
        assert tx.search_ids(query(service, "Observation", subject="Patient/p2"), 5) == []


def test_writers_are_serialised(storage: Storage) -> None:
    """Read-check-write inside transactions from many threads loses no increment."""
    put(storage, "Basic", "counter", 1, 8000.0)

    def bump() -> None:
        for _ in range(20):
            with storage.transaction() as tx:
                current = tx.read("Basic", "counter")
                assert current is not None
                tx.put("Basic", "counter", current.version + 1, 8001.0, b"{}", [], "PUT")

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    current = storage.read("Basic", "counter")
    assert current is not None and current.version == 81


def test_a_keys_only_search_finds_the_same_page_without_the_json(
    storage: Storage, service: FhirService
) -> None:
    """`bodies=False` (the de-identification facade with view stores): the same matches,
    cursors and includes; a backend may leave the matches' JSON out (SQLite does)."""
    for n in range(5):
        put(storage, "Patient", f"kp{n}", 1, 4000.0 + n)
        put(
            storage,
            "Observation",
            f"ko{n}",
            1,
            4100.0 + n,
            [ReferenceEntry("subject", "Patient", f"kp{n}", None, None, None)],
        )
    search = query(service, "Observation", _count="3", _include="Observation:subject")
    full = storage.search(search, 3, None)
    keys = storage.search(search, 3, None, bodies=False)
    assert [s[:4] for s in keys.matches] == [s[:4] for s in full.matches]
    assert len(full.matches) == 3 and keys.next_cursor == full.next_cursor
    assert keys.included == full.included and len(full.included) == 3
    for stored in keys.matches:
        assert not stored.deleted
        assert stored.json in (None, b'{"v":1}')
