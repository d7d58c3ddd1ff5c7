"""Linkage keys: the same person gets the same pseudonymous key in every source, and each
research project its own, as in the chaining of the French national health data system
(SNDS), where identity traits are hashed twice with keys held by two different parties.

Traits (what SNDS chaining uses): the NIR (the INS-NIR, 13 characters without its 2-digit
key; Corsica's 2A/2B kept), the full date of birth, the sex (1 male, 2 female). They are
normalised (spaces, dots and dashes removed, upper case, the key dropped) so that an
HL7 v2 feed writing `1 84 12 75 123 456 78` and a practice writing `1841275123456` give
the same traits. Without all three, a patient has no linkage key.

Stage 1 (the warehouse, this server): HMAC-SHA-256 of the traits under a key derived from
the warehouse's master secret. The same person from any source gets the same stage-1
value; without the master secret nobody can compute it, so the 10^13 NIR space cannot be
searched from a stage-1 value.

Stage 2 (a trusted third party, `linkage_ttp.py`, run elsewhere with its own secret):
HMAC-SHA-256 of (project id, stage-1 value). Two projects get unlinkable keys; the
warehouse never holds the stage-2 secret, so it cannot compute a project's keys from
traits either: it only stores the answers the third party returns (LinkageStore).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fhir_server.deid.keys import LINKAGE_STAGE1, derive
from fhir_server.storage.private_files import create_private_file, private_folder

SYSTEM_PREFIX = "urn:diatabase:linkage:"
# INS-NIR (qualified national identity) and its test OID: the NIR of the person.
NIR_SYSTEMS = frozenset({"urn:oid:1.2.250.1.213.1.4.8", "urn:oid:1.2.250.1.213.1.4.10"})
_NIR = re.compile(r"([1-478][0-9]{4}(?:2A|2B|[0-9]{2})[0-9]{6})([0-9]{2})?")
_SEPARATORS = re.compile(r"[\s.\-]")
_BIRTH_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_SEX = {"male": "1", "female": "2"}


def traits(patient: dict[str, Any]) -> str | None:
    """`NIR|YYYYMMDD|sex` of a Patient, normalised; None when one of them is missing."""
    nir = None
    for identifier in patient.get("identifier") or ():
        if not isinstance(identifier, dict) or identifier.get("system") not in NIR_SYSTEMS:
            continue
        value = identifier.get("value")
        if isinstance(value, str):
            match = _NIR.fullmatch(_SEPARATORS.sub("", value).upper())
            if match is not None:
                nir = match.group(1)
                break
    birth = patient.get("birthDate")
    sex = _SEX.get(patient.get("gender"))  # type: ignore[arg-type]
    if nir is None or sex is None or not isinstance(birth, str):
        return None
    if _BIRTH_DATE.fullmatch(birth) is None:
        return None
    return f"{nir}|{birth.replace('-', '')}|{sex}"


def stage1_key(master: bytes) -> bytes:
    return derive(master, LINKAGE_STAGE1, 32)


def stage1(key: bytes, normalised_traits: str) -> str:
    return hmac.new(key, normalised_traits.encode(), hashlib.sha256).hexdigest()


def system(recipient_id: str) -> str:
    return SYSTEM_PREFIX + recipient_id


class LinkageStore:
    """The stage-2 keys the third party returned: (project, stage-1 value) -> key. A
    SQLite file of its own (owner-only); it holds no trait and no patient id."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            private_folder(self.path.parent)
            create_private_file(self.path)
            conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            conn.execute(
                "CREATE TABLE IF NOT EXISTS linkage (project TEXT NOT NULL, stage1 TEXT NOT "
                "NULL, key TEXT NOT NULL, PRIMARY KEY (project, stage1)) WITHOUT ROWID"
            )
            self._local.conn = conn
        return conn

    def put(self, rows: Iterable[tuple[str, str, str]]) -> int:
        conn = self._conn()
        with conn:
            cursor = conn.executemany("INSERT OR REPLACE INTO linkage VALUES (?, ?, ?)", rows)
        return cursor.rowcount

    def keys(self, project: str, stage1_values: list[str]) -> dict[str, str]:
        if not self.path.exists():
            return {}
        conn = self._conn()
        found: dict[str, str] = {}
        for start in range(0, len(stage1_values), 500):
            batch = stage1_values[start : start + 500]
            marks = ",".join("?" * len(batch))
            rows = conn.execute(
                f"SELECT stage1, key FROM linkage WHERE project=? AND stage1 IN ({marks})",
                (project, *batch),
            )
            found.update(rows.fetchall())
        return found


def store_path(setting: str, db_url: str) -> str:
    return setting or default_store_path(db_url)


def default_store_path(db_url: str) -> str:
    """Beside a SQLite database, else in the working folder (like exports)."""
    if db_url.startswith("sqlite:///") and ":memory:" not in db_url:
        return db_url.removeprefix("sqlite:///").split("?", 1)[0] + ".deid-linkage.sqlite"
    return "diatabase-deid-linkage.sqlite"
