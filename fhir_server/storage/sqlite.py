"""The embedded default backend: one SQLite file in WAL mode.

Tables:
- `resources`: one row per logical resource (current version, deleted flag). Its integer
  `pk` is what the index tables point to, so a search is SQL over small integer keys.
- `history`: every version's JSON, current one included (the JSON is stored once).
- `idx_*`: one table per search parameter kind, rows keyed by (`pid`, `pk`) where `pid`
  numbers a (resource type, parameter code) pair in `search_params`.

Writers are serialised by a lock and `BEGIN IMMEDIATE`, so a read-check-write inside a
transaction cannot lose an update, even against another process on the same file.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from fhir_server.search.types import (
    CompositeEntry,
    DateEntry,
    IndexEntry,
    NumberEntry,
    QuantityEntry,
    ReferenceEntry,
    StringEntry,
    TokenEntry,
    UriEntry,
)
from fhir_server.storage.base import HistoryPage, StoredResource
from fhir_server.storage.cursor import CursorCodec, CursorError

SCHEMA_VERSION = 1
DIRECT_PARAMS = frozenset({"_id", "_lastUpdated"})

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB);
CREATE TABLE IF NOT EXISTS resources (
    pk INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    last_updated REAL NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    UNIQUE (type, id)
);
CREATE INDEX IF NOT EXISTS resources_type_updated ON resources (type, last_updated);
CREATE TABLE IF NOT EXISTS history (
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    last_updated REAL NOT NULL,
    deleted INTEGER NOT NULL,
    method TEXT NOT NULL,
    json BLOB,
    UNIQUE (type, id, version)
);
CREATE INDEX IF NOT EXISTS history_updated ON history (last_updated);
CREATE INDEX IF NOT EXISTS history_type_updated ON history (type, last_updated);
CREATE TABLE IF NOT EXISTS search_params (
    pid INTEGER PRIMARY KEY,
    rtype TEXT NOT NULL,
    code TEXT NOT NULL,
    UNIQUE (rtype, code)
);
CREATE TABLE IF NOT EXISTS idx_token (pk INTEGER, pid INTEGER, system TEXT, code TEXT, text TEXT);
CREATE INDEX IF NOT EXISTS idx_token_code ON idx_token (pid, code, system, pk);
CREATE INDEX IF NOT EXISTS idx_token_pk ON idx_token (pk);
CREATE TABLE IF NOT EXISTS idx_string (pk INTEGER, pid INTEGER, value TEXT, exact TEXT);
CREATE INDEX IF NOT EXISTS idx_string_value ON idx_string (pid, value, pk);
CREATE INDEX IF NOT EXISTS idx_string_pk ON idx_string (pk);
CREATE TABLE IF NOT EXISTS idx_date (pk INTEGER, pid INTEGER, low REAL, high REAL);
CREATE INDEX IF NOT EXISTS idx_date_low ON idx_date (pid, low, high, pk);
CREATE INDEX IF NOT EXISTS idx_date_pk ON idx_date (pk);
CREATE TABLE IF NOT EXISTS idx_number (pk INTEGER, pid INTEGER, value REAL);
CREATE INDEX IF NOT EXISTS idx_number_value ON idx_number (pid, value, pk);
CREATE INDEX IF NOT EXISTS idx_number_pk ON idx_number (pk);
CREATE TABLE IF NOT EXISTS idx_quantity (
    pk INTEGER, pid INTEGER, value REAL, system TEXT, code TEXT, unit TEXT,
    cvalue REAL, cunit TEXT
);
CREATE INDEX IF NOT EXISTS idx_quantity_value ON idx_quantity (pid, value, pk);
CREATE INDEX IF NOT EXISTS idx_quantity_cvalue ON idx_quantity (pid, cunit, cvalue, pk);
CREATE INDEX IF NOT EXISTS idx_quantity_pk ON idx_quantity (pk);
CREATE TABLE IF NOT EXISTS idx_reference (
    pk INTEGER, pid INTEGER, ttype TEXT, tid TEXT, url TEXT, isystem TEXT, ivalue TEXT
);
CREATE INDEX IF NOT EXISTS idx_reference_target ON idx_reference (pid, tid, ttype, pk);
CREATE INDEX IF NOT EXISTS idx_reference_reverse ON idx_reference (ttype, tid, pid, pk);
CREATE INDEX IF NOT EXISTS idx_reference_url ON idx_reference (pid, url, pk);
CREATE INDEX IF NOT EXISTS idx_reference_identifier ON idx_reference (pid, ivalue, isystem, pk);
CREATE INDEX IF NOT EXISTS idx_reference_pk ON idx_reference (pk);
CREATE TABLE IF NOT EXISTS idx_uri (pk INTEGER, pid INTEGER, value TEXT);
CREATE INDEX IF NOT EXISTS idx_uri_value ON idx_uri (pid, value, pk);
CREATE INDEX IF NOT EXISTS idx_uri_pk ON idx_uri (pk);
CREATE TABLE IF NOT EXISTS idx_composite (
    pk INTEGER, pid INTEGER,
    a_system TEXT, a_code TEXT,
    b_system TEXT, b_code TEXT, b_text TEXT, b_value REAL, b_low REAL, b_high REAL,
    b_cvalue REAL, b_cunit TEXT
);
CREATE INDEX IF NOT EXISTS idx_composite_code ON idx_composite (pid, a_code, pk);
CREATE INDEX IF NOT EXISTS idx_composite_pk ON idx_composite (pk);
"""

INDEX_TABLES = (
    "idx_token",
    "idx_string",
    "idx_date",
    "idx_number",
    "idx_quantity",
    "idx_reference",
    "idx_uri",
    "idx_composite",
)


class DatabaseVersionError(RuntimeError):
    pass


def _composite_row(pk: int, pid: int, entry: CompositeEntry) -> tuple | None:
    """Two-part composites (token + token/quantity/date/string/...) as one row."""
    if len(entry.parts) < 2 or not isinstance(entry.parts[0], TokenEntry):
        return None
    a, b = entry.parts[0], entry.parts[1]
    row: list[Any] = [pk, pid, a.system, a.code, None, None, None, None, None, None, None, None]
    if isinstance(b, TokenEntry):
        row[4:7] = [b.system, b.code, b.text]
    elif isinstance(b, QuantityEntry):
        row[4:6] = [b.system, b.code]
        row[7] = b.value
        row[10:12] = [b.canonical_value, b.canonical_unit]
    elif isinstance(b, DateEntry):
        row[8:10] = [b.low, b.high]
    elif isinstance(b, StringEntry):
        row[6] = b.value
    elif isinstance(b, NumberEntry):
        row[7] = b.value
    elif isinstance(b, UriEntry | ReferenceEntry):
        row[5] = b.value if isinstance(b, UriEntry) else b.target_id
    else:
        return None
    return tuple(row)


class SqliteStorage:
    def __init__(self, path: str) -> None:
        self.path = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._writer = self._connect()
        self._init_schema()
        self._pids: dict[tuple[str, str], int] = {
            (rtype, code): pid
            for pid, rtype, code in self._writer.execute(
                "SELECT pid, rtype, code FROM search_params"
            )
        }
        self.cursors = CursorCodec(self._cursor_key())
        # Set by the service when terminology is available: token :below/:above/:in, and
        # the canonical unit of a quantity search value.
        self.expander: Any = None
        self.canonical_query: Any = None

    @classmethod
    def from_url(cls, url: str) -> SqliteStorage:
        # As in SQLAlchemy: sqlite:///relative.db, sqlite:////absolute.db
        path = url.removeprefix("sqlite://")
        path = path[1:] if path.startswith("/") else path
        if not path:
            raise ValueError("sqlite URL needs a path: sqlite:///path/to/diatabase.db")
        return cls(path)

    # -- connections ---------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute("PRAGMA temp_store=MEMORY")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
        return conn

    def _init_schema(self) -> None:
        conn = self._writer
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise DatabaseVersionError(
                f"{self.path} has schema version {version}; this server knows up to "
                f"{SCHEMA_VERSION}. Upgrade Diatabase to open it."
            )
        if version < SCHEMA_VERSION:
            conn.executescript("BEGIN;" + SCHEMA + f"PRAGMA user_version={SCHEMA_VERSION};COMMIT;")

    def _cursor_key(self) -> bytes:
        row = self._writer.execute("SELECT value FROM meta WHERE key='cursor_key'").fetchone()
        if row:
            return bytes(row[0])
        key = secrets.token_bytes(32)
        self._writer.execute("INSERT OR IGNORE INTO meta VALUES ('cursor_key', ?)", (key,))
        return bytes(
            self._writer.execute("SELECT value FROM meta WHERE key='cursor_key'").fetchone()[0]
        )

    def close(self) -> None:
        self._writer.close()

    # -- search parameter ids ------------------------------------------------------------

    def pid(self, rtype: str, code: str, create: bool = False) -> int | None:
        pid = self._pids.get((rtype, code))
        if pid is None and not create:
            # Another process (`diatabase import` beside a running server) may have added
            # the parameter since this one cached the table: look before saying "none".
            row = self._reader().execute(
                "SELECT pid FROM search_params WHERE rtype=? AND code=?", (rtype, code)
            ).fetchone()
            if row is not None:
                pid = self._pids[(rtype, code)] = row[0]
        if pid is None and create:
            # Only ever called from a write transaction, under the write lock.
            self._writer.execute(
                "INSERT OR IGNORE INTO search_params (rtype, code) VALUES (?, ?)", (rtype, code)
            )
            pid = self._writer.execute(
                "SELECT pid FROM search_params WHERE rtype=? AND code=?", (rtype, code)
            ).fetchone()[0]
            self._pids[(rtype, code)] = pid
        return pid

    # -- reads ---------------------------------------------------------------------------

    @staticmethod
    def _row(row: tuple) -> StoredResource:
        rtype, rid, version, last_updated, deleted, method, json = row
        return StoredResource(
            rtype,
            rid,
            version,
            last_updated,
            bool(deleted),
            None if json is None else bytes(json),
            method,
        )

    def _read(self, conn: sqlite3.Connection, rtype: str, rid: str) -> StoredResource | None:
        row = conn.execute(
            "SELECT h.type, h.id, h.version, h.last_updated, h.deleted, h.method, h.json "
            "FROM resources r JOIN history h "
            "ON h.type=r.type AND h.id=r.id AND h.version=r.version WHERE r.type=? AND r.id=?",
            (rtype, rid),
        ).fetchone()
        return self._row(row) if row else None

    def read(self, resource_type: str, id: str) -> StoredResource | None:
        return self._read(self._reader(), resource_type, id)

    def vread(self, resource_type: str, id: str, version: int) -> StoredResource | None:
        row = (
            self._reader()
            .execute(
                "SELECT type, id, version, last_updated, deleted, method, json FROM history "
                "WHERE type=? AND id=? AND version=?",
                (resource_type, id, version),
            )
            .fetchone()
        )
        return self._row(row) if row else None

    def read_many(self, pks: Sequence[int]) -> list[StoredResource]:
        """Current versions for resource pks, in the order given."""
        if not pks:
            return []
        conn = self._reader()
        rows: dict[int, StoredResource] = {}
        for start in range(0, len(pks), 500):
            chunk = list(pks[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for pk, *rest in conn.execute(
                "SELECT r.pk, h.type, h.id, h.version, h.last_updated, h.deleted, h.method, h.json "
                "FROM resources r JOIN history h ON h.type=r.type AND h.id=r.id AND "
                f"h.version=r.version WHERE r.pk IN ({marks})",
                chunk,
            ):
                rows[pk] = self._row(tuple(rest))
        return [rows[pk] for pk in pks if pk in rows]

    def history(
        self,
        resource_type: str | None,
        id: str | None,
        since: float | None,
        at: float | None,
        count: int,
        cursor: str | None,
    ) -> HistoryPage:
        where, args = [], []
        if resource_type is not None:
            where.append("type=?")
            args.append(resource_type)
        if id is not None:
            where.append("id=?")
            args.append(id)
        if since is not None:
            where.append("last_updated>=?")
            args.append(since)
        if at is not None:
            # The version current at `at`: made at or before it, and not superseded by then.
            where.append(
                "last_updated<=? AND NOT EXISTS (SELECT 1 FROM history n WHERE n.type=history.type "
                "AND n.id=history.id AND n.version>history.version AND n.last_updated<=?)"
            )
            args += [at, at]
        if cursor:
            try:
                last_updated, rowid = self.cursors.decode(cursor)
                last_updated, rowid = float(last_updated), int(rowid)
            except (CursorError, TypeError, ValueError):
                raise CursorError("The history paging cursor is invalid") from None
            where.append("(last_updated<? OR (last_updated=? AND rowid<?))")
            args += [last_updated, last_updated, rowid]
        sql = (
            "SELECT rowid, type, id, version, last_updated, deleted, method, json FROM history"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY last_updated DESC, rowid DESC LIMIT ?"
        )
        rows = self._reader().execute(sql, [*args, count + 1]).fetchall()
        entries = [self._row(tuple(r[1:])) for r in rows[:count]]
        next_cursor = None
        if len(rows) > count:
            last = rows[count - 1]
            next_cursor = self.cursors.encode([last[4], last[0]])
        return HistoryPage(entries, next_cursor)

    def count(self, resource_type: str | None = None) -> int:
        if resource_type is None:
            sql, args = "SELECT count(*) FROM resources WHERE deleted=0", ()
        else:
            sql, args = (
                "SELECT count(*) FROM resources WHERE type=? AND deleted=0",
                (resource_type,),
            )
        return self._reader().execute(sql, args).fetchone()[0]

    def iter_current(self, resource_type: str) -> Iterator[StoredResource]:
        conn = self._connect()
        try:
            for row in conn.execute(
                "SELECT h.type, h.id, h.version, h.last_updated, h.deleted, h.method, h.json "
                "FROM resources r JOIN history h ON h.type=r.type AND h.id=r.id AND "
                "h.version=r.version WHERE r.type=? AND r.deleted=0 ORDER BY r.pk",
                (resource_type,),
            ):
                yield self._row(row)
        finally:
            conn.close()

    def search(self, query: Any, count: int, cursor: str | None) -> Any:
        from fhir_server.storage.sqlite_search import run_search

        return run_search(self, self._reader(), query, count, cursor)

    # -- writes --------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[SqliteTransaction]:
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield SqliteTransaction(self, conn)
            except BaseException:
                conn.execute("ROLLBACK")
                # pids created in the rolled back transaction no longer exist.
                self._pids = {
                    (rtype, code): pid
                    for pid, rtype, code in conn.execute(
                        "SELECT pid, rtype, code FROM search_params"
                    )
                }
                raise
            conn.execute("COMMIT")

    def file_size(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with suppress(OSError):
                total += os.path.getsize(self.path + suffix)
        return total


class SqliteTransaction:
    def __init__(self, storage: SqliteStorage, conn: sqlite3.Connection) -> None:
        self.storage = storage
        self.conn = conn

    def read(self, resource_type: str, id: str) -> StoredResource | None:
        return self.storage._read(self.conn, resource_type, id)

    def search_ids(self, query: Any, limit: int) -> list[str]:
        from fhir_server.storage.sqlite_search import matching_ids

        return matching_ids(self.storage, self.conn, query, limit)

    def _index(self, pk: int, rtype: str, entries: Sequence[IndexEntry]) -> None:
        rows: dict[str, list[tuple]] = {}
        pid_of = self.storage.pid
        for entry in entries:
            if entry.param in DIRECT_PARAMS:
                continue  # answered from the resources table itself
            pid = pid_of(rtype, entry.param, create=True)
            kind = type(entry)
            if kind is TokenEntry:
                rows.setdefault("idx_token", []).append((pk, pid, *entry[1:]))
            elif kind is ReferenceEntry:
                rows.setdefault("idx_reference", []).append((pk, pid, *entry[1:]))
            elif kind is DateEntry:
                rows.setdefault("idx_date", []).append((pk, pid, *entry[1:]))
            elif kind is StringEntry:
                rows.setdefault("idx_string", []).append((pk, pid, *entry[1:]))
            elif kind is QuantityEntry:
                rows.setdefault("idx_quantity", []).append((pk, pid, *entry[1:]))
            elif kind is NumberEntry:
                rows.setdefault("idx_number", []).append((pk, pid, *entry[1:]))
            elif kind is UriEntry:
                rows.setdefault("idx_uri", []).append((pk, pid, *entry[1:]))
            elif kind is CompositeEntry:
                row = _composite_row(pk, pid, entry)
                if row is not None:
                    rows.setdefault("idx_composite", []).append(row)
        for table, values in rows.items():
            marks = ",".join("?" * len(values[0]))
            self.conn.executemany(f"INSERT INTO {table} VALUES ({marks})", values)

    def _clear_index(self, pk: int) -> None:
        for table in INDEX_TABLES:
            self.conn.execute(f"DELETE FROM {table} WHERE pk=?", (pk,))

    def put(
        self,
        resource_type: str,
        id: str,
        version: int,
        last_updated: float,
        json: bytes,
        index: Sequence[IndexEntry],
        method: str,
    ) -> None:
        conn = self.conn
        row = conn.execute(
            "SELECT pk FROM resources WHERE type=? AND id=?", (resource_type, id)
        ).fetchone()
        if row is None:
            pk = conn.execute(
                "INSERT INTO resources (type, id, version, last_updated, deleted) "
                "VALUES (?, ?, ?, ?, 0)",
                (resource_type, id, version, last_updated),
            ).lastrowid
        else:
            pk = row[0]
            conn.execute(
                "UPDATE resources SET version=?, last_updated=?, deleted=0 WHERE pk=?",
                (version, last_updated, pk),
            )
            self._clear_index(pk)
        conn.execute(
            "INSERT INTO history (type, id, version, last_updated, deleted, method, json) "
            "VALUES (?, ?, ?, ?, 0, ?, ?)",
            (resource_type, id, version, last_updated, method, json),
        )
        self._index(pk, resource_type, index)

    def delete(self, resource_type: str, id: str, version: int, last_updated: float) -> None:
        conn = self.conn
        row = conn.execute(
            "SELECT pk FROM resources WHERE type=? AND id=?", (resource_type, id)
        ).fetchone()
        if row is None:
            return
        pk = row[0]
        conn.execute(
            "UPDATE resources SET version=?, last_updated=?, deleted=1 WHERE pk=?",
            (version, last_updated, pk),
        )
        conn.execute(
            "INSERT INTO history (type, id, version, last_updated, deleted, method, json) "
            "VALUES (?, ?, ?, ?, 1, 'DELETE', NULL)",
            (resource_type, id, version, last_updated),
        )
        self._clear_index(pk)
