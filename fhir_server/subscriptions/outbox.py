"""The storage the services write through, with subscription matching woven into every
write transaction: the transaction notes what it writes and, once its body succeeded,
appends the events those writes are for to the outbox in the same transaction (SQLite:
the same connection; MongoDB: the same session). A write that rolls back leaves no event;
an event is never lost by a crash after its write was acknowledged.

Subscriptions are cached per process and reloaded (through the transaction, so that a
Subscription written earlier in an open group commit is seen) when the outbox's
generation token differs from the one they were loaded at.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fhir_server.search.types import IndexEntry
from fhir_server.storage.base import NewResource, NotingStorage, NotingTransaction
from fhir_server.subscriptions.matcher import Write

SUBSCRIPTION = "Subscription"


class OutboxStorage(NotingStorage):
    """`backend` with `subscriptions` (manager.py) matching its writes."""

    def __init__(self, backend: Any, subscriptions: Any) -> None:
        super().__init__(backend)
        self.subscriptions = subscriptions

    def noting(self, tx: Any) -> OutboxTransaction:
        return OutboxTransaction(tx)

    def has_notes(self, noted: Any) -> bool:
        return bool(noted.writes or noted.subscriptions_changed)

    def record(self, tx: Any, noted: Any) -> bool:
        return self.subscriptions.record(tx, noted)

    def committed(self, recorded: Any) -> None:
        if recorded:
            self.subscriptions.committed()


class OutboxTransaction(NotingTransaction):
    """The backend's transaction, noting the writes subscriptions may be about."""

    writes: list[Write]

    def __init__(self, tx: Any) -> None:
        super().__init__(tx)
        self.subscriptions_changed = False

    def note_put(
        self,
        resource_type: str,
        id: str,
        version: int,
        last_updated: float,
        json: bytes,
        index: Sequence[IndexEntry],
        method: str,
    ) -> None:
        self._note(Write(resource_type, id, version, last_updated, json, index, version == 1))

    def note_creates(self, creates: Sequence[NewResource]) -> None:
        for c in creates:
            self._note(Write(c.resource_type, c.id, 1, c.last_updated, c.json, c.index, True))

    def note_delete(self, resource_type: str, id: str, version: int, last_updated: float) -> None:
        if resource_type == SUBSCRIPTION:
            self.subscriptions_changed = True

    def _note(self, write: Write) -> None:
        if write.resource_type == SUBSCRIPTION:
            self.subscriptions_changed = True
        self.writes.append(write)

    def mark(self) -> Any:
        return len(self.writes), self.subscriptions_changed

    def rewind(self, mark: Any) -> None:
        del self.writes[mark[0]:]
        self.subscriptions_changed = mark[1]
