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

import contextlib
import fcntl
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from fhir_server.limits import Limits
from fhir_server.search.types import (
    CompositeEntry,
    DateEntry,
    FullTextEntry,
    IndexEntry,
    NumberEntry,
    QuantityEntry,
    ReferenceEntry,
    StringEntry,
    TokenEntry,
    UriEntry,
)
from fhir_server.storage import budget, sqlite_budget, sqlite_checkpoint, sqlite_text
from fhir_server.storage.base import HistoryPage, NewResource, StoredResource, is_groupable
from fhir_server.storage.cursor import CursorCodec, CursorError
from fhir_server.storage.private_files import create_private_file
from fhir_server.storage.sqlite_checkpoint import BackgroundCheckpointer
from fhir_server.storage.sqlite_group_commit import Group, LogSync, WriteLock
from fhir_server.storage.sqlite_write_behind import (
    WRITE_BEHIND_ROWS,
    WriteBehind,
    encode_rows,
    insert_from_json,
    json_rows_supported,
)

SCHEMA_VERSION = 5
SYNCHRONOUS_MODES = ("FULL", "NORMAL", "EXTRA")
HISTORY_JSON_COLUMN = 6  # of a history row: type, id, version, last_updated, deleted, method
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
-- (type, pk) order: a type's resources in pk order, the default sort, without sorting them
CREATE INDEX IF NOT EXISTS resources_type_pk ON resources (type);
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
CREATE TABLE IF NOT EXISTS idx_date (pk INTEGER, pid INTEGER, low REAL, high REAL, owner TEXT);
CREATE INDEX IF NOT EXISTS idx_date_low ON idx_date (pid, low, high, pk);
CREATE INDEX IF NOT EXISTS idx_date_pk ON idx_date (pk);
CREATE INDEX IF NOT EXISTS idx_date_owner ON idx_date (owner, pid, low, high, pk)
    WHERE owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS date_spans (
    pid INTEGER PRIMARY KEY, span REAL NOT NULL, multi INTEGER NOT NULL
);
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
CREATE INDEX IF NOT EXISTS idx_reference_url ON idx_reference (pid, url, pk)
    WHERE url IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_reference_identifier ON idx_reference (pid, ivalue, isystem, pk)
    WHERE ivalue IS NOT NULL;
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
""" + sqlite_text.SCHEMA

# Version 1 -> 2: date rows carry the id their resource's `patient` reference points to
# (`owner`), so that "this patient's readings in this period" is one index range;
# `date_spans` keeps, per parameter, the widest stored period (which turns `ge X` into a
# bounded range on `low`: low > X - span) and whether any resource ever had several values
# (if never, `ge X & lt Y` can be answered from one row). Backfilled from the index rows.
MIGRATE_1_TO_2 = """
ALTER TABLE idx_date ADD COLUMN owner TEXT;
CREATE TEMP TABLE owners AS
    SELECT DISTINCT x.pk, x.tid FROM idx_reference x JOIN search_params sp ON sp.pid = x.pid
    WHERE sp.code = 'patient' AND x.tid IS NOT NULL;
INSERT INTO idx_date (pk, pid, low, high, owner)
    SELECT d.pk, d.pid, d.low, d.high, o.tid FROM idx_date d JOIN owners o ON o.pk = d.pk;
DELETE FROM idx_date WHERE owner IS NULL AND pk IN (SELECT pk FROM owners);
DROP TABLE owners;
CREATE TABLE IF NOT EXISTS date_spans (
    pid INTEGER PRIMARY KEY, span REAL NOT NULL, multi INTEGER NOT NULL
);
INSERT OR REPLACE INTO date_spans
    SELECT pid, max(span), max(n > 1) FROM (
        SELECT pid, max(high - low) AS span, count(DISTINCT low || '/' || high) AS n
        FROM idx_date GROUP BY pid, pk
    ) GROUP BY pid;
"""
# Version 2 -> 3: the url and identifier indexes of reference rows only hold the rows that
# have one. Most references are local (Patient/123): their NULLs cost two B-tree inserts per
# row on every write and answered no query (`url=?` and `ivalue=?` imply NOT NULL, so SQLite
# still uses the partial indexes). SCHEMA then recreates them partial.
MIGRATE_2_TO_3 = """
DROP INDEX IF EXISTS idx_reference_url;
DROP INDEX IF EXISTS idx_reference_identifier;
"""
# Version 3 -> 4: resources_type_pk (created by SCHEMA). Without statistics SQLite answered
# `type=? ORDER BY pk LIMIT 50` through (type, last_updated) and sorted every resource of
# the type: 0.9 s for `Observation?code=...&_count=50` at 500,000 resources, 0.3 ms now.
# Version 4 -> 5: full-text search (sqlite_text: the FTS5 table `fulltext`, created by
# SCHEMA), backfilled from every current resource's JSON (sqlite_text.backfill).
MIGRATIONS = {1: MIGRATE_1_TO_2 + MIGRATE_2_TO_3, 2: MIGRATE_2_TO_3, 3: "", 4: ""}
FULLTEXT_SINCE = 5
OWNER_PARAM = "patient"

# How rows are inserted into, and deleted from, the index tables that are not plain tables
# of (pk, pid, ...) rows.
INSERT_TARGETS = {sqlite_text.TABLE: sqlite_text.INSERT_TARGET}
KEY_COLUMNS = {sqlite_text.TABLE: sqlite_text.KEY_COLUMN}

INDEX_TABLES = (
    "idx_token",
    "idx_string",
    "idx_date",
    "idx_number",
    "idx_quantity",
    "idx_reference",
    "idx_uri",
    "idx_composite",
    sqlite_text.TABLE,
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


LOCK_TIMEOUT_SECONDS = 30.0  # as the connections' busy_timeout
FIRST_POLL_SECONDS = 0.00005  # waits for the file lock poll at 50 µs, doubling up to 1 ms
LAST_POLL_SECONDS = 0.001


class ProcessWriteLock:
    """An exclusive `flock` on `<database>.lock`, held around each write transaction.

    SQLite makes a second writer (another `--workers` process, the CLI) retry with sleeps
    of up to 100 ms while the first one commits: a worker can sleep long after the lock
    is free. Waiting on a file lock instead wakes it the moment the other one commits.
    """

    def __init__(self, db_path: str) -> None:
        self._fd: int | None = None
        if db_path != ":memory:":
            try:
                self._fd = os.open(f"{db_path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:
                # A read-only folder: SQLite's own busy handling still keeps writers apart.
                self._fd = None

    def __enter__(self) -> None:
        if self._fd is None:
            return
        # Polled rather than blocking: a thread that already holds the lock through another
        # storage object on the same file must get an error after the timeout, as with
        # SQLite's own lock, not hang for ever. The first polls come quickly: another
        # worker holds the lock only for a group's SQL and COMMIT (its fsync comes after,
        # sqlite_group_commit.LogSync), a fraction of a millisecond, and a fixed 1 ms poll
        # left the lock idle for most of each wait.
        deadline = time.monotonic() + LOCK_TIMEOUT_SECONDS
        pause = FIRST_POLL_SECONDS
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise sqlite3.OperationalError("database is locked") from None
                time.sleep(pause)
                pause = min(pause * 2, LAST_POLL_SECONDS)

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class SqliteStorage:
    def __init__(self, path: str, synchronous: str = "FULL", group_commit: bool = True) -> None:
        self.path = path
        if synchronous.upper() not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}")
        # FULL: every COMMIT fsyncs the write-ahead log, so an acknowledged write survives
        # a power cut; group commit keeps concurrent single writes at one fsync per group.
        self.synchronous = synchronous.upper()
        self.group_commit = group_commit and self.synchronous == "FULL"
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            create_private_file(path)  # owner-only, and so its -wal and -shm
        self._local = threading.local()
        self._write_lock = WriteLock()
        self._group: Group | None = None  # the open transaction of a group commit
        self._process_lock = ProcessWriteLock(path)
        self._writer = self._connect()
        self._log_sync: LogSync | None = None  # set below, once the schema is in
        self._init_schema()
        self._checkpointer: BackgroundCheckpointer | None = None
        if path != ":memory:":
            self._writer.execute("PRAGMA wal_autocheckpoint=0")
            # a log that grew (see sqlite_checkpoint) is cut back to this when it restarts
            self._writer.execute(f"PRAGMA journal_size_limit={sqlite_checkpoint.LOG_LIMIT_BYTES}")
            self._checkpointer = BackgroundCheckpointer(self._connect, f"{path}-wal")
        # The rows of big transactions are written on a second thread as they go.
        self._write_behind = WriteBehind() if json_rows_supported(self._writer) else None
        self._pids: dict[tuple[str, str], int] = {
            (rtype, code): pid
            for pid, rtype, code in self._writer.execute(
                "SELECT pid, rtype, code FROM search_params"
            )
        }
        self.cursors = CursorCodec(self._cursor_key())
        # Widest stored date period per pid, as written by this process (a floor of the table:
        # only used to skip redundant upserts; searches read the table itself).
        self._date_spans: dict[int, tuple[float, int]] = self._load_date_spans(self._writer)
        # Set by the service when terminology is available: token :below/:above/:in, and
        # the canonical unit of a quantity search value.
        self.expander: Any = None
        # Set by the service from Settings.limits: include expansion, count bounds.
        self.limits = Limits()
        self.canonical_query: Any = None
        # Set by the service with `shares_rows`: the parameters whose index rows answer a
        # search on a parameter (`combo-code` -> code, component-code; see shared_rows).
        self.pid_codes: Callable[[str, str], tuple[str, ...]] = lambda rtype, code: (code,)
        # ... and the reference parameters whose `Patient/X` names the owner of date rows
        # (`patient`, and `subject` where `patient` is subject restricted to patients).
        self.owner_codes: Callable[[str], tuple[str, ...]] = lambda rtype: (OWNER_PARAM,)
        # FULL with group commit on a file: the writer's COMMIT does not fsync the log; the
        # committer does, after the write lock is released (sqlite_group_commit.LogSync)
        # and before any answer for what it committed leaves.
        in_wal = self._writer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        if self.group_commit and path != ":memory:" and in_wal:
            self._log_sync = LogSync(f"{path}-wal")
            self._writer.execute("PRAGMA synchronous=NORMAL")

    # The index extractor may leave out rows that other parameters already hold.
    shares_rows = True

    @staticmethod
    def _load_date_spans(conn: sqlite3.Connection) -> dict[int, tuple[float, int]]:
        rows = conn.execute("SELECT pid, span, multi FROM date_spans")
        return {pid: (span, multi) for pid, span, multi in rows}

    def date_span(self, conn: sqlite3.Connection, pid: int) -> tuple[float, bool] | None:
        """(widest stored period, whether any resource had several values) for a date
        parameter, read from the table (another process may have written since)."""
        row = conn.execute("SELECT span, multi FROM date_spans WHERE pid=?", (pid,)).fetchone()
        return (row[0], bool(row[1])) if row else None

    @classmethod
    def from_url(cls, url: str) -> SqliteStorage:
        # As in SQLAlchemy: sqlite:///relative.db, sqlite:////absolute.db
        # ?synchronous=normal&group_commit=off: today's durability traded for speed (a
        # process crash loses nothing, a power cut may lose the last commits): benchmarks
        path, _, query = url.removeprefix("sqlite://").partition("?")
        path = path[1:] if path.startswith("/") else path
        if not path:
            raise ValueError("sqlite URL needs a path: sqlite:///path/to/diatabase.db")
        options = dict(parse_qsl(query))
        return cls(
            path,
            synchronous=options.get("synchronous", "FULL"),
            group_commit=options.get("group_commit", "on").lower() not in ("off", "0", "no"),
        )

    # -- connections ---------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute("PRAGMA temp_store=MEMORY")
        # Deleted content is overwritten with zeros (rights/erase_sqlite.py: why always).
        conn.execute("PRAGMA secure_delete=ON")
        return conn

    def reader(self) -> sqlite3.Connection:
        """This thread's read-only connection (for the audit store's queries)."""
        return self._reader()

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=1")
            sqlite_budget.watch(conn)
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
            migration = MIGRATIONS.get(version, "")
            conn.executescript("BEGIN;" + migration + SCHEMA)
            try:
                if 0 < version < FULLTEXT_SINCE:
                    sqlite_text.backfill(conn)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

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
        if self._checkpointer is not None:
            self._checkpointer.close()
        # A write stopped at shutdown may still be rolling back on another thread: close
        # the writer after it (bounded: a write that hangs must not keep the server up).
        locked = self._write_lock.acquire(timeout=LOCK_TIMEOUT_SECONDS)
        try:
            if locked:
                self._commit_group()
            if self._write_behind is not None:
                self._write_behind.close()
            self._writer.close()
            self._process_lock.close()
        finally:
            if locked:
                self._write_lock.release()

    # -- search parameter ids ------------------------------------------------------------

    def pid(self, rtype: str, code: str, create: bool = False) -> int | None:
        """The number of a (type, parameter) pair. Another process on the same file (a
        second worker, `diatabase load`) may have created it, so a miss asks the database."""
        pid = self._pids.get((rtype, code))
        if pid is not None:
            return pid
        # With create, we are inside a write transaction, under the write lock.
        conn = self._writer if create else self._reader()
        if create:
            conn.execute(
                "INSERT OR IGNORE INTO search_params (rtype, code) VALUES (?, ?)", (rtype, code)
            )
        row = conn.execute(
            "SELECT pid FROM search_params WHERE rtype=? AND code=?", (rtype, code)
        ).fetchone()
        if row is not None:
            self._pids[(rtype, code)] = pid = row[0]
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

    @sqlite_budget.interruptible
    def read(self, resource_type: str, id: str) -> StoredResource | None:
        return self._read(self._reader(), resource_type, id)

    @sqlite_budget.interruptible
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

    @sqlite_budget.interruptible
    def read_many(self, pks: Sequence[int], bodies: bool = True) -> list[StoredResource]:
        """Current versions for resource pks, in the order given; without `bodies`, from
        the resources table alone (json None, method unknown: "PUT")."""
        if not pks:
            return []
        conn = self._reader()
        if bodies:
            select = (
                "SELECT r.pk, h.type, h.id, h.version, h.last_updated, h.deleted, h.method, "
                "h.json FROM resources r JOIN history h ON h.type=r.type AND h.id=r.id AND "
                "h.version=r.version"
            )
        else:
            select = (
                "SELECT r.pk, r.type, r.id, r.version, r.last_updated, r.deleted, 'PUT', NULL "
                "FROM resources r"
            )
        rows: dict[int, StoredResource] = {}
        for start in range(0, len(pks), 500):
            chunk = list(pks[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for pk, *rest in conn.execute(f"{select} WHERE r.pk IN ({marks})", chunk):
                rows[pk] = self._row(tuple(rest))
        return [rows[pk] for pk in pks if pk in rows]

    @sqlite_budget.interruptible
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

    @sqlite_budget.interruptible
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
            yield from self._iter_current(conn, resource_type)
        finally:
            conn.close()

    def _iter_current(
        self, conn: sqlite3.Connection, resource_type: str
    ) -> Iterator[StoredResource]:
        for row in conn.execute(
            "SELECT h.type, h.id, h.version, h.last_updated, h.deleted, h.method, h.json "
            "FROM resources r JOIN history h ON h.type=r.type AND h.id=r.id AND "
            "h.version=r.version WHERE r.type=? AND r.deleted=0 ORDER BY r.pk",
            (resource_type,),
        ):
            yield self._row(row)

    @sqlite_budget.interruptible
    def search(self, query: Any, count: int, cursor: str | None, bodies: bool = True) -> Any:
        from fhir_server.storage.sqlite_search import run_search

        return run_search(self, self._reader(), query, count, cursor, bodies)

    # -- writes --------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[SqliteTransaction]:
        if self.group_commit and is_groupable():
            with self._grouped_transaction() as tx:
                yield tx
            return
        with self._write_lock:
            self._commit_group()  # small writes before this one are not kept waiting
            with self._process_lock:
                budget.check()  # stopped while it waited for the lock: nothing begun
                conn = self._writer
                conn.execute("BEGIN IMMEDIATE")
                tx = SqliteTransaction(self, conn)
                try:
                    # A stopped budget (client gone, server stopping) interrupts the statement
                    # running on the writer; never the COMMIT, which is outside this block.
                    with _Interrupter(conn) as interrupter, interrupter.armed():
                        yield tx
                        tx.flush()
                except BaseException as exc:
                    with contextlib.suppress(Exception):  # the batch in flight is undone too
                        tx.settle()
                    # An interrupted write may have rolled the transaction back already.
                    with contextlib.suppress(sqlite3.OperationalError):
                        conn.execute("ROLLBACK")
                    self.reload_after_rollback(conn)
                    spent = sqlite_budget.spent_budget(exc)
                    if spent is not None:
                        raise budget.BudgetExceeded(spent) from None
                    raise
                self._commit(conn)

    def _commit(self, conn: sqlite3.Connection, sync: bool = True) -> int:
        """COMMIT on the writer; the log fsynced before this returns unless `sync` is False:
        then the caller passes the number returned to `_log_sync.sync` outside the locks,
        before anyone learns of the commit."""
        conn.execute("COMMIT")
        number = self._log_sync.committed() if self._log_sync is not None else 0
        if self._checkpointer is not None:
            self._checkpointer.committed(conn)
        if sync and self._log_sync is not None:
            self._log_sync.sync(number)
        return number

    @contextmanager
    def _grouped_transaction(self) -> Iterator[SqliteTransaction]:
        """A member of a group commit (sqlite_group_commit.py): its own SAVEPOINT in the
        open transaction; committed by the last member, and only then returned from."""
        conn = self._writer
        self._write_lock.acquire()
        group: Group | None = None
        try:
            group = self._join_group()
            tx = SqliteTransaction(self, conn)
            conn.execute("SAVEPOINT member")
            try:
                yield tx
                tx.flush()
            except BaseException:
                with contextlib.suppress(Exception):
                    tx.settle()
                    conn.execute("ROLLBACK TO member")
                    conn.execute("RELEASE member")
                self.reload_after_rollback(conn)
                raise
            conn.execute("RELEASE member")
        finally:
            self._end_turn(group)
        group.wait()  # until the COMMIT that holds this write is over

    def _join_group(self) -> Group:
        """The open group, or a new one (BEGIN, under the process lock), under the lock."""
        group = self._group
        if group is None:
            budget.check()  # stopped while it waited for the lock: nothing begun
            self._process_lock.__enter__()
            try:
                self._writer.execute("BEGIN IMMEDIATE")
            except BaseException:
                self._process_lock.__exit__(None, None, None)
                raise
            group = self._group = Group()
        group.members += 1
        return group

    def _end_turn(self, group: Group | None) -> None:
        """Under the write lock, after a member's work (or failure): pass the open
        transaction on to a waiting writer, or commit it; then release the lock, and only
        then fsync the log of a commit made here, so that the next group (of this process
        or another) writes while the disk syncs this one."""
        committed: tuple[Group, int] | None = None
        try:
            if group is not None and not self._writer.in_transaction:
                # SQLite undid the whole transaction (an I/O error, a full disk): the
                # members before this one are lost with it
                self._group = None
                self._process_lock.__exit__(None, None, None)
                group.finish(sqlite3.OperationalError("the shared transaction was rolled back"))
            elif group is not None and (not self._write_lock.waiting() or group.full()):
                committed = self._commit_group(sync=False)
        finally:
            self._write_lock.release()
        if committed is not None:
            self._sync_and_finish(*committed)

    def _commit_group(self, sync: bool = True) -> tuple[Group, int] | None:
        """COMMIT the open group, if any (under the write lock), and wake its members;
        without `sync`, a group that committed is returned unwoken with its commit's
        number, for the caller's _sync_and_finish once it has released the locks."""
        group, self._group = self._group, None
        if group is None:
            return None
        try:
            number = self._commit(self._writer, sync=sync)
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                self._writer.execute("ROLLBACK")
            self.reload_after_rollback(self._writer)
            group.finish(exc)
            return None
        finally:
            self._process_lock.__exit__(None, None, None)
        if sync:
            group.finish()
            return None
        return group, number

    def _sync_and_finish(self, group: Group, number: int) -> None:
        """Wait for an fsync of the log covering `group`'s COMMIT (number `number`), then
        wake its members (their answers leave only now); a failed fsync fails them all:
        nothing says their writes are on the disk."""
        try:
            if self._log_sync is not None:
                self._log_sync.sync(number)
        except BaseException as exc:
            group.finish(exc)
            raise
        group.finish()

    def reload_after_rollback(self, conn: sqlite3.Connection) -> None:
        """The caches of what the undone writes created (pids, widened date spans) must
        not outlive them: a span cached wider than stored would stop later writes from
        recording theirs."""
        self._pids = {
            (rtype, code): pid
            for pid, rtype, code in conn.execute("SELECT pid, rtype, code FROM search_params")
        }
        self._date_spans = self._load_date_spans(conn)


class _Interrupter:
    """Interrupts the writer's running statement when the current budget stops, while
    armed; disarming waits for an interrupt in progress, so none can reach the COMMIT."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._guard = threading.Lock()
        self._armed = False

    def __enter__(self) -> _Interrupter:
        return self

    def __exit__(self, *exc: object) -> None:
        with self._guard:
            self._armed = False

    def _interrupt(self) -> None:
        with self._guard:
            if self._armed:
                self._conn.interrupt()

    @contextmanager
    def armed(self) -> Iterator[None]:
        current = budget.current()
        if current is None:
            yield
            return
        with self._guard:
            self._armed = True
        with current.on_stop(self._interrupt):
            yield


class SqliteTransaction:
    """Rows are buffered and written table by table with one executemany each when the
    transaction needs them (a read or search inside it) or commits: a batch of 1,000
    resources costs a dozen executemany calls instead of thousands. Creates (a new id the
    server made up) are buffered whole, resource and history rows included, with primary
    keys given here: max(pk) + 1 onwards, which is what SQLite would choose under the write
    lock; any other write first flushes them, so that SQLite numbers its own rows after."""

    def __init__(self, storage: SqliteStorage, conn: sqlite3.Connection) -> None:
        self.storage = storage
        self.conn = conn
        self._rows: dict[str, list[tuple]] = {
            table: [] for table in ("resources", "history", *INDEX_TABLES)
        }
        self._pending_pks: set[int] = set()
        self._next_pk: int | None = None
        self._write_behind = storage._write_behind
        self._buffered_index_rows = 0  # since the last hand-off: when to hand off
        self._savepoints = 0  # inside one, rows stay buffered (its rollback drops them)

    def settle(self) -> None:
        """Wait for the rows being written on the write-behind thread: before any other
        use of the connection."""
        if self._write_behind is not None:
            self._write_behind.settle()

    def read(self, resource_type: str, id: str) -> StoredResource | None:
        self._flush_creates()
        return self.storage._read(self.conn, resource_type, id)

    def iter_current(self, resource_type: str) -> Iterator[StoredResource]:
        """The current resources of a type as this transaction sees them."""
        self.flush()
        self.settle()
        yield from self.storage._iter_current(self.conn, resource_type)

    def flush(self) -> None:
        self._write_rows(self._rows)
        self._pending_pks.clear()

    def _flush_creates(self) -> None:
        self._write_rows(("resources", "history"))

    def _write_rows(self, tables: Iterable[str]) -> None:
        self.settle()
        for table in tables:
            values = self._rows[table]
            if values:
                marks = ",".join("?" * len(values[0]))
                target = INSERT_TARGETS.get(table, table)
                self.conn.executemany(f"INSERT INTO {target} VALUES ({marks})", values)
                values.clear()

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested scope: an error inside undoes only what the scope wrote."""
        self.settle()
        marks = {table: len(values) for table, values in self._rows.items()}
        self.conn.execute("SAVEPOINT entry")
        self._savepoints += 1
        try:
            yield
        except BaseException:
            self._savepoints -= 1
            for table, values in self._rows.items():
                del values[marks[table] :]
            # numbering resumes after the creates still buffered, or from what is stored
            kept = self._rows["resources"]
            self._next_pk = kept[-1][0] + 1 if kept else None
            self.conn.execute("ROLLBACK TO entry")
            self.conn.execute("RELEASE entry")
            self.storage.reload_after_rollback(self.conn)
            raise
        self._savepoints -= 1
        self.conn.execute("RELEASE entry")

    def search_ids(self, query: Any, limit: int) -> list[str]:
        from fhir_server.storage.sqlite_search import matching_ids

        self.flush()
        with sqlite_budget.watched(self.conn):
            return matching_ids(self.storage, self.conn, query, limit)

    def _index(self, pk: int, rtype: str, entries: Sequence[IndexEntry]) -> None:
        rows = self._rows
        self._pending_pks.add(pk)
        self._buffered_index_rows += len(entries)
        known_pids = self.storage._pids
        # One date row per target id of the resource's `patient` reference(s) (almost always
        # one), or one with no owner: the owner index must find every resource that
        # `patient=X` matches, whatever the target type.
        owners: list[str | None] = [
            e.target_id
            for e in entries
            if type(e) is ReferenceEntry and e.param == OWNER_PARAM and e.target_id is not None
        ] or [None]
        if len(owners) > 1:
            owners = list(dict.fromkeys(owners))
        spans: dict[int, tuple[float, int]] = {}
        for entry in entries:
            if entry.param in DIRECT_PARAMS:
                continue  # answered from the resources table itself
            if type(entry) is FullTextEntry:
                rows[sqlite_text.TABLE].append(sqlite_text.row(pk, entry))
                continue
            pid = known_pids.get((rtype, entry.param))
            if pid is None:
                self.settle()  # a new parameter number is written on the connection
                pid = self.storage.pid(rtype, entry.param, create=True)
            kind = type(entry)
            if kind is TokenEntry:
                rows["idx_token"].append((pk, pid, *entry[1:]))
            elif kind is ReferenceEntry:
                rows["idx_reference"].append((pk, pid, *entry[1:]))
            elif kind is DateEntry:
                date_rows = rows["idx_date"]
                for owner in owners:
                    date_rows.append((pk, pid, entry.low, entry.high, owner))
                span, count = spans.get(pid, (0.0, 0))
                spans[pid] = (max(span, entry.high - entry.low), count + 1)
            elif kind is StringEntry:
                rows["idx_string"].append((pk, pid, *entry[1:]))
            elif kind is QuantityEntry:
                rows["idx_quantity"].append((pk, pid, *entry[1:]))
            elif kind is NumberEntry:
                rows["idx_number"].append((pk, pid, *entry[1:]))
            elif kind is UriEntry:
                rows["idx_uri"].append((pk, pid, *entry[1:]))
            elif kind is CompositeEntry:
                row = _composite_row(pk, pid, entry)
                if row is not None:
                    rows["idx_composite"].append(row)
        known = self.storage._date_spans
        for pid, (span, count) in spans.items():
            multi = int(count > 1)
            old_span, old_multi = known.get(pid, (-1.0, 0))
            if span > old_span or multi > old_multi:
                self.settle()
                self.conn.execute(
                    "INSERT INTO date_spans VALUES (?, ?, ?) ON CONFLICT (pid) DO UPDATE "
                    "SET span = max(span, excluded.span), multi = max(multi, excluded.multi)",
                    (pid, span, multi),
                )
                known[pid] = (max(span, old_span), max(multi, old_multi))

    def _clear_index(self, pk: int) -> None:
        if pk in self._pending_pks:  # written earlier in this transaction, not yet flushed
            for table in INDEX_TABLES:
                self._rows[table] = [row for row in self._rows[table] if row[0] != pk]
        self.settle()  # rows handed off earlier are deleted below
        for table in INDEX_TABLES:
            key = KEY_COLUMNS.get(table, "pk")
            self.conn.execute(f"DELETE FROM {table} WHERE {key}=?", (pk,))

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
        if method == "POST" and version == 1:
            # A create: its id is new (the server made it up), nothing to look up.
            self.create_many([NewResource(resource_type, id, last_updated, json, index)])
            return
        self._flush_creates()
        self._next_pk = None  # SQLite numbers the row below
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
        self._maybe_write_behind()

    def create_many(self, creates: Sequence[NewResource]) -> None:
        pk = self._next_pk
        if pk is None:
            self.settle()
            pk = self.conn.execute("SELECT coalesce(max(pk), 0) + 1 FROM resources").fetchone()[0]
        resources, history = self._rows["resources"], self._rows["history"]
        for c in creates:
            resources.append((pk, c.resource_type, c.id, 1, c.last_updated, 0))
            history.append((c.resource_type, c.id, 1, c.last_updated, 0, "POST", c.json))
            self._index(pk, c.resource_type, c.index)
            pk += 1
        self._next_pk = pk
        self._maybe_write_behind()

    def _maybe_write_behind(self) -> None:
        """Hand the buffered rows to the write-behind thread once there are many."""
        if (
            self._buffered_index_rows < WRITE_BEHIND_ROWS
            or self._write_behind is None
            or self._savepoints
        ):
            return
        self._buffered_index_rows = 0
        batches = []
        for table, rows in self._rows.items():
            if rows:
                blob_column = HISTORY_JSON_COLUMN if table == "history" else None
                encoded = encode_rows(rows, blob_column)
                if encoded is not None:  # else executemany writes them at commit
                    target = INSERT_TARGETS.get(table, table)
                    statement = insert_from_json(target, len(rows[0]), blob_column)
                    batches.append((statement, encoded))
                    self._rows[table] = []
        if batches:
            self._write_behind.submit(self.conn, batches)

    def delete(self, resource_type: str, id: str, version: int, last_updated: float) -> None:
        self._flush_creates()
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
