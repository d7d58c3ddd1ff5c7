"""The clinical indexes ($lastn's code catalogue, the CGM daily aggregates) of a store that
was filled before they existed, or by a version that kept them otherwise, are rebuilt when
the store is opened; `diatabase reindex` rebuilds them on demand.

Fails on the code before: a database made before the indexes existed opened with empty
ones, so `$lastn` found no code and the patient list no reading until every Observation
was written again. MongoDB through mongomock (no server runs in CI; tests/storage_backends.py).
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fhir_server.cli import main
from fhir_server.clinical.indexes import INDEXES_VERSION, IndexedStorage
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage import open_storage
from tests.storage_backends import mongomock_store

LOINC = "http://loinc.org"
T0 = datetime(2024, 3, 1, 8, tzinfo=UTC)


def reading(patient: str, minutes: int, value: float) -> dict:
    return {
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "99504-3"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": (T0 + timedelta(minutes=minutes)).isoformat(),
        "valueQuantity": {"value": value, "unit": "mg/dL",
                          "system": "http://unitsofmeasure.org", "code": "mg/dL"},
    }


def fill(service: FhirService) -> None:
    for i in range(12):
        service.resources.create("Observation", reading("p1", 5 * i, 90 + i))
    service.resources.create("Observation", reading("p2", 0, 250))


def forget_indexes(path: Path) -> None:
    """The database as a version without the indexes left it."""
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM clinical_codes")
        conn.execute("DELETE FROM cgm_days")
        conn.execute("DELETE FROM meta WHERE key = 'clinical_indexes_version'")


def test_a_store_without_indexes_is_rebuilt_when_opened(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    service = FhirService(open_storage(url), Settings(db_url=url))
    fill(service)
    service.storage.close()
    forget_indexes(tmp_path / "old.db")

    reopened = FhirService(open_storage(url), Settings(db_url=url))
    try:
        assert reopened.indexed.rebuilt_at_open == 13
        assert reopened.indexed.clinical.code_counts("p1") == {(LOINC, "99504-3"): 12}
        days, _, sums = reopened.indexed.clinical.window("2024-03-01", "2024-03-01")["p1"]
        assert days == 1 and sums[0] == 12 and sums[1] == sum(90 + i for i in range(12))
    finally:
        reopened.storage.close()
    # up to date now: the next opening reads nothing
    again = IndexedStorage(open_storage(url))
    assert again.rebuilt_at_open is None
    again.close()


def test_an_older_index_version_is_rebuilt(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'v0.db'}"
    service = FhirService(open_storage(url), Settings(db_url=url))
    fill(service)
    service.storage.close()
    with sqlite3.connect(tmp_path / "v0.db") as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'clinical_indexes_version'",
                     (INDEXES_VERSION - 1,))
        conn.execute("UPDATE clinical_codes SET n = n + 100")  # kept otherwise
    indexed = IndexedStorage(open_storage(url))
    try:
        assert indexed.rebuilt_at_open == 13
        assert indexed.clinical.code_counts("p2") == {(LOINC, "99504-3"): 1}
    finally:
        indexed.close()


def test_the_reindex_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'restored.db'}"
    service = FhirService(open_storage(url), Settings(db_url=url))
    fill(service)
    service.storage.close()
    with sqlite3.connect(tmp_path / "restored.db") as conn:
        conn.execute("DELETE FROM cgm_days")  # resources restored alone: indexes stale

    assert main(["reindex", "--db", url]) == 0
    assert "rebuilt from 13 Observation(s)" in capsys.readouterr().out
    indexed = IndexedStorage(open_storage(url))
    try:
        assert indexed.rebuilt_at_open is None
        assert set(indexed.clinical.window("2024-03-01", "2024-03-01")) == {"p1", "p2"}
    finally:
        indexed.close()


def test_mongodb_indexes_are_rebuilt_when_missing(tmp_path: Path) -> None:
    storage = mongomock_store(tmp_path)
    service = FhirService(storage, Settings(db_url=f"sqlite:///{tmp_path / 'unused.db'}"))
    fill(service)
    storage.db["clinical_codes"].delete_many({})
    storage.db["cgm_days"].delete_many({})
    storage.meta.delete_one({"_id": "clinical_indexes_version"})

    indexed = IndexedStorage(storage)
    assert indexed.rebuilt_at_open == 13
    assert indexed.clinical.code_counts("p1") == {(LOINC, "99504-3"): 12}
    storage.close()
