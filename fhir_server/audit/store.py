"""What every backend's audit store offers (sqlite_store.py, mongo_store.py)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fhir_server.audit.criteria import AuditCriteria
from fhir_server.audit.events import IndexedFields
from fhir_server.storage.base import StoredResource
from fhir_server.storage.cursor import CursorError


@dataclass
class AuditPage:
    """A page of records, shaped like a storage search page for the search service."""

    matches: list[StoredResource]
    included: list[StoredResource] = field(default_factory=list)
    total: int | None = None
    next_cursor: str | None = None
    previous_cursor: str | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """One record as `audit verify` reads it: the chained JSON and hash, and what the
    store indexed of it (checked against the JSON)."""

    seq: int
    json: bytes
    hash: bytes
    indexed: IndexedFields


class AuditStore(Protocol):
    def append(self, tx: Any, events: Sequence[tuple[dict[str, Any], IndexedFields]]) -> None:
        """Chain and store events (each with what is indexed of it) inside the backend
        transaction `tx`."""

    def read(self, rid: str) -> StoredResource | None: ...

    def search(
        self, criteria: AuditCriteria, count: int, cursor: str | None, total: bool
    ) -> AuditPage: ...

    def records(self) -> Iterator[StoredRecord]:
        """Every record in chain order (for `audit verify`)."""

    def head(self) -> tuple[int, bytes] | None:
        """(number, hash) of the last record appended, as the store remembers it."""


def cursor_position(cursors: Any, cursor: str) -> tuple[float, int]:
    """(recorded, number) after which a page of records goes on; a backend's signed
    cursors (storage/cursor.py) make the token."""
    try:
        kind, recorded, seq = cursors.decode(cursor)
        if kind != "audit":
            raise ValueError(kind)
        return float(recorded), int(seq)
    except (CursorError, TypeError, ValueError):
        raise CursorError("The paging cursor is invalid") from None


def stored_event(seq: int, recorded: float, json: bytes) -> StoredResource:
    return StoredResource("AuditEvent", str(seq), 1, recorded, False, json, "POST")
