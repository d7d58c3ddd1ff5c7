"""Nightscout sites: one per patient, each with its own API secret.

Kept in the auth store's file (owner-only, beside the other credentials; never in the
clinical database, so dumps and exports do not carry them). Only hashes of the secret are
kept: uploaders send the SHA-1 (or SHA-512) hex digest of the secret in `api-secret`, so
the store keeps the SHA-256 of each of those digests and compares a presented digest by
hashing it (the secret itself, 32 random URL-safe characters unless the operator gives one
of at least 12, is shown once, by `diatabase nightscout add`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fhir_server.storage.private_files import create_private_file

MIN_SECRET = 12
SCHEMA = """
CREATE TABLE IF NOT EXISTS nightscout_sites (
    site TEXT PRIMARY KEY, patient TEXT NOT NULL, sha1_hash TEXT NOT NULL,
    sha512_hash TEXT NOT NULL, created REAL NOT NULL, revoked REAL);
"""


@dataclass(frozen=True)
class Site:
    site: str
    patient: str  # the Patient id the site writes and reads
    created: float
    revoked: float | None


def _sha256(text: str) -> str:
    return hashlib.sha256(text.strip().lower().encode()).hexdigest()


class NightscoutSites:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        create_private_file(path)
        self._conn().executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            old = os.umask(0o077)  # the -wal and -shm files: owner-only too
            try:
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
            finally:
                os.umask(old)
            self._local.conn = conn
        return conn

    def add(self, patient: str, secret: str | None = None) -> tuple[Site, str]:
        """A new site for `patient` (an id); returns it with its secret (shown once)."""
        if secret is None:
            secret = secrets.token_urlsafe(24)
        if len(secret) < MIN_SECRET:
            raise ValueError(f"the secret must have at least {MIN_SECRET} characters")
        site = secrets.token_hex(8)
        now = time.time()
        sha1 = hashlib.sha1(secret.encode()).hexdigest()
        sha512 = hashlib.sha512(secret.encode()).hexdigest()
        self._conn().execute(
            "INSERT INTO nightscout_sites (site, patient, sha1_hash, sha512_hash, created) "
            "VALUES (?,?,?,?,?)", (site, patient, _sha256(sha1), _sha256(sha512), now))
        return Site(site, patient, now, None), secret

    def sites(self) -> list[Site]:
        rows = self._conn().execute(
            "SELECT site, patient, created, revoked FROM nightscout_sites ORDER BY created")
        return [Site(*row) for row in rows]

    def revoke(self, site: str) -> bool:
        cursor = self._conn().execute(
            "UPDATE nightscout_sites SET revoked = ? WHERE site = ? AND revoked IS NULL",
            (time.time(), site))
        return cursor.rowcount == 1

    def authenticate(self, site: str, presented: str | None) -> Site | None:
        """The active site if `presented` is the SHA-1 or SHA-512 hex digest of its secret."""
        if not presented or len(presented) > 256:
            return None
        row = self._conn().execute(
            "SELECT site, patient, created, revoked, sha1_hash, sha512_hash "
            "FROM nightscout_sites WHERE site = ?", (site,)).fetchone()
        if row is None or row[3] is not None:
            return None
        digest = _sha256(presented)
        if hmac.compare_digest(digest, row[4]) or hmac.compare_digest(digest, row[5]):
            return Site(*row[:4])
        return None
