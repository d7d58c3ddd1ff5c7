"""A big transaction hands its index rows to a writer thread as it goes (JSON batches that
SQLite inserts without the GIL): the stored rows must be exactly those that executemany at
commit writes (values, SQLite types, order), and a failure anywhere, in the batch itself
included, must leave nothing behind."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from fhir_server.ingest.importer import Importer, ImportOptions
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage import sqlite as sqlite_storage
from fhir_server.storage.sqlite import INDEX_TABLES, SqliteStorage
from fhir_server.storage.sqlite_write_behind import encode_rows

PATIENTS = ("p1", "Hélène-2")
UNITS = (("mg/dL", 92.0), ("mmol/L", 5.4), ("g/L", 1.07), ("%", 7.1))


def observation(n: int) -> dict:
    """Varied on purpose: accents, a time zone, a partial date, UCUM units that convert
    (and canonical values with long decimals), a missing value, several codings."""
    unit, value = UNITS[n % len(UNITS)]
    resource: dict = {
        "resourceType": "Observation",
        "id": f"obs-{n}",
        "status": "final",
        "identifier": [{"system": "urn:test:reading", "value": f"r-{n}"}],
        "code": {
            "coding": [
                {"system": "http://loinc.org", "code": "2339-0", "display": "Glucose"},
                {"system": "urn:local", "code": f"GLU{n % 3}"},
            ],
            "text": "Glycémie à jeun",
        },
        "subject": {"reference": f"Patient/{PATIENTS[n % 2]}"},
        "effectiveDateTime": (
            "2024-03" if n % 7 == 0 else f"2024-03-{1 + n % 28:02d}T08:1{n % 10}:00+01:00"
        ),
        "note": [{"text": f"Mesure n°{n}, après le repas"}],
    }
    if n % 11:
        resource["valueQuantity"] = {
            "value": value + n / 1000,
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit,
        }
    return resource


def write(path: Path, count: int, write_behind: bool) -> SqliteStorage:
    storage = SqliteStorage(str(path))
    service = FhirService(storage, Settings(db_url=f"sqlite:///{path}"))
    if not write_behind:
        storage._write_behind = None
    with storage.transaction() as tx:
        for n in range(count):
            resource = observation(n)
            tx.put("Observation", resource["id"], 1, 1_700_000_000.0 + n, orjson.dumps(resource),
                   service.extractor.extract(resource), "POST")
            if n == count // 2 and write_behind:
                # rows were handed off and written before the commit
                tx.settle()
                assert tx.conn.execute("SELECT count(*) FROM idx_token").fetchone()[0] > 0
    return storage


def dump(path: Path) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(path)
    try:
        tables = ("resources", "history", *INDEX_TABLES)
        return {
            table: conn.execute(
                f"SELECT *, {', '.join(f'typeof({c})' for c in columns(conn, table))} "
                f"FROM {table} ORDER BY rowid"
            ).fetchall()
            for table in tables
        }
    finally:
        conn.close()


def columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_storage, "WRITE_BEHIND_ROWS", 200)


def test_rows_written_behind_are_those_written_at_commit(
    tmp_path: Path, small_batches: None
) -> None:
    behind = write(tmp_path / "behind.db", 1500, write_behind=True)
    assert behind._write_behind is not None and behind._write_behind._executor is not None
    behind.close()
    at_commit = write(tmp_path / "commit.db", 1500, write_behind=False)
    at_commit.close()
    expected, got = dump(tmp_path / "commit.db"), dump(tmp_path / "behind.db")
    assert sum(len(rows) for rows in expected.values()) > 15_000
    for table in expected:
        assert got[table] == expected[table], table


def test_a_failure_after_hand_offs_leaves_nothing(tmp_path: Path, small_batches: None) -> None:
    storage = SqliteStorage(str(tmp_path / "failed.db"))
    service = FhirService(storage, Settings(db_url="unused"))
    with pytest.raises(RuntimeError), storage.transaction() as tx:
        for n in range(600):
            resource = observation(n)
            tx.put("Observation", resource["id"], 1, 1.0, b"{}",
                   service.extractor.extract(resource), "POST")
        raise RuntimeError("the Bundle's last entry is invalid")
    assert storage._write_behind._executor is not None  # batches had been handed off
    for table in ("resources", "history", *INDEX_TABLES):
        assert storage._writer.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0
    storage.close()


def test_a_batch_that_fails_fails_the_transaction(
    tmp_path: Path, small_batches: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = SqliteStorage(str(tmp_path / "batch.db"))
    service = FhirService(storage, Settings(db_url="unused"))
    monkeypatch.setattr(
        sqlite_storage, "insert_from_json",
        lambda *_: "INSERT INTO no_such_table SELECT 1 FROM json_each(?)",
    )
    with (
        pytest.raises(sqlite3.OperationalError, match="no_such_table"),
        storage.transaction() as tx,
    ):
        for n in range(600):
            resource = observation(n)
            tx.put("Observation", resource["id"], 1, 1.0, b"{}",
                   service.extractor.extract(resource), "POST")
    assert storage._writer.execute("SELECT count(*) FROM resources").fetchone()[0] == 0
    monkeypatch.undo()
    with storage.transaction() as tx:  # the storage still works
        tx.put("Observation", "after", 1, 1.0, b"{}", (), "POST")
    assert storage._writer.execute("SELECT count(*) FROM resources").fetchone()[0] == 1
    storage.close()


def test_a_savepoint_after_hand_offs_undoes_only_its_own_rows(
    tmp_path: Path, small_batches: None
) -> None:
    storage = SqliteStorage(str(tmp_path / "savepoint.db"))
    service = FhirService(storage, Settings(db_url="unused"))

    def put(tx, n: int) -> None:
        resource = observation(n)
        tx.put("Observation", resource["id"], 1, 1.0, b"{}",
               service.extractor.extract(resource), "POST")

    with storage.transaction() as tx:
        for n in range(300):
            put(tx, n)
        with pytest.raises(RuntimeError), tx.savepoint():
            for n in range(300, 600):  # many rows, none handed off inside the savepoint
                put(tx, n)
            raise RuntimeError("this batch entry fails")
        for n in range(600, 900):
            put(tx, n)
    conn = storage._writer
    stored = [row[0] for row in conn.execute("SELECT id FROM resources ORDER BY pk")]
    assert stored == [f"obs-{n}" for n in (*range(300), *range(600, 900))]
    # every index row belongs to a stored resource, and every stored one has its rows
    assert conn.execute(
        "SELECT count(*) FROM idx_token WHERE pk NOT IN (SELECT pk FROM resources)"
    ).fetchone()[0] == 0
    assert conn.execute("SELECT count(DISTINCT pk) FROM idx_token").fetchone()[0] == 600
    storage.close()


def test_rows_json_cannot_carry_stay_for_executemany() -> None:
    assert encode_rows([(1, 2, b"bytes")]) is None
    assert encode_rows([(1, 2**70)]) is None
    assert encode_rows([(1, b"\xff")], blob_column=1) is None  # not UTF-8
    assert encode_rows([(1, None, "é", 0.1 + 0.2)]) == '[[1,null,"é",0.30000000000000004]]'
    assert encode_rows([(1, '{"a":"é"}'.encode(), 2), (3, None, 4)], blob_column=1) == (
        '[[1,"{\\"a\\":\\"é\\"}",2],[3,null,4]]'
    )


LIBRE = Path(__file__).parent / "data" / "csv" / "freestyle-libre"


def import_libre(path: Path, write_behind: bool) -> tuple[FhirService, int]:
    storage = SqliteStorage(str(path))
    if not write_behind:
        storage._write_behind = None
    service = FhirService(storage, Settings(db_url=f"sqlite:///{path}"))
    options = ImportOptions(patient="Patient/wb", timezone="Europe/Paris")
    report = Importer(service, options).import_files(
        [LIBRE / "librelink_mgdl_glucose_data_preamble.csv"]
    )
    [file_report] = report.files
    assert not file_report.failed
    return service, file_report.readings


def search_total(service: FhirService, items: list[tuple[str, str]]) -> int:
    query = service.search.parse("Observation", [*items, ("_summary", "count")], strict=True)
    return service.storage.search(query, 0, None).total


def test_an_import_written_behind_is_searched_like_one_written_at_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real device export through the importer (mapping, validation, conditional creates
    by reading identifier), with hand-offs every ~2,000 index rows."""
    monkeypatch.setattr(sqlite_storage, "WRITE_BEHIND_ROWS", 2000)
    behind, readings = import_libre(tmp_path / "behind.db", write_behind=True)
    at_commit, same_readings = import_libre(tmp_path / "commit.db", write_behind=False)
    assert readings == same_readings > 3000
    queries = [
        [],
        [("code", "http://loinc.org|2339-0,http://loinc.org|99504-3")],
        [("patient", "wb"), ("date", "ge2019-01-01"), ("date", "lt2030-01-01")],
        [("value-quantity", "gt10|http://unitsofmeasure.org|mmol/L")],
        [
            (
                "combo-code-value-quantity",
                "http://loinc.org|99504-3$lt70|http://unitsofmeasure.org|mg/dL",
            )
        ],
    ]
    for items in queries:
        found = search_total(behind, items)
        assert found == search_total(at_commit, items) and found > 0, (items, found)
    assert search_total(behind, []) >= readings
    for table in ("resources", "history", *INDEX_TABLES):
        count = f"SELECT count(*) FROM {table}"
        assert (
            behind.storage._writer.execute(count).fetchone()
            == at_commit.storage._writer.execute(count).fetchone()
        ), table
    # the same file again: every reading is found by its identifier, nothing is created
    again = Importer(behind, ImportOptions(patient="Patient/wb", timezone="Europe/Paris"))
    [file_report] = again.import_files(
        [LIBRE / "librelink_mgdl_glucose_data_preamble.csv"]
    ).files
    assert file_report.counts.created == 0 and file_report.counts.unchanged >= readings
    assert search_total(behind, []) == search_total(at_commit, [])
    behind.storage.close()
    at_commit.storage.close()
