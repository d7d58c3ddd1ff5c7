"""The hash chain that makes the audit records tamper-evident.

Record n carries hash(n) = SHA-256(hash(n-1) || n as 8 bytes || its JSON as stored), with
hash(0) = 32 zero bytes, and the store keeps the last (n, hash) as its head, updated in the
same transaction. Changing a record's JSON, deleting one (the next one no longer follows),
swapping two (their numbers are in the hashes and in their ids) or cutting the tail (the
head names a record that is gone) is then visible to `diatabase audit verify`. Someone who
can write the database file can also recompute every hash after an edit: copying the head
that `audit verify` prints to somewhere they cannot write (a log server, a ticket) now and
then is what catches that.

Appending happens under the backend's writer lock (SQLite: the process-wide file lock and
BEGIN IMMEDIATE; MongoDB: a transaction that moves the head document), so the chain stays
one line even with several server processes on one database.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir_server.model import jsonio

GENESIS = bytes(32)


def link_hash(previous: bytes, seq: int, json: bytes) -> bytes:
    return hashlib.sha256(previous + seq.to_bytes(8, "big") + json).digest()


@dataclass(frozen=True, slots=True)
class ChainedRecord:
    seq: int
    recorded: float
    json: bytes
    hash: bytes


def epoch(instant: str) -> float:
    """2024-03-05T10:00:00.123Z -> epoch seconds (what the stores sort and filter on)."""
    return round(datetime.fromisoformat(instant.replace("Z", "+00:00")).timestamp(), 3)


def chain(events: list[dict[str, Any]], head_seq: int, head_hash: bytes) -> list[ChainedRecord]:
    """Number and hash `events` (AuditEvents without id and meta) after the head."""
    records = []
    previous = head_hash
    for seq, event in enumerate(events, start=head_seq + 1):
        body = {
            "resourceType": "AuditEvent",
            "id": str(seq),
            "meta": {"versionId": "1", "lastUpdated": event["recorded"]},
            **event,
        }
        json = jsonio.dumps(body)
        previous = link_hash(previous, seq, json)
        records.append(ChainedRecord(seq, epoch(event["recorded"]), json, previous))
    return records
