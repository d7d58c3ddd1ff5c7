"""Per-patient figures kept up to date in the write transaction, so that clinical views
never go back to the raw readings:

- the code catalogue: how many current Observations each patient has of each code, which
  `$lastn` reads instead of scanning a patient's year of 5-minute readings to learn which
  codes exist;
- the CGM daily aggregates: per patient and calendar day (Europe/Paris), the number of
  CGM readings, their sum and sum of squares in mg/dL and their count in each consensus
  range, from which the patient list computes TIR / TBR / GMI / wear over 14 days for a
  thousand patients in one query.

`IndexedStorage` wraps the backend: a transaction notes the Observations it writes (and the
version each replaces or deletes) and, once its body succeeded, adds the differences in
the same transaction (SQLite: the same connection; MongoDB: the same session); a write
that rolls back leaves no difference, a batch entry that fails is forgotten with its
savepoint. Counts are additive, so an update is "minus the old version, plus the new".
`rebuild()` recomputes everything from the stored Observations. It runs by itself when a
store is opened whose indexes were kept by another version of this code (INDEXES_VERSION,
noted beside them), or never kept (a database made before they existed); the operator
runs it with `diatabase reindex` after restoring the resources alone from a backup.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from fhir_server.clinical.glucose import reading_from
from fhir_server.clinical.period import DEFAULT_TIMEZONE
from fhir_server.clinical.ranges import STANDARD
from fhir_server.model import jsonio
from fhir_server.search.types import IndexEntry
from fhir_server.storage.base import NewResource, NotingStorage, NotingTransaction

AGGREGATE_ZONE = ZoneInfo(DEFAULT_TIMEZONE)
# n, sum of mg/dL, sum of squares, then the count in each range (very low .. very high)
DAY_FIELDS = ("n", "total", "squares", "very_low", "low", "in_range", "high", "very_high")
# What the indexes hold and how: change it with DAY_FIELDS, the ranges, the time zone or
# the codes kept, and every store is rebuilt when it is next opened.
INDEXES_VERSION = 1
log = logging.getLogger(__name__)


@dataclass
class Deltas:
    codes: dict[tuple[str, str, str], int]  # (patient, system, code) -> count
    days: dict[tuple[str, str], list[float]]  # (patient, YYYY-MM-DD) -> DAY_FIELDS

    @classmethod
    def empty(cls) -> Deltas:
        return cls(defaultdict(int), defaultdict(lambda: [0.0] * len(DAY_FIELDS)))

    def add(self, resource: dict[str, Any], sign: int) -> None:
        patient = subject_patient(resource)
        if patient is None:
            return
        for coding in (resource.get("code") or {}).get("coding") or ():
            if coding.get("code"):
                self.codes[(patient, coding.get("system") or "", coding["code"])] += sign
        reading = reading_from(resource)
        if reading is None or reading.source != "cgm":
            return
        day = datetime.fromtimestamp(reading.at, AGGREGATE_ZONE).date().isoformat()
        row = self.days[(patient, day)]
        row[0] += sign
        row[1] += sign * reading.mg_dl
        row[2] += sign * reading.mg_dl * reading.mg_dl
        row[3 + STANDARD.band(reading)] += sign

    def pruned(self) -> Deltas:
        """Without the differences that cancel out (an update that changed no code)."""
        codes = {k: v for k, v in self.codes.items() if v}
        days = {k: v for k, v in self.days.items() if any(abs(x) > 1e-9 for x in v)}
        return Deltas(codes, days)  # type: ignore[arg-type]


def subject_patient(resource: dict[str, Any]) -> str | None:
    reference = (resource.get("subject") or {}).get("reference")
    if isinstance(reference, str) and reference.startswith("Patient/"):
        return reference.removeprefix("Patient/").split("/_history")[0]
    return None


def open_index_store(backend: Any) -> Any:
    from fhir_server.storage.sqlite import SqliteStorage

    if isinstance(backend, SqliteStorage):
        from fhir_server.clinical.indexes_sqlite import SqliteClinicalIndexes

        return SqliteClinicalIndexes(backend)
    from fhir_server.clinical.indexes_mongo import MongoClinicalIndexes

    return MongoClinicalIndexes(backend)


class IndexedStorage(NotingStorage):
    """The backend, with the clinical indexes kept in its write transactions."""

    def __init__(self, backend: Any) -> None:
        super().__init__(backend)
        self.clinical = open_index_store(backend)
        # Observations read by a rebuild when opened (None: the indexes were up to date)
        self.rebuilt_at_open: int | None = None
        with self._backend.transaction() as tx:
            # under the write lock: of two processes opening the store, one rebuilds
            if self.clinical.version(tx) != INDEXES_VERSION:
                self.rebuilt_at_open = self._rebuild_in(tx)
        if self.rebuilt_at_open:
            log.warning("clinical indexes rebuilt from %d Observations", self.rebuilt_at_open)

    def noting(self, tx: Any) -> IndexedTransaction:
        return IndexedTransaction(tx)

    def record(self, tx: Any, noted: Any) -> None:
        deltas = noted.deltas()
        if deltas.codes or deltas.days:
            self.clinical.apply(tx, deltas)

    def rebuild(self) -> int:
        """Recompute the indexes from the current Observations; the number read.

        On SQLite the Observations are read in the transaction, under its write lock, so
        no write of another thread or process falls between the reading and the
        replacement. On MongoDB a write during the rebuild may be counted twice or not at
        all: run it on a quiet server (it runs at start, before requests are served)."""
        with self._backend.transaction() as tx:
            return self._rebuild_in(tx)

    def _rebuild_in(self, tx: Any) -> int:
        deltas = Deltas.empty()
        count = 0
        # SQLite: read on the transaction's own connection, under its write lock
        current = getattr(tx, "iter_current", None) or self._backend.iter_current
        for stored in current("Observation"):
            if stored.json is not None and not stored.deleted:
                deltas.add(jsonio.loads(stored.json), +1)
                count += 1
        self.clinical.replace(tx, deltas.pruned(), INDEXES_VERSION)
        return count


class IndexedTransaction(NotingTransaction):
    """The backend's transaction, noting the Observations written: (new JSON or None,
    previous JSON or None) per write."""

    writes: list[tuple[bytes | None, bytes | None]]

    def _previous(self, resource_type: str, id: str) -> bytes | None:
        previous = self._tx.read(resource_type, id)
        return None if previous is None or previous.deleted else previous.json

    def note_put(
        self,
        resource_type: str,
        id: str,
        version: int,
        last_updated: float,
        json: bytes,
        index: Sequence[IndexEntry],
        method: str,
    ) -> None:
        if resource_type == "Observation":
            fresh = version == 1 and method == "POST"  # an id just made up: nothing before
            self.writes.append((json, None if fresh else self._previous(resource_type, id)))

    def note_creates(self, creates: Sequence[NewResource]) -> None:
        self.writes += [(c.json, None) for c in creates if c.resource_type == "Observation"]

    def note_delete(self, resource_type: str, id: str, version: int, last_updated: float) -> None:
        if resource_type == "Observation":
            self.writes.append((None, self._previous(resource_type, id)))

    def deltas(self) -> Deltas:
        # Stored JSON, parsed under the write lock: orjson alone (the aggregates are sums
        # of floats, a decimal's exact literal changes nothing in them)
        deltas = Deltas.empty()
        for new, old in self.writes:
            if old is not None:
                deltas.add(orjson.loads(old), -1)
            if new is not None:
                deltas.add(orjson.loads(new), +1)
        return deltas.pruned()
