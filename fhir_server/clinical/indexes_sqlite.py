"""The clinical indexes (indexes.py) in SQLite tables of the store's own database, written
on the write transaction's connection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fhir_server.clinical.indexes import DAY_FIELDS, Deltas

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS clinical_codes (patient TEXT, system TEXT, code TEXT, "
    "n INTEGER, PRIMARY KEY (patient, system, code)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS cgm_days (patient TEXT, day TEXT, "
    + ", ".join(f"{f} REAL" for f in DAY_FIELDS)
    + ", PRIMARY KEY (patient, day)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS cgm_days_day ON cgm_days (day, patient)",
)
BY_PATIENT = 500  # up to this many patients, their rows are read by key; beyond, by day
ADD_CODE = (
    "INSERT INTO clinical_codes VALUES (?, ?, ?, ?) ON CONFLICT (patient, system, code) "
    "DO UPDATE SET n = n + excluded.n"
)
ADD_DAY = (
    f"INSERT INTO cgm_days VALUES (?, ?, {', '.join('?' for _ in DAY_FIELDS)}) "
    "ON CONFLICT (patient, day) DO UPDATE SET "
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

    def replace(self, deltas: Deltas) -> None:
        with self.storage.transaction() as tx:
            tx.settle()
            tx.conn.execute("DELETE FROM clinical_codes")
            tx.conn.execute("DELETE FROM cgm_days")
            self.apply(tx, deltas)

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

    def days(
        self, first: str, last: str, patients: Sequence[str] | None = None
    ) -> dict[str, list[tuple[str, list[float]]]]:
        """patient -> [(day, DAY_FIELDS)] for days in [first, last] (ISO dates)."""
        columns = ", ".join(DAY_FIELDS)
        sql = f"SELECT patient, day, {columns} FROM cgm_days WHERE day BETWEEN ? AND ?"
        conn = self.storage.reader()
        if patients is None or len(patients) > BY_PATIENT:
            rows = conn.execute(sql, (first, last))
        else:  # a Group of a few patients: their rows, through the primary key
            marks = ", ".join("?" for _ in patients)
            rows = conn.execute(f"{sql} AND patient IN ({marks})", (first, last, *patients))
        wanted = None if patients is None else set(patients)
        found: dict[str, list[tuple[str, list[float]]]] = {}
        for row in rows:
            if wanted is None or row[0] in wanted:
                found.setdefault(row[0], []).append((row[1], list(row[2:])))
        return found

    def latest_day(self, patients: Sequence[str] | None = None) -> dict[str, str]:
        """patient -> the last day with CGM data."""
        conn = self.storage.reader()
        if patients is not None and len(patients) <= BY_PATIENT:
            marks = ", ".join("?" for _ in patients)
            rows = conn.execute(
                f"SELECT patient, max(day) FROM cgm_days WHERE patient IN ({marks}) "
                "GROUP BY patient", tuple(patients))
            return dict(rows.fetchall())
        found = dict(conn.execute("SELECT patient, max(day) FROM cgm_days GROUP BY patient"))
        if patients is not None:
            wanted = set(patients)
            found = {p: d for p, d in found.items() if p in wanted}
        return found
