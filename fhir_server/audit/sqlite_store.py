"""The audit store on SQLite: a table of its own in the database file, beside the resources.

Not a resource type with the generic index rows: storing each event as a resource (history
row, resource row, ~20 index rows from the extractor) cost 45 % of the single-create rate
in a measurement; this table and its few indexes cost none that the measurement could
see. Being apart also keeps the trail out of everything that walks the resources (system
history, `$everything`, exports, `_revinclude`) without a filter to forget.

Appends run on the write transaction's own connection, so an event commits or rolls back
with the write it records; numbering follows the head kept in `meta`, under the writer lock.
"""

from __future__ import annotations

import json as jsonlib
import re
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from fhir_server.audit.chain import GENESIS, chain
from fhir_server.audit.criteria import AuditCriteria, Condition
from fhir_server.audit.events import IndexedFields
from fhir_server.audit.store import AuditPage, StoredRecord, cursor_position, stored_event
from fhir_server.storage.base import StoredResource, instant

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS audit_event (
        seq INTEGER PRIMARY KEY,
        recorded REAL NOT NULL,
        action TEXT, subtype TEXT, outcome TEXT, door TEXT, address TEXT,
        json BLOB NOT NULL,
        hash BLOB NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS audit_event_recorded ON audit_event (recorded, seq)",
    # role: 'p' a patient (by id), 'e' an entity (Type/id), 'c' the client, 'u' the user;
    # in the order appended (rowid), which `records` reads them in
    "CREATE TABLE IF NOT EXISTS audit_ref "
    "(seq INTEGER NOT NULL, role TEXT NOT NULL, ref TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS audit_ref_ref ON audit_ref (ref, role, seq)",
    # Every index is pages written by every commit: agents are refs, not indexed columns.
    "DROP INDEX IF EXISTS audit_event_client",
    "DROP INDEX IF EXISTS audit_event_user",
    "DROP INDEX IF EXISTS audit_ref_seq",
)
HEAD_KEY = "audit_head"
COLUMNS = {
    "seq": "e.seq",
    "recorded": "e.recorded",
    "action": "e.action",
    "subtype": "e.subtype",
    "outcome": "e.outcome",
    "door": "e.door",
    "address": "e.address",
}
REF_ROLES = {"patient": "'p'", "entity": "'e'", "user": "'u'", "agent": "'c', 'u'"}
_LIKE_SPECIAL = re.compile(r"([\\%_])")


class SqliteAuditStore:
    def __init__(self, storage: Any) -> None:
        self.storage = storage
        with storage.transaction() as tx:
            tx.settle()
            for statement in SCHEMA:
                tx.conn.execute(statement)

    # -- writes ------------------------------------------------------------------------------

    def append(self, tx: Any, events: Sequence[tuple[dict[str, Any], IndexedFields]]) -> None:
        tx.settle()  # the write-behind thread must be done with the connection
        conn: sqlite3.Connection = tx.conn
        head, last = conn.execute(
            "SELECT (SELECT value FROM meta WHERE key=?), (SELECT max(seq) FROM audit_event)",
            (HEAD_KEY,),
        ).fetchone()
        head_seq, head_hash = _decode_head(head) if head else (0, GENESIS)
        # A head behind the table (edited) must not make writes fail on a duplicate number:
        # numbering goes on after both, and verify reports the break.
        records = chain([event for event, _ in events], max(head_seq, last or 0), head_hash)
        rows, refs = [], []
        for record, (_, fields) in zip(records, events, strict=True):
            rows.append((record.seq, record.recorded, *_columns(fields), record.json, record.hash))
            seq = record.seq
            refs += [(seq, "p", p) for p in fields.patients]
            refs += [(seq, "e", e) for e in fields.entities]
            refs += [
                (seq, role, who) for role, who in (("c", fields.client), ("u", fields.user)) if who
            ]
        conn.executemany(
            "INSERT INTO audit_event (seq, recorded, action, subtype, outcome, door, address, "
            "json, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        if refs:
            conn.executemany("INSERT INTO audit_ref VALUES (?, ?, ?)", refs)
        tail = records[-1]
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (HEAD_KEY, jsonlib.dumps([tail.seq, tail.hash.hex()])),
        )

    # -- reads -------------------------------------------------------------------------------

    def read(self, rid: str) -> StoredResource | None:
        if not rid.isdigit():
            return None
        row = (
            self.storage.reader()
            .execute("SELECT seq, recorded, json FROM audit_event WHERE seq=?", (int(rid),))
            .fetchone()
        )
        return stored_event(*row) if row else None

    def search(
        self, criteria: AuditCriteria, count: int, cursor: str | None, total: bool
    ) -> AuditPage:
        if criteria.empty:
            return AuditPage([], total=0 if total else None)
        where, args = [], []
        for term in criteria.terms:
            parts = [_condition(c, args) for c in term]
            where.append("(" + " OR ".join(parts) + ")")
        filters = list(where)
        order = "DESC" if criteria.descending else "ASC"
        if cursor:
            recorded, seq = cursor_position(self.storage.cursors, cursor)
            compare = "<" if criteria.descending else ">"
            where.append(f"(e.recorded {compare} ? OR (e.recorded = ? AND e.seq {compare} ?))")
            args_paged = [*args, recorded, recorded, seq]
        else:
            args_paged = list(args)
        conn = self.storage.reader()
        sql = (
            "SELECT e.seq, e.recorded, e.json FROM audit_event e"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY e.recorded {order}, e.seq {order} LIMIT ?"
        )
        rows = conn.execute(sql, [*args_paged, count + 1]).fetchall()
        page = AuditPage([stored_event(*row) for row in rows[:count]])
        if len(rows) > count:
            last = rows[count - 1]
            page.next_cursor = self.storage.cursors.encode(["audit", last[1], last[0]])
        if total:
            count_sql = "SELECT count(*) FROM audit_event e" + (
                " WHERE " + " AND ".join(filters) if filters else ""
            )
            page.total = conn.execute(count_sql, args).fetchone()[0]
        return page

    # -- verification ------------------------------------------------------------------------

    def head(self) -> tuple[int, bytes] | None:
        return _head(self.storage.reader())

    def records(self) -> Iterator[StoredRecord]:
        conn = self.storage.reader()
        refs = conn.execute("SELECT seq, role, ref FROM audit_ref ORDER BY rowid")
        pending = next(refs, None)
        for row in conn.execute(
            "SELECT seq, recorded, action, subtype, outcome, address, door, json, hash "
            "FROM audit_event ORDER BY seq"
        ):
            seq = row[0]
            found: dict[str, list[str]] = {"p": [], "e": [], "c": [], "u": []}
            # refs out of order (an edit) are left behind, and their records reported
            while pending is not None and pending[0] <= seq:
                if pending[0] == seq and pending[1] in found:
                    found[pending[1]].append(pending[2])
                pending = next(refs, None)
            client = found["c"][0] if len(found["c"]) == 1 else ",".join(found["c"]) or None
            user = found["u"][0] if len(found["u"]) == 1 else ",".join(found["u"]) or None
            indexed = IndexedFields(
                instant(row[1]),
                *row[2:5],
                client,
                user,
                row[5],
                row[6],
                tuple(found["p"]),
                tuple(found["e"]),
            )
            yield StoredRecord(seq, _bytes(row[7]), _bytes(row[8]), indexed)


def _bytes(value: Any) -> bytes:
    """A column as bytes, whatever an edit of the file left in it (text, a number)."""
    if isinstance(value, bytes):
        return value
    return b"" if value is None else str(value).encode()


def _head(conn: sqlite3.Connection) -> tuple[int, bytes] | None:
    row = conn.execute("SELECT value FROM meta WHERE key=?", (HEAD_KEY,)).fetchone()
    return _decode_head(row[0]) if row else None


def _decode_head(value: Any) -> tuple[int, bytes]:
    seq, digest = jsonlib.loads(value)
    return int(seq), bytes.fromhex(digest)


def _columns(fields: IndexedFields) -> tuple:
    return (fields.action, fields.subtype, fields.outcome, fields.door, fields.address)


def _condition(condition: Condition, args: list) -> str:
    name, op, operand = condition.field, condition.op, condition.operand
    if name in REF_ROLES:
        args.append(operand)
        return f"e.seq IN (SELECT seq FROM audit_ref WHERE ref=? AND role IN ({REF_ROLES[name]}))"
    column = COLUMNS[name]
    if op == "between":
        low, high = operand  # type: ignore[misc]
        args += [low, high]
        return f"({column} >= ? AND {column} < ?)"
    if op == "prefix":
        args.append(_LIKE_SPECIAL.sub(r"\\\1", str(operand)) + "%")
        return f"{column} LIKE ? ESCAPE '\\'"
    args.append(operand)
    return f"{column} {op} ?"
