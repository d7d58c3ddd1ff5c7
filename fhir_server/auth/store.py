"""The auth store: registered Backend Services clients, the assertions already used, and
the server's token-signing key, in a small SQLite file of its own, created owner-only.

Why a file of its own and not the FHIR database: it holds credentials (a private key, the
clients' public keys and allowed scopes), which must not travel with the clinical data
(dumps, replicas, exports), and it works the same whichever backend holds the data
(SQLite or MongoDB). SQLite makes the used-assertion record shared by every worker process
of one server and kept across restarts, so a replayed assertion is refused everywhere.
Where: DIATABASE_AUTH_STORE, else beside a SQLite database (`<db>.auth`), else
`./diatabase-auth.db`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhir_server.auth.scopes import ScopeSet, parse_scopes

SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, jwks TEXT, jwks_url TEXT, scope TEXT NOT NULL,
    created REAL NOT NULL, revoked REAL);
CREATE TABLE IF NOT EXISTS used_assertions (
    client_id TEXT NOT NULL, jti TEXT NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (client_id, jti));
CREATE TABLE IF NOT EXISTS signing_keys (
    kid TEXT PRIMARY KEY, jwk TEXT NOT NULL, created REAL NOT NULL);
"""


@dataclass(frozen=True)
class Client:
    id: str
    name: str
    jwks: dict[str, Any] | None
    jwks_url: str | None
    scope: str
    created: float
    revoked: float | None

    @property
    def scopes(self) -> ScopeSet:
        return parse_scopes(self.scope)


def store_path(settings: Any) -> Path:
    configured = getattr(settings, "auth_store", "")
    if configured:
        return Path(configured)
    db_url = settings.db_url
    if db_url.startswith("sqlite:///") and ":memory:" not in db_url:
        return Path(db_url.removeprefix("sqlite:///").split("?", 1)[0] + ".auth")
    return Path("diatabase-auth.db")


class AuthStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # Owner-only from the first byte (no window where it is world-readable).
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        for suffix in ("-wal", "-shm"):
            _owner_only_if_present(Path(f"{path}{suffix}"))
        with self._conn() as conn:
            conn.executescript(SCHEMA)
        for suffix in ("-wal", "-shm"):
            _owner_only_if_present(Path(f"{path}{suffix}"))

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            old = os.umask(0o077)  # the -wal and -shm files SQLite makes: owner-only too
            try:
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
            finally:
                os.umask(old)
            self._local.conn = conn
        return conn

    # -- clients ---------------------------------------------------------------------------

    def add_client(self, name: str, scope: str, jwks: dict[str, Any] | None = None,
                   jwks_url: str | None = None) -> Client:
        if not (jwks or jwks_url):
            raise ValueError("a client needs its public keys: a JWKS or a JWKS URL")
        scopes = parse_scopes(scope)
        if not scopes.resource:
            raise ValueError(f"no SMART resource scope in {scope!r} "
                             "(e.g. system/Observation.crus)")
        client_id = uuid.uuid4().hex
        now = time.time()
        self._conn().execute(
            "INSERT INTO clients (id, name, jwks, jwks_url, scope, created) VALUES (?,?,?,?,?,?)",
            (client_id, name, json.dumps(jwks) if jwks else None, jwks_url, scopes.text, now),
        )
        return Client(client_id, name, jwks, jwks_url, scopes.text, now, None)

    def client(self, client_id: str) -> Client | None:
        row = self._conn().execute(
            "SELECT id, name, jwks, jwks_url, scope, created, revoked FROM clients WHERE id=?",
            (client_id,),
        ).fetchone()
        return _client(row) if row else None

    def clients(self) -> list[Client]:
        rows = self._conn().execute(
            "SELECT id, name, jwks, jwks_url, scope, created, revoked FROM clients "
            "ORDER BY created"
        )
        return [_client(row) for row in rows]

    def revoke(self, client_id: str) -> bool:
        cursor = self._conn().execute(
            "UPDATE clients SET revoked=? WHERE id=? AND revoked IS NULL",
            (time.time(), client_id),
        )
        return cursor.rowcount == 1

    # -- assertions ------------------------------------------------------------------------

    def use_assertion(self, client_id: str, jti: str, expires: float) -> bool:
        """Record a client assertion's jti; False when it was used before (a replay).
        Records are kept until the assertion expires: it cannot be accepted after."""
        conn = self._conn()
        now = time.time()
        conn.execute("DELETE FROM used_assertions WHERE expires < ?", (now - 60,))
        try:
            conn.execute(
                "INSERT INTO used_assertions (client_id, jti, expires) VALUES (?,?,?)",
                (client_id, jti, expires),
            )
        except sqlite3.IntegrityError:
            return False
        return True

    # -- the server's signing key ----------------------------------------------------------

    def signing_key(self) -> dict[str, Any] | None:
        row = self._conn().execute(
            "SELECT jwk FROM signing_keys ORDER BY created DESC LIMIT 1"
        ).fetchone()
        return json.loads(row[0]) if row else None

    def save_signing_key(self, jwk: dict[str, Any]) -> None:
        self._conn().execute(
            "INSERT INTO signing_keys (kid, jwk, created) VALUES (?,?,?)",
            (jwk["kid"], json.dumps(jwk), time.time()),
        )

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _client(row: tuple) -> Client:
    return Client(row[0], row[1], json.loads(row[2]) if row[2] else None, row[3], row[4],
                  row[5], row[6])


def _owner_only_if_present(path: Path) -> None:
    if path.exists():
        path.chmod(0o600)
