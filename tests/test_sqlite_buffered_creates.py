"""SQLite buffers a transaction's creates (resource, history and index rows) and writes them
at once: reads, updates, deletes, searches and savepoints inside the same transaction must
still see and undo exactly what the spec says, and every row must land under its own pk."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fhir_server.search.types import TokenEntry
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage.sqlite import SqliteStorage


def token(value: str) -> list[TokenEntry]:
    return [TokenEntry("identifier", "urn:test", value, None)]


def create(tx, rid: str) -> None:
    tx.put("Patient", rid, 1, 1000.0, b'{"id":"%s"}' % rid.encode(), token(rid), "POST")


@pytest.fixture
def storage(tmp_path: Path) -> SqliteStorage:
    store = SqliteStorage(str(tmp_path / "buffered.db"))
    yield store
    store.close()


def rows(storage: SqliteStorage, sql: str) -> list[tuple]:
    conn = sqlite3.connect(storage.path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_mixed_writes_in_one_transaction(storage: SqliteStorage) -> None:
    service = FhirService(storage, Settings(db_url="unused"))
    query = service.search.parse("Patient", [("identifier", "urn:test|b")], strict=True)
    with storage.transaction() as tx:
        create(tx, "a")
        create(tx, "b")
        assert tx.read("Patient", "a") is not None  # a buffered create is readable
        tx.put("Patient", "a", 2, 1001.0, b'{"v":2}', token("a2"), "PUT")  # then updated
        create(tx, "c")
        assert tx.search_ids(query, 2) == ["b"]
        tx.put("Patient", "d", 1, 1002.0, b"{}", token("d"), "PUT")  # a client-chosen id
        create(tx, "e")
        tx.delete("Patient", "c", 2, 1003.0)
    assert rows(storage, "SELECT id, version, deleted FROM resources ORDER BY pk") == [
        ("a", 2, 0),
        ("b", 1, 0),
        ("c", 2, 1),
        ("d", 1, 0),
        ("e", 1, 0),
    ]
    assert rows(storage, "SELECT count(*) FROM history")[0][0] == 7
    # every index row under the pk of its own resource
    assert rows(
        storage,
        "SELECT r.id, t.code FROM idx_token t JOIN resources r ON r.pk = t.pk ORDER BY r.pk",
    ) == [("a", "a2"), ("b", "b"), ("d", "d"), ("e", "e")]


def test_a_savepoint_undoes_only_its_creates(storage: SqliteStorage) -> None:
    with storage.transaction() as tx:
        create(tx, "kept")
        with pytest.raises(RuntimeError), tx.savepoint():
            create(tx, "undone")
            raise RuntimeError("this entry fails")
        create(tx, "after")
    assert rows(storage, "SELECT id FROM resources ORDER BY pk") == [("kept",), ("after",)]
    assert rows(storage, "SELECT id FROM history ORDER BY rowid") == [("kept",), ("after",)]
    assert rows(
        storage, "SELECT r.id FROM idx_token t JOIN resources r ON r.pk = t.pk ORDER BY r.pk"
    ) == [("kept",), ("after",)]


def test_a_failed_transaction_leaves_nothing(storage: SqliteStorage) -> None:
    with pytest.raises(RuntimeError), storage.transaction() as tx:
        create(tx, "x")
        create(tx, "y")
        raise RuntimeError("the last entry is invalid")
    assert rows(storage, "SELECT count(*) FROM resources")[0][0] == 0
    assert rows(storage, "SELECT count(*) FROM idx_token")[0][0] == 0
