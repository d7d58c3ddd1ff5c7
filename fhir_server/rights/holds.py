"""Legal holds: resources the operator has frozen (litigation, an investigation), which an
erasure must not remove while the hold stands. Operator bookkeeping, kept beside the job
store (`<jobs dir>/holds.db`, owner-only) whatever the clinical backend. A hold on a
Patient holds the patient's whole compartment."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhir_server.jobs.store import default_jobs_dir
from fhir_server.storage.private_files import create_private_file, private_folder

SCHEMA = """
CREATE TABLE IF NOT EXISTS holds (
    type TEXT NOT NULL, id TEXT NOT NULL, reason TEXT NOT NULL, since REAL NOT NULL,
    PRIMARY KEY (type, id)
)
"""


@dataclass(frozen=True)
class Hold:
    resource_type: str
    id: str
    reason: str
    since: float


def holds_path(settings: Any) -> Path:
    return private_folder(default_jobs_dir(settings)) / "holds.db"


class Holds:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        create_private_file(self.path)
        with self._conn() as conn:
            conn.execute(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60)

    def set(self, resource_type: str, rid: str, reason: str) -> None:
        with self._conn() as conn:
            conn.execute(
                "INSERT INTO holds VALUES (?, ?, ?, ?) ON CONFLICT (type, id) "
                "DO UPDATE SET reason=excluded.reason",
                (resource_type, rid, reason, time.time()),
            )

    def clear(self, resource_type: str, rid: str) -> bool:
        with self._conn() as conn:
            return conn.execute(
                "DELETE FROM holds WHERE type=? AND id=?", (resource_type, rid)
            ).rowcount > 0

    def all(self) -> list[Hold]:
        with self._conn() as conn:
            rows = conn.execute("SELECT type, id, reason, since FROM holds ORDER BY since")
            return [Hold(*row) for row in rows]

    def held(self, keys: Iterable[tuple[str, str]]) -> list[Hold]:
        """The holds on any of `keys`."""
        wanted = set(keys)
        return [h for h in self.all() if (h.resource_type, h.id) in wanted]
