"""The storage the services use: the backend, with the audit trail woven in.

- Reads (`read`, `vread`, `search`, `history`) add what they return to the current
  activity, whose event names the patients concerned.
- A transaction collects what it writes; just before it commits, the event of the
  activity (or of the server itself when no door opened one) is appended in it. A
  transaction that fails leaves no event in it: the door records the failure afterwards,
  naming what was attempted.
- AuditEvent reads and searches are answered by the audit store; AuditEvent writes are
  refused here too, whichever path they came by.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from fhir_server.audit.activity import current
from fhir_server.audit.criteria import audit_criteria
from fhir_server.audit.protection import AUDIT_TYPE, refuse_audit_write
from fhir_server.audit.writer import AuditTrail, Write
from fhir_server.model.outcome import error
from fhir_server.search.types import IndexEntry
from fhir_server.storage.base import (
    HistoryPage,
    NewResource,
    NotingTransaction,
    StoredResource,
)


class AuditedStorage:
    def __init__(self, backend: Any, trail: AuditTrail) -> None:
        self._backend = backend
        self.trail = trail

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    # -- reads -------------------------------------------------------------------------------

    def read(self, resource_type: str, id: str) -> StoredResource | None:
        if resource_type == AUDIT_TYPE:
            return self._noted(self.trail.store.read(id))
        return self._noted(self._backend.read(resource_type, id))

    def vread(self, resource_type: str, id: str, version: int) -> StoredResource | None:
        if resource_type == AUDIT_TYPE:
            return self._noted(self.trail.store.read(id) if version == 1 else None)
        return self._noted(self._backend.vread(resource_type, id, version))

    def history(
        self,
        resource_type: str | None,
        id: str | None,
        since: float | None,
        at: float | None,
        count: int,
        cursor: str | None,
    ) -> HistoryPage:
        if resource_type == AUDIT_TYPE:
            raise error(
                400, "not-supported", "AuditEvent records have one version each: search them"
            )
        page = self._backend.history(resource_type, id, since, at, count, cursor)
        self._note(page.entries)
        return page

    def search(self, query: Any, count: int, cursor: str | None, bodies: bool = True) -> Any:
        if getattr(query, "resource_type", None) == AUDIT_TYPE:
            result = query.result
            total = result.total == "accurate" or result.summary == "count"
            page = self.trail.store.search(audit_criteria(query), count, cursor, total)
        else:
            page = self._backend.search(query, count, cursor, bodies)
        self._note(page.matches)
        self._note(page.included)
        return page

    def _noted(self, stored: StoredResource | None) -> StoredResource | None:
        if stored is not None:
            self._note([stored])
        return stored

    def _note(self, resources: list[StoredResource]) -> None:
        activity = current()
        if activity is not None and resources and self.trail.enabled:
            activity.note_reads(resources)

    # -- writes ------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[AuditedTransaction]:
        trail = self.trail
        activity = current()
        audited: AuditedTransaction | None = None
        appended = deferred = False
        reads = 0  # of the activity's reads, those the event recorded with the writes names
        try:
            with self._backend.transaction() as tx:
                audited = AuditedTransaction(tx)
                yield audited
                if audited.writes and trail.enabled:
                    # a standalone MongoDB applies the write after this block: the event
                    # follows it there (no transaction can hold both)
                    deferred = bool(getattr(tx, "buffered", False))
                    reads = len(activity.reads) if activity is not None else 0
                    if not deferred:
                        trail.append_in(tx, activity, audited.writes)
                        appended = True
            if deferred:
                with self._backend.transaction() as tx:
                    trail.append_in(tx, activity, audited.writes)
                    appended = True
        except BaseException:
            # undone, or its commit failed: the door records the attempt afterwards
            if activity is not None and audited is not None:
                activity.attempted += [(t, i, j) for t, i, j, _ in audited.writes]
            raise
        if appended and activity is not None:
            activity.recorded_writes += 1
            del activity.reads[:reads]

    def close(self) -> None:
        self.trail.close()
        self._backend.close()


class AuditedTransaction(NotingTransaction):
    """The backend's transaction, noting what is written (and refusing AuditEvents)."""

    writes: list[Write]

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
        refuse_audit_write(resource_type)
        self.writes.append((resource_type, id, json, method))

    def note_creates(self, creates: Sequence[NewResource]) -> None:
        for create in creates:
            refuse_audit_write(create.resource_type)
        self.writes += [(c.resource_type, c.id, c.json, "POST") for c in creates]

    def note_delete(self, resource_type: str, id: str, version: int, last_updated: float) -> None:
        refuse_audit_write(resource_type)
        # the patients of a deleted resource are those of the version it deletes
        previous = self._tx.read(resource_type, id)
        self.writes.append((resource_type, id, previous.json if previous else None, "DELETE"))
