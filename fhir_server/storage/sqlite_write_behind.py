"""The rows of a big transaction written on a thread of their own while it goes on.

A 90-day CGM import is one transaction of ~27,000 Observations and ~320,000 rows (resource,
history and index rows); SQLite needs ~3 s of CPU for their B-tree inserts, which used to
run at the end, after all the Python work (mapping, validation, extraction) was done. Here,
once enough index rows are buffered, the transaction hands every buffered row to this
writer and goes on preparing the next resources on the other core.

It works because of how a batch is sent: one statement per table,
`INSERT ... SELECT ... FROM json_each(?)` over the rows encoded as one JSON array, so that
SQLite inserts the whole batch inside a single sqlite3_step, which the sqlite3 module runs
without the GIL. (`executemany` on a second thread would take the GIL back for every row
and wait up to a switch interval each time.)

The connection is the transaction's own: the transaction waits for the writer (`settle`)
before it uses the connection for anything else, so that the two threads never use it at
the same time, and a batch's error surfaces in the transaction, which then rolls back.
"""

from __future__ import annotations

import functools
import sqlite3
from concurrent.futures import Future, ThreadPoolExecutor

import orjson

# Below this many buffered index rows nothing is handed off: a Bundle of 1,000 resources
# (~13,000 index rows) is written at commit as before, without a thread hand-off.
WRITE_BEHIND_ROWS = 20_000


def json_rows_supported(conn: sqlite3.Connection) -> bool:
    """Whether this SQLite has the JSON functions (built in since 3.38, often before)."""
    try:
        row = conn.execute("SELECT json_extract(value, '$[1]') FROM json_each('[[1, 2.5]]')")
        return row.fetchone() == (2.5,)
    except sqlite3.Error:
        return False


@functools.cache
def insert_from_json(table: str, width: int, blob_column: int | None = None) -> str:
    """The statement that inserts the rows of a JSON array of `width`-long arrays (the
    `blob_column` as the bytes of its text, see encode_rows)."""
    columns = ", ".join(
        f"CAST(json_extract(value, '$[{i}]') AS BLOB)" if i == blob_column
        else f"json_extract(value, '$[{i}]')"
        for i in range(width)
    )
    return f"INSERT INTO {table} SELECT {columns} FROM json_each(?)"


def encode_rows(rows: list[tuple], blob_column: int | None = None) -> str | None:
    """The rows as one JSON array, the UTF-8 bytes of `blob_column` (a resource's JSON) as
    text; None when JSON cannot carry them exactly (other bytes, integers beyond 64 bits):
    those are written with executemany at commit instead. Floats are finite here: the
    index extractor drops infinities and NaN."""
    try:
        if blob_column is not None:
            rows = [
                (*row[:blob_column], None if (b := row[blob_column]) is None else b.decode(),
                 *row[blob_column + 1 :])
                for row in rows
            ]
        return orjson.dumps(rows).decode()
    except (TypeError, UnicodeDecodeError):
        return None


class WriteBehind:
    """One writer thread for a storage's writer connection; one batch in flight at most."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None

    def submit(self, conn: sqlite3.Connection, batches: list[tuple[str, str]]) -> None:
        """Write (statement, JSON rows) batches on the writer thread, after the last one."""
        self.settle()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="sqlite-write-behind")
        self._pending = self._executor.submit(_write, conn, batches)

    def settle(self) -> None:
        """Wait for the batch in flight; its error, if any, is raised here."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def _write(conn: sqlite3.Connection, batches: list[tuple[str, str]]) -> None:
    for statement, rows in batches:
        conn.execute(statement, (rows,))
