"""Cohort snapshots: the members of each evaluation of a Group's definition, with its date,
in a SQLite file beside the job store (`cohorts.db`), so that a cohort of a million
patients is written and read a batch at a time, never held in memory, and evaluations can
be compared, counted and exported later.

Evaluation works in scratch tables of the same file (one per criterion, dropped after):
the patients matched by each criterion are streamed in, and the members are what SQL's
INTERSECT and EXCEPT leave.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fhir_server.storage.private_files import create_private_file

SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id TEXT NOT NULL,
    evaluated_at REAL NOT NULL,
    definition TEXT NOT NULL,       -- sha256 of the definition evaluated
    count INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS evaluations_group ON evaluations(group_id, id);
CREATE TABLE IF NOT EXISTS members (
    evaluation INTEGER NOT NULL,
    patient TEXT NOT NULL,
    PRIMARY KEY (evaluation, patient)
) WITHOUT ROWID;
"""
BATCH = 500


@dataclass(frozen=True)
class Evaluation:
    id: int
    group_id: str
    evaluated_at: float
    definition: str
    count: int


class CohortStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        create_private_file(self.path)
        self._local = threading.local()
        self._conn().executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA temp_store=FILE")  # scratch sets on disk, not in memory
            self._local.conn = conn
        return conn

    # -- scratch sets --------------------------------------------------------------------

    def scratch(self, name: str, ids: Iterable[str]) -> int:
        """A fresh scratch table `name` holding `ids` (deduplicated); returns its size."""
        conn = self._conn()
        conn.execute(f"DROP TABLE IF EXISTS temp.{name}")
        conn.execute(f"CREATE TEMP TABLE {name} (patient TEXT PRIMARY KEY) WITHOUT ROWID")
        batch: list[tuple[str]] = []
        for pid in ids:
            batch.append((pid,))
            if len(batch) == BATCH:
                conn.executemany(f"INSERT OR IGNORE INTO temp.{name} VALUES (?)", batch)
                batch = []
        if batch:
            conn.executemany(f"INSERT OR IGNORE INTO temp.{name} VALUES (?)", batch)
        return conn.execute(f"SELECT count(*) FROM temp.{name}").fetchone()[0]

    def combine(self, into: str, positives: list[str], negatives: list[str]) -> None:
        """`into` := the intersection of `positives` minus the union of `negatives`."""
        conn = self._conn()
        select = " INTERSECT ".join(f"SELECT patient FROM temp.{p}" for p in positives)
        select += "".join(f" EXCEPT SELECT patient FROM temp.{n}" for n in negatives)
        conn.execute(f"DROP TABLE IF EXISTS temp.{into}")
        conn.execute(f"CREATE TEMP TABLE {into} (patient TEXT PRIMARY KEY) WITHOUT ROWID")
        conn.execute(f"INSERT INTO temp.{into} {select}")

    def scratch_batches(self, name: str, size: int = BATCH) -> Iterator[list[str]]:
        yield from self._keyset(f"SELECT patient FROM temp.{name} WHERE patient > ? "
                                "ORDER BY patient LIMIT ?", (), "", size)

    def drop_scratch(self, names: Iterable[str]) -> None:
        for name in names:
            self._conn().execute(f"DROP TABLE IF EXISTS temp.{name}")

    # -- snapshots -----------------------------------------------------------------------

    def record(self, group_id: str, definition: str, scratch: str,
               evaluated_at: float | None = None) -> Evaluation:
        """Store an evaluation whose members are in the scratch table `scratch` (copied in
        one short transaction: the searches that made them held no lock)."""
        conn = self._conn()
        when = evaluated_at if evaluated_at is not None else time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            cursor = conn.execute(
                "INSERT INTO evaluations (group_id, evaluated_at, definition, count) "
                "VALUES (?, ?, ?, 0)", (group_id, when, definition))
            evaluation = cursor.lastrowid
            conn.execute(f"INSERT INTO main.members SELECT ?, patient FROM temp.{scratch}",
                         (evaluation,))
            conn.execute("UPDATE evaluations SET count=(SELECT count(*) FROM members WHERE "
                         "evaluation=?) WHERE id=?", (evaluation, evaluation))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        found = self.evaluation(group_id, evaluation)
        assert found is not None
        return found

    def evaluation(self, group_id: str, evaluation: int | None = None) -> Evaluation | None:
        """One evaluation of the group (the latest when `evaluation` is None)."""
        if evaluation is None:
            row = self._conn().execute(
                "SELECT id, group_id, evaluated_at, definition, count FROM evaluations "
                "WHERE group_id=? ORDER BY id DESC LIMIT 1", (group_id,)).fetchone()
        else:
            row = self._conn().execute(
                "SELECT id, group_id, evaluated_at, definition, count FROM evaluations "
                "WHERE group_id=? AND id=?", (group_id, evaluation)).fetchone()
        return Evaluation(*row) if row else None

    def previous(self, current: Evaluation) -> Evaluation | None:
        row = self._conn().execute(
            "SELECT id, group_id, evaluated_at, definition, count FROM evaluations "
            "WHERE group_id=? AND id<? ORDER BY id DESC LIMIT 1",
            (current.group_id, current.id)).fetchone()
        return Evaluation(*row) if row else None

    def difference(self, later: Evaluation, earlier: Evaluation) -> tuple[int, int]:
        """(added, removed) patients from `earlier` to `later`, counted in SQL."""
        conn = self._conn()
        added = conn.execute(
            "SELECT count(*) FROM (SELECT patient FROM members WHERE evaluation=? EXCEPT "
            "SELECT patient FROM members WHERE evaluation=?)", (later.id, earlier.id)
        ).fetchone()[0]
        removed = conn.execute(
            "SELECT count(*) FROM (SELECT patient FROM members WHERE evaluation=? EXCEPT "
            "SELECT patient FROM members WHERE evaluation=?)", (earlier.id, later.id)
        ).fetchone()[0]
        return added, removed

    def member_batches(self, evaluation: Evaluation, after: str = "",
                       size: int = BATCH) -> Iterator[list[str]]:
        """The members in sorted batches, from after the id `after` (keyset paging)."""
        yield from self._keyset("SELECT patient FROM members WHERE evaluation=? AND "
                                "patient > ? ORDER BY patient LIMIT ?", (evaluation.id,),
                                after, size)

    def _keyset(self, sql: str, args: tuple, after: str = "",
                size: int = BATCH) -> Iterator[list[str]]:
        while True:
            rows = self._conn().execute(sql, (*args, after, size)).fetchall()
            if not rows:
                return
            batch = [row[0] for row in rows]
            yield batch
            after = batch[-1]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
