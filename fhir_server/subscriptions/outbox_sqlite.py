"""The outbox in the store's own SQLite database, written on the write transaction's
connection (so an event exists exactly when the write that caused it is committed).

- `subscription_events`: one row per event, numbered per subscription from 1
  (the backport IG's `eventNumber`); kept after delivery for `$events` until retention;
- `subscription_streams`: per subscription, the last event number given, the last one
  delivered (events are delivered in order, so this mark is all the progress there is),
  the failures since the last success and when to try again;
- `subscription_state`: per (subscription, patient), the stateful topics' memory
  (a hyperglycaemia episode's start, the last CGM reading's arrival);
- `subscription_meta`: `generation`, a random token changed in every transaction that
  writes a Subscription, by which every process knows its cached subscriptions are stale.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from typing import Any

from fhir_server.model import jsonio
from fhir_server.subscriptions.matcher import Event

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS subscription_meta (key TEXT PRIMARY KEY, value TEXT)",
    "CREATE TABLE IF NOT EXISTS subscription_streams (sub_id TEXT PRIMARY KEY, "
    "events INTEGER NOT NULL DEFAULT 0, delivered INTEGER NOT NULL DEFAULT 0, "
    "started REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, "
    "next_attempt REAL NOT NULL DEFAULT 0, last_error TEXT, last_sent REAL)",
    "CREATE TABLE IF NOT EXISTS subscription_events (sub_id TEXT, event INTEGER, at REAL, "
    "focus_type TEXT, focus_id TEXT, focus_version INTEGER, PRIMARY KEY (sub_id, event)) "
    "WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS subscription_state (sub_id TEXT, patient TEXT, since REAL, "
    "fired INTEGER, PRIMARY KEY (sub_id, patient)) WITHOUT ROWID",
)
STREAM_COLUMNS = "sub_id, events, delivered, started, attempts, next_attempt, last_error, last_sent"


class SqliteOutbox:
    def __init__(self, storage: Any) -> None:
        self.storage = storage
        with storage.transaction() as tx:
            tx.settle()
            for statement in SCHEMA:
                tx.conn.execute(statement)

    # -- inside a write transaction ---------------------------------------------------------

    @staticmethod
    def _conn(tx: Any) -> Any:
        tx.settle()  # the write-behind thread must be done with the connection
        return tx.conn

    def generation(self, tx: Any) -> str:
        row = self._conn(tx).execute(
            "SELECT value FROM subscription_meta WHERE key='generation'"
        ).fetchone()
        return row[0] if row else ""

    def read_generation(self) -> str:
        row = self.storage.reader().execute(
            "SELECT value FROM subscription_meta WHERE key='generation'"
        ).fetchone()
        return row[0] if row else ""

    def bump(self, tx: Any) -> None:
        self._conn(tx).execute(
            "INSERT OR REPLACE INTO subscription_meta VALUES ('generation', ?)",
            (secrets.token_hex(8),),
        )

    def subscriptions(self, tx: Any) -> list[tuple[dict[str, Any], int]]:
        """The current Subscriptions as this transaction sees them (its own writes too)."""
        tx.flush()
        rows = self._conn(tx).execute(
            "SELECT h.json, h.version FROM resources r JOIN history h ON h.type=r.type AND "
            "h.id=r.id AND h.version=r.version WHERE r.type='Subscription' AND r.deleted=0"
        )
        return [(jsonio.loads(json), version) for json, version in rows]

    def open_streams(self, tx: Any, ids: Iterable[str], now: float) -> None:
        self._conn(tx).executemany(
            "INSERT OR IGNORE INTO subscription_streams (sub_id, started) VALUES (?, ?)",
            [(i, now) for i in ids],
        )

    def append(self, tx: Any, events: Sequence[Event], now: float) -> None:
        conn = self._conn(tx)
        by_subscription: dict[str, list[Event]] = {}
        for event in events:
            by_subscription.setdefault(event.subscription, []).append(event)
        rows = []
        for sub_id, mine in by_subscription.items():
            conn.execute(
                "INSERT OR IGNORE INTO subscription_streams (sub_id, started) VALUES (?, ?)",
                (sub_id, now),
            )
            last = conn.execute(
                "UPDATE subscription_streams SET events = events + ? WHERE sub_id = ? "
                "RETURNING events",
                (len(mine), sub_id),
            ).fetchone()[0]
            first = last - len(mine) + 1
            rows += [
                (sub_id, first + i, e.at, e.focus_type, e.focus_id, e.focus_version)
                for i, e in enumerate(mine)
            ]
        conn.executemany("INSERT INTO subscription_events VALUES (?, ?, ?, ?, ?, ?)", rows)

    def state(self, tx: Any) -> SqliteEpisodeState:
        return SqliteEpisodeState(self._conn(tx))

    # -- the delivery worker's reads and marks ----------------------------------------------

    def streams(self) -> list[tuple]:
        return self.storage.reader().execute(
            f"SELECT {STREAM_COLUMNS} FROM subscription_streams"
        ).fetchall()

    def stream(self, sub_id: str) -> tuple | None:
        return self.storage.reader().execute(
            f"SELECT {STREAM_COLUMNS} FROM subscription_streams WHERE sub_id=?", (sub_id,)
        ).fetchone()

    def events(self, sub_id: str, first: int, last: int) -> list[tuple]:
        """(event, at, focus type, id, version) from `first` to `last` included."""
        return self.storage.reader().execute(
            "SELECT event, at, focus_type, focus_id, focus_version FROM subscription_events "
            "WHERE sub_id=? AND event BETWEEN ? AND ? ORDER BY event",
            (sub_id, first, last),
        ).fetchall()

    def watched(self, sub_id: str) -> dict[str, tuple[float | None, bool]]:
        rows = self.storage.reader().execute(
            "SELECT patient, since, fired FROM subscription_state WHERE sub_id=?", (sub_id,)
        )
        return {p: (since, bool(fired)) for p, since, fired in rows}

    def mark(
        self,
        tx: Any,
        delivered: Sequence[tuple[str, int, float]],
        failed: Sequence[tuple[str, int, float, str]],
        reset: Sequence[str] = (),
        retention_before: float | None = None,
    ) -> None:
        """Delivered: (sub, through event, when); failed: (sub, attempts, next attempt,
        error); reset: subscriptions whose failures are forgotten (re-activated)."""
        conn = self._conn(tx)
        conn.executemany(
            "UPDATE subscription_streams SET delivered = max(delivered, ?), attempts = 0, "
            "next_attempt = 0, last_error = NULL, last_sent = ? WHERE sub_id = ?",
            [(event, when, sub) for sub, event, when in delivered],
        )
        conn.executemany(
            "UPDATE subscription_streams SET attempts = ?, next_attempt = ?, last_error = ? "
            "WHERE sub_id = ?",
            [(attempts, when, message, sub) for sub, attempts, when, message in failed],
        )
        conn.executemany(
            "UPDATE subscription_streams SET attempts = 0, next_attempt = 0 WHERE sub_id = ?",
            [(sub,) for sub in reset],
        )
        if retention_before is not None:
            conn.execute(
                "DELETE FROM subscription_events WHERE at < ? AND event <= (SELECT delivered "
                "FROM subscription_streams s WHERE s.sub_id = subscription_events.sub_id)",
                (retention_before,),
            )

    def heartbeat_sent(self, tx: Any, sub_id: str, when: float) -> None:
        self._conn(tx).execute(
            "UPDATE subscription_streams SET last_sent = ? WHERE sub_id = ?", (when, sub_id)
        )

    def put_state(self, tx: Any, sub_id: str, patient: str, since: float | None,
                  fired: bool) -> None:
        SqliteEpisodeState(self._conn(tx)).put(sub_id, patient, since, fired)


class SqliteEpisodeState:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def get(self, subscription: str, patient: str) -> tuple[float | None, bool] | None:
        row = self.conn.execute(
            "SELECT since, fired FROM subscription_state WHERE sub_id=? AND patient=?",
            (subscription, patient),
        ).fetchone()
        return None if row is None else (row[0], bool(row[1]))

    def put(self, subscription: str, patient: str, since: float | None, fired: bool) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO subscription_state VALUES (?, ?, ?, ?)",
            (subscription, patient, since, int(fired)),
        )
