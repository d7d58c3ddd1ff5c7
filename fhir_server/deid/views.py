"""Materialized views: each recipient's pseudonymized resources, computed ahead of requests.

Pseudonymizing a resource costs ~25-35 us of Python; a search page of 100 readings then
costs the facade about as much as the clinical search itself. A view store holds, for one
recipient, the engine's output for every current resource, so that the facade only looks
it up (`diatabase deid views` fills and follows it; `serve --deid-views DIR` reads it).

- One SQLite file per recipient, `<dir>/<recipient id>.sqlite`, whatever the clinical
  backend: it holds pseudonymized JSON only, and deleting it loses nothing.
- Rows are keyed by (type, id) and carry the version they were made from. The facade
  uses a row only when its version is the stored resource's current one; anything else
  (not yet materialized, updated since) is pseudonymized on the fly. So a view is never
  the reason a stale, deleted or wrong resource is served: at worst it is not used.
- A resource the rules suppress is stored with no JSON (the facade serves it as it would
  without views: not at all).
- The file records a fingerprint of the recipient's keys and rules: a store made under
  another master secret, recipient or rules profile (or by another engine format) is
  never read, and the next fill starts it again from empty.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from fhir_server.deid.engine import Deidentifier, Suppressed
from fhir_server.rights.withholding import Withholding
from fhir_server.service.fhir import FhirService
from fhir_server.storage.base import StoredResource
from fhir_server.storage.private_files import create_private_file, private_folder

# Bump when the engine's output for the same keys and rules changes: older stores are
# then rebuilt rather than served.
VIEW_FORMAT = "diatabase-deid-view/2"
BATCH = 1000  # resources pseudonymized and written per transaction
# The follow step re-reads history this far behind its mark: a version committed late
# with an earlier timestamp is still picked up (and re-reading costs only lookups).
FOLLOW_OVERLAP_SECONDS = 60.0
# A rowid table, not WITHOUT ROWID on (type, id): rows stay in the order they were made,
# which is the clinical store's order, so a patient's readings (written together) share
# pages and a search page's lookup reads a few pages instead of one per resource.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS views (
    type TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, json BLOB
);
CREATE UNIQUE INDEX IF NOT EXISTS views_key ON views (type, id);
"""
_LOOKUP_BATCH = 500  # ids per look-up query (SQLite's parameter limit is far above)
MMAP_BYTES = 1 << 40  # SQLite caps it at its compile-time limit (2 GB by default)
CACHE_KIB = 64 * 1024  # page cache per connection


def fingerprint(engine: Deidentifier) -> str:
    """Names the keys, recipient, rules and engine format without revealing any key: a
    pseudonym (keyed) of a constant, and the rules' hash."""
    keyed = engine.pseudonyms.pseudonym("Basic", "diatabase-view-fingerprint")
    rules = hashlib.sha256(engine.rules.source).hexdigest()
    return hashlib.sha256(f"{VIEW_FORMAT}\0{keyed}\0{rules}".encode()).hexdigest()


def view_path(folder: str | Path, recipient_id: str) -> Path:
    # Recipient ids are [A-Za-z0-9-.]{1,64} (recipients.py): safe as a file name.
    return Path(folder) / f"{recipient_id}.sqlite"


class ViewStore:
    """One recipient's view file. Thread-safe: one connection per thread."""

    def __init__(self, path: str | Path, expected_fingerprint: str) -> None:
        self.path = Path(path)
        self._fingerprint = expected_fingerprint
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            private_folder(self.path.parent)
            create_private_file(self.path)  # owner-only, and so its -wal and -shm
            conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            # Memory-mapped reads: a lookup then costs no read() call per page.
            conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
            conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            conn.executescript(_SCHEMA)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    # -- state ----------------------------------------------------------------------------

    def _state(self, key: str) -> str | None:
        row = self._conn().execute("SELECT value FROM state WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def usable(self) -> bool:
        """Whether the file was made with the expected keys and rules (else never read)."""
        return self.path.exists() and self._state("fingerprint") == self._fingerprint

    def reset_if_foreign(self) -> bool:
        """Empty a store made under other keys or rules and claim it; True if emptied."""
        conn = self._conn()
        if self._state("fingerprint") == self._fingerprint:
            return False
        with conn:
            conn.execute("DELETE FROM views")
            conn.execute("DELETE FROM state")
            conn.execute("INSERT INTO state VALUES ('fingerprint', ?)", (self._fingerprint,))
        return True

    def mark(self) -> float | None:
        value = self._state("mark")
        return float(value) if value is not None else None

    def set_mark(self, mark: float) -> None:
        with self._conn() as conn:
            conn.execute("INSERT OR REPLACE INTO state VALUES ('mark', ?)", (repr(mark),))

    # -- rows -----------------------------------------------------------------------------

    def lookup(self, resources: Sequence[StoredResource]) -> dict[tuple[str, str], bytes | None]:
        """The view of each resource whose row was made from its current version:
        (type, id) -> JSON, or None for a resource the rules suppress. Others are absent."""
        wanted: dict[str, dict[str, int]] = {}
        for stored in resources:
            wanted.setdefault(stored.resource_type, {})[stored.id] = stored.version
        return {
            (rtype, rid): body
            for rtype, versions in wanted.items()
            for rid, version, body in self._rows(rtype, list(versions), "id, version, json")
            if versions[rid] == version
        }

    def versions(self, rtype: str, ids: Sequence[str]) -> dict[str, int]:
        return dict(self._rows(rtype, ids, "id, version"))

    def _rows(self, rtype: str, ids: Sequence[str], columns: str) -> Iterator[tuple]:
        conn = self._conn()
        for start in range(0, len(ids), _LOOKUP_BATCH):
            chunk = ids[start : start + _LOOKUP_BATCH]
            marks = ",".join("?" * len(chunk))
            yield from conn.execute(
                f"SELECT {columns} FROM views WHERE type=? AND id IN ({marks})",
                (rtype, *chunk),
            ).fetchall()

    def write(
        self,
        rows: Iterable[tuple[str, str, int, bytes | None]],
        deleted: Iterable[tuple[str, str]] = (),
    ) -> int:
        """Store rows and delete the rows of `deleted` resources; how many were deleted."""
        with self._conn() as conn:
            conn.executemany("INSERT OR REPLACE INTO views VALUES (?, ?, ?, ?)", rows)
            return conn.executemany("DELETE FROM views WHERE type=? AND id=?", deleted).rowcount

    # -- sweeping the rows of resources deleted while nothing followed ----------------------

    def start_sweep(self) -> None:
        conn = self._conn()
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY)")
        with conn:
            conn.execute("DELETE FROM seen")

    def seen(self, ids: Iterable[str]) -> None:
        with self._conn() as conn:
            conn.executemany("INSERT OR IGNORE INTO seen VALUES (?)", ((i,) for i in ids))

    def sweep(self, rtype: str) -> int:
        """Delete the rows of `rtype` not marked `seen` since `start_sweep`; their number."""
        with self._conn() as conn:
            deleted = conn.execute(
                "DELETE FROM views WHERE type=? AND id NOT IN (SELECT id FROM seen)", (rtype,)
            ).rowcount
            conn.execute("DELETE FROM seen")
        return deleted

    def count(self) -> int:
        return self._conn().execute("SELECT count(*) FROM views").fetchone()[0]

    # -- objections to research use ---------------------------------------------------------

    def withhold(self, signature: str, withholds: Callable[[bytes], bool] | None) -> int:
        """When the objections changed since the last call (their `signature`), delete the
        rows `withholds` matches (rows of objecting patients); how many were deleted."""
        if self._state("objections") == signature:
            return 0
        conn = self._conn()
        doomed = []
        if withholds is not None:
            for rowid, body in conn.execute("SELECT rowid, json FROM views WHERE json NOT NULL"):
                if withholds(body):
                    doomed.append((rowid,))
        with conn:
            conn.executemany("DELETE FROM views WHERE rowid=?", doomed)
            conn.execute("INSERT OR REPLACE INTO state VALUES ('objections', ?)", (signature,))
        return len(doomed)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


def pseudonymized(
    engine: Deidentifier,
    viewed: dict[tuple[str, str], bytes | None],
    resources: Sequence[StoredResource],
    load: Callable[[StoredResource], StoredResource | None] | None = None,
) -> list[bytes | None]:
    """Each resource's pseudonymized JSON (None: suppressed by the rules, or gone): its
    row in `viewed` (a `ViewStore.lookup`), else the engine's work. A resource given
    without its JSON (a keys-only search) is read with `load` first."""
    out: list[bytes | None] = []
    for stored in resources:
        key = (stored.resource_type, stored.id)
        if key in viewed:
            out.append(viewed[key])
            continue
        raw = stored.json
        if raw is None and load is not None:
            loaded = load(stored)
            raw = loaded.json if loaded is not None else None
        try:
            out.append(engine.transform_bytes(raw) if raw is not None else None)
        except Suppressed:
            out.append(None)
    return out


@dataclass
class RefreshReport:
    checked: int = 0  # current resources looked at
    written: int = 0  # rows (re)made
    removed: int = 0  # rows of deleted resources dropped
    seconds: float = 0.0
    cpu_seconds: float = 0.0


def _rows(
    engine: Deidentifier, resources: Sequence[StoredResource], withholding: Withholding
) -> list[tuple[str, str, int, bytes | None]]:
    """Rows to store: what objections withhold is left out (no row: served by the engine,
    and so checked again, once the objection is withdrawn)."""
    bodies = pseudonymized(engine, {}, resources)
    released = withholding.released(engine, bodies)
    return [
        (s.resource_type, s.id, s.version, b)
        for s, b, kept in zip(resources, bodies, released, strict=True)
        if b is None or kept is not None
    ]


def _withhold_rows(withholding: Withholding, engine: Deidentifier, store: ViewStore) -> int:
    """Rows of patients who objected since the store last looked are deleted."""
    objections = withholding.current()
    matcher = withholding.matcher(engine, objections)
    return store.withhold(repr(objections.signature), matcher.withholds if matcher else None)


def fill(
    service: FhirService,
    engine: Deidentifier,
    store: ViewStore,
    types: Sequence[str],
    progress: Callable[[int], None] | None = None,
) -> RefreshReport:
    """Bring the store up to date with every current resource of `types`: a full pass
    (rows already made from the current version are kept; rows of resources no longer
    there are deleted: an erasure reaches the store even if nothing followed it), then the
    follow mark is set to the pass's start, so that `follow` picks up what was written
    meanwhile."""
    report = RefreshReport()
    started, cpu = time.perf_counter(), time.process_time()
    begun_at = time.time()
    store.reset_if_foreign()
    withholding = Withholding.of(service)
    report.removed += _withhold_rows(withholding, engine, store)
    for rtype in types:
        store.start_sweep()
        batch: list[StoredResource] = []
        for stored in service.storage.iter_current(rtype):
            if stored.json is None:
                continue
            batch.append(stored)
            if len(batch) == BATCH:
                _fill_batch(engine, store, rtype, batch, report, progress, withholding)
                batch = []
        _fill_batch(engine, store, rtype, batch, report, progress, withholding)
        report.removed += store.sweep(rtype)
    store.set_mark(begun_at)
    report.seconds = time.perf_counter() - started
    report.cpu_seconds = time.process_time() - cpu
    return report


def _fill_batch(
    engine: Deidentifier,
    store: ViewStore,
    rtype: str,
    batch: list[StoredResource],
    report: RefreshReport,
    progress: Callable[[int], None] | None,
    withholding: Withholding,
) -> None:
    if not batch:
        return
    ids = [s.id for s in batch]
    store.seen(ids)
    have = store.versions(rtype, ids)
    rows = _rows(engine, [s for s in batch if have.get(s.id) != s.version], withholding)
    if rows:
        store.write(rows)
    report.checked += len(batch)
    report.written += len(rows)
    if progress is not None:
        progress(len(batch))


def follow(
    service: FhirService, engine: Deidentifier, store: ViewStore, types: Sequence[str]
) -> RefreshReport:
    """Apply the versions written since the store's mark (less FOLLOW_OVERLAP_SECONDS):
    new and updated resources are made, deleted ones dropped. Needs a `fill` first."""
    report = RefreshReport()
    started, cpu = time.perf_counter(), time.process_time()
    mark = store.mark()
    if mark is None or not store.usable():
        raise RuntimeError(f"{store.path}: fill the view store before following")
    withholding = Withholding.of(service)
    report.removed += _withhold_rows(withholding, engine, store)
    wanted = set(types)
    newest = mark
    seen: set[tuple[str, str]] = set()
    cursor = None
    while True:
        # A page at a time (history is newest first, so the first version of a resource
        # met is its current one): memory holds the keys seen, not the versions.
        page = service.storage.history(
            None, None, mark - FOLLOW_OVERLAP_SECONDS, None, BATCH, cursor
        )
        latest = []
        for version in page.entries:
            newest = max(newest, version.last_updated)
            key = (version.resource_type, version.id)
            if version.resource_type in wanted and key not in seen:
                latest.append(version)
            seen.add(key)
        current = [s for s in latest if not (s.deleted or s.json is None)]
        have = store.lookup(current)
        rows = _rows(
            engine, [s for s in current if (s.resource_type, s.id) not in have], withholding
        )
        gone = [(s.resource_type, s.id) for s in latest if s.deleted or s.json is None]
        report.removed += store.write(rows, gone)
        report.written += len(rows)
        report.checked += len(latest)
        cursor = page.next_cursor
        if cursor is None:
            break
    store.set_mark(newest)
    report.seconds = time.perf_counter() - started
    report.cpu_seconds = time.process_time() - cpu
    return report
