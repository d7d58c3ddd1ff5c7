"""The clinical indexes (indexes.py) in SQLite tables of the store's own database, written
on the write transaction's connection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fhir_server.clinical.glucose import CGM_CODES
from fhir_server.clinical.indexes import DAY_FIELDS, Deltas

CGM_CODE_PAIR = tuple(CGM_CODES)

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS clinical_codes (patient TEXT, system TEXT, code TEXT, "
    "n INTEGER, PRIMARY KEY (patient, system, code)) WITHOUT ROWID",
    # keyed by day first: the list reads a window of days for every patient as one range
    "CREATE TABLE IF NOT EXISTS cgm_days (patient TEXT, day TEXT, "
    + ", ".join(f"{f} REAL" for f in DAY_FIELDS)
    + ", PRIMARY KEY (day, patient)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS cgm_days_patient ON cgm_days (patient, day)",
    "CREATE INDEX IF NOT EXISTS clinical_codes_code ON clinical_codes (code, patient)",
)
VERSION_KEY = "clinical_indexes_version"
BY_PATIENT = 500  # up to this many patients, their rows are read by key; beyond, by day
ADD_CODE = (
    "INSERT INTO clinical_codes VALUES (?, ?, ?, ?) ON CONFLICT (patient, system, code) "
    "DO UPDATE SET n = n + excluded.n"
)
ADD_DAY = (
    f"INSERT INTO cgm_days VALUES (?, ?, {', '.join('?' for _ in DAY_FIELDS)}) "
    "ON CONFLICT (day, patient) DO UPDATE SET "
    + ", ".join(f"{f} = {f} + excluded.{f}" for f in DAY_FIELDS)
)


class SqliteClinicalIndexes:
    def __init__(self, storage: Any) -> None:
        self.storage = storage
        with storage.transaction() as tx:
            tx.settle()
            for statement in SCHEMA:
                tx.conn.execute(statement)

    def apply(self, tx: Any, deltas: Deltas) -> None:
        tx.settle()  # the write-behind thread must be done with the connection
        conn = tx.conn
        conn.executemany(ADD_CODE, [(*key, n) for key, n in deltas.codes.items()])
        conn.executemany(ADD_DAY, [(*key, *row) for key, row in deltas.days.items()])
        conn.execute("DELETE FROM clinical_codes WHERE n <= 0")
        conn.execute("DELETE FROM cgm_days WHERE n <= 0")

    def version(self, tx: Any) -> int | None:
        """INDEXES_VERSION of the code that last rebuilt them; None: never built."""
        tx.settle()
        row = tx.conn.execute("SELECT value FROM meta WHERE key = ?", (VERSION_KEY,)).fetchone()
        return int(row[0]) if row else None

    def replace(self, tx: Any, deltas: Deltas, version: int) -> None:
        tx.settle()
        tx.conn.execute("DELETE FROM clinical_codes")
        tx.conn.execute("DELETE FROM cgm_days")
        self.apply(tx, deltas)
        tx.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (VERSION_KEY, version))

    def codes(self, patient: str) -> list[tuple[str, str]]:
        """(system, code) of the patient's current Observations."""
        rows = self.storage.reader().execute(
            "SELECT system, code FROM clinical_codes WHERE patient = ? AND n > 0 "
            "ORDER BY system, code",
            (patient,),
        )
        return [(s, c) for s, c in rows]

    def code_counts(self, patient: str) -> dict[tuple[str, str], int]:
        rows = self.storage.reader().execute(
            "SELECT system, code, n FROM clinical_codes WHERE patient = ? AND n > 0", (patient,)
        )
        return {(s, c): int(n) for s, c, n in rows}

    def window(
        self, first: str, last: str, patients: Sequence[str] | None = None
    ) -> dict[str, tuple[int, str, list[float]]]:
        """patient -> (days with readings, the last of them, DAY_FIELDS summed) over
        [first, last] (ISO dates), summed by SQLite: one row per patient comes back."""
        sums = ", ".join(f"sum({f})" for f in DAY_FIELDS)
        sql = (f"SELECT patient, count(*), max(day), {sums} FROM cgm_days "
               "WHERE day BETWEEN ? AND ? AND n > 0")
        args: tuple = (first, last)
        if patients is not None and len(patients) <= BY_PATIENT:
            # a Group of a few patients: their rows, through the (patient, day) index
            sql += f" AND patient IN ({', '.join('?' for _ in patients)})"
            args = (*args, *patients)
        rows = self.storage.reader().execute(sql + " GROUP BY patient", args)
        wanted = None if patients is None else set(patients)
        return {
            row[0]: (int(row[1]), row[2], list(row[3:]))
            for row in rows
            if wanted is None or row[0] in wanted
        }

    def cgm_patients(self, patients: Sequence[str]) -> set[str]:
        """Those of `patients` with CGM readings (their codes in the catalogue)."""
        rows = self.storage.reader().execute(
            "SELECT DISTINCT patient FROM clinical_codes WHERE code IN (?, ?) AND n > 0",
            CGM_CODE_PAIR,
        )
        wanted = set(patients)
        return {p for (p,) in rows if p in wanted}
