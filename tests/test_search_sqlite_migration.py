"""SQLite schema 1 -> 2 (date rows keyed by the resource's patient, widest period per
parameter) -> 3 (partial url and identifier indexes on reference rows) -> 4 (resources by
type in pk order) -> 5 (full-text rows, backfilled from the stored JSON): a database
written with schema 1 is migrated when opened and answers patient + date, reference and
`_content` searches exactly as a new one does."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from urllib.parse import parse_qsl

import orjson
import pytest

from fhir_server.search.extract import IndexExtractor
from fhir_server.search.query import parse_search
from fhir_server.search.registry import SearchParamRegistry
from fhir_server.storage.sqlite import SCHEMA_VERSION, SqliteStorage

REGISTRY = SearchParamRegistry.default()


def observation(rid: str, patient: str, effective: dict) -> dict:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "99504-3"}]},
        "subject": {"reference": f"Patient/{patient}"},
        **effective,
    }


FOREIGN = "https://other.example/fhir/Patient/p9"
RESOURCES = [
    {**observation("a", "p1", {"effectiveDateTime": "2024-01-01T10:00:00Z"}),
     "note": [{"text": "Contrôle à jeun"}]},
    observation("b", "p1", {"effectivePeriod": {"start": "2023-12-01", "end": "2024-02-01"}}),
    observation("c", "p2", {"effectiveDateTime": "2024-01-01T11:00:00Z"}),
    observation("d", "p1", {"effectiveDateTime": "2024-03-01T10:00:00Z"}),
    {**observation("e", "p3", {}), "subject": {"reference": FOREIGN}},
    {**observation("f", "p3", {}), "subject": {"identifier": {"system": "urn:s", "value": "9"}}},
]
QUERIES = [
    ("patient=p1&date=ge2024-01-01&date=lt2024-01-02", ["a", "b"]),
    ("patient=p1&date=ge2024-02-15", ["d"]),
    ("patient=p2&date=2024-01-01", ["c"]),
    ("patient=Patient/p1&date=gt2024-01-31", ["b", "d"]),
    (f"subject={FOREIGN}", ["e"]),
    ("subject:identifier=urn:s|9", ["f"]),
    ("subject:identifier=9", ["f"]),
    ("_content=controle", ["a"]),  # 5: backfilled from the JSON
]


def search(storage: SqliteStorage, query: str) -> list[str]:
    parsed = parse_search("Observation", parse_qsl(query), REGISTRY)
    return [m.id for m in storage.search(parsed, 50, None).matches]


def write(storage: SqliteStorage) -> None:
    extractor = IndexExtractor(REGISTRY, fulltext=True)
    with storage.transaction() as tx:
        for resource in RESOURCES:
            entries = extractor.extract(resource)
            raw = orjson.dumps(resource)
            tx.put("Observation", resource["id"], 1, time.time(), raw, entries, "PUT")


def downgrade_to_schema_1(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(
        "DROP INDEX idx_date_owner; ALTER TABLE idx_date DROP COLUMN owner; "
        "DROP TABLE date_spans; DROP INDEX idx_reference_url; "
        "DROP INDEX idx_reference_identifier; "
        "CREATE INDEX idx_reference_url ON idx_reference (pid, url, pk); "
        "CREATE INDEX idx_reference_identifier ON idx_reference (pid, ivalue, isystem, pk); "
        "DROP TABLE fulltext; "
        "PRAGMA user_version=1;"
    )
    conn.close()


@pytest.fixture(scope="module")
def storages(tmp_path_factory: pytest.TempPathFactory):
    tmp_path = tmp_path_factory.mktemp("migration")
    fresh = SqliteStorage(str(tmp_path / "fresh.db"))
    write(fresh)
    old_path = tmp_path / "old.db"
    old = SqliteStorage(str(old_path))
    write(old)
    old.close()
    downgrade_to_schema_1(old_path)
    migrated = SqliteStorage(str(old_path))
    yield fresh, migrated
    fresh.close()
    migrated.close()


def test_the_migration_sets_owners_and_version(storages):
    _, migrated = storages
    version = migrated._writer.execute("PRAGMA user_version").fetchone()[0]
    assert version == SCHEMA_VERSION == 5
    indexes = {name for (name,) in migrated._writer.execute("SELECT name FROM sqlite_master")}
    assert "resources_type_pk" in indexes
    partial = migrated._writer.execute(
        "SELECT name FROM sqlite_master WHERE name LIKE 'idx_reference_%' AND sql LIKE '%WHERE%'"
    )
    assert sorted(name for (name,) in partial) == [
        "idx_reference_identifier", "idx_reference_url"]
    owners = migrated._writer.execute("SELECT count(*) FROM idx_date WHERE owner='p1'")
    assert owners.fetchone()[0] >= 3
    spans = dict(migrated._writer.execute("SELECT pid, span FROM date_spans"))
    assert max(spans.values()) >= 62 * 86400  # the two-month effectivePeriod


@pytest.mark.parametrize(("query", "expected"), QUERIES)
def test_new_and_migrated_databases_answer_alike(storages, query, expected):
    fresh, migrated = storages
    assert search(fresh, query) == expected
    assert search(migrated, query) == expected


def test_reference_searches_use_the_partial_indexes(storages):
    """`url=?` and `ivalue=?` imply NOT NULL: SQLite keeps using the (now partial) indexes."""
    fresh, _ = storages
    for column, index in (("url", "idx_reference_url"), ("ivalue", "idx_reference_identifier")):
        plan = fresh._writer.execute(
            f"EXPLAIN QUERY PLAN SELECT pk FROM idx_reference WHERE pid=1 AND {column}='x'"
        ).fetchall()
        assert any(index in row[-1] for row in plan), plan
