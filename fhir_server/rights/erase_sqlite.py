"""Erasure on SQLite: every version of some resources removed, with their index and
full-text rows, so that their values do not stay in the database file or its log.

- The connections run with `secure_delete` on (sqlite.py `_connect`): SQLite overwrites
  deleted content with zeros, in the page and in the free pages, instead of leaving it
  until the space is reused. It is on for every delete, not only erasures: the index rows
  an update or a delete drops hold the same values (a former name, identifier), and
  switching it on only for erasures would leave those behind.
- FTS5 records a deletion as a marker beside the words, which stay in older segments until
  they are merged: the index is merged (`optimize`) after an erasure, so the words go.
  (SQLite 3.44's FTS5 `secure-delete` option would avoid the merge; 3.40 is what Debian
  12's Python has.)
- The write-ahead log still holds the pages as they were before: it is checkpointed into
  the database and truncated to zero bytes (`wal_checkpoint(TRUNCATE)`, retried while
  readers of an older snapshot finish).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from fhir_server.storage import sqlite_text

# Rows kept beside the resources naming a patient (clinical/indexes_sqlite.py, the
# subscriptions' per-patient state) or a resource (the subscriptions' pending events).
PATIENT_TABLES = ("clinical_codes", "cgm_days", "subscription_state")
RESOURCE_TABLES = {"subscription_events": ("focus_type", "focus_id")}
CHECKPOINT_SECONDS = 60.0


def erase(storage: Any, keys: Sequence[tuple[str, str]], patients: Sequence[str]) -> int:
    """Remove every version of `keys` ((type, id) pairs) and the per-patient rows of
    `patients`; returns the number of versions removed."""
    removed = 0
    with storage.transaction() as tx:
        tx.flush()
        tx.settle()
        conn: sqlite3.Connection = tx.conn
        for rtype, rid in keys:
            row = conn.execute(
                "SELECT pk FROM resources WHERE type=? AND id=?", (rtype, rid)
            ).fetchone()
            if row is not None:
                tx._clear_index(row[0])
                conn.execute("DELETE FROM resources WHERE pk=?", (row[0],))
            removed += conn.execute(
                "DELETE FROM history WHERE type=? AND id=?", (rtype, rid)
            ).rowcount
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table, (type_column, id_column) in RESOURCE_TABLES.items():
            if table in tables:
                conn.executemany(
                    f"DELETE FROM {table} WHERE {type_column}=? AND {id_column}=?", keys
                )
        for table in PATIENT_TABLES:
            if table in tables:
                conn.executemany(
                    f"DELETE FROM {table} WHERE patient=?", [(p,) for p in patients]
                )
    with storage.transaction() as tx:
        tx.settle()
        # Merge the full-text segments: the erased words leave the index itself.
        tx.conn.execute(
            f"INSERT INTO {sqlite_text.TABLE} ({sqlite_text.TABLE}) VALUES ('optimize')"
        )
    truncate_log(storage)
    return removed


def truncate_log(storage: Any) -> None:
    """Copy the log into the database and cut it to zero bytes, so that no frame of a page
    as it was before the erasure stays in the -wal file."""
    deadline = time.monotonic() + CHECKPOINT_SECONDS
    with storage._write_lock, storage._process_lock:
        while True:
            busy = storage._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if not busy or time.monotonic() > deadline:
                return
            time.sleep(0.05)  # a reader of an older snapshot is finishing


def deleted_referring(storage: Any, patient_id: str) -> list[tuple[str, str]]:
    """Resources deleted before the erasure whose former versions name the patient (a
    deletion drops index rows, so no search finds them): read from the history."""
    needle = f'"Patient/{patient_id}"'.encode()
    rows = storage._reader().execute(
        "SELECT DISTINCT h.type, h.id FROM resources r JOIN history h "
        "ON h.type=r.type AND h.id=r.id WHERE r.deleted=1 AND instr(h.json, ?) > 0",
        (needle,),
    )
    return [(t, i) for t, i in rows]
