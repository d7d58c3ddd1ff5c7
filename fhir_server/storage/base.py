"""The storage contract every backend implements.

The service layer decides versions, ids and index entries; a backend only stores and finds.
Writes happen inside `Storage.transaction()`: everything written in one `with` block
commits together or not at all, and writers are serialised so that a read-check-write
inside a transaction (If-Match, conditional create) cannot lose an update.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from functools import lru_cache
from typing import Any, NamedTuple, Protocol

from fhir_server.search.types import IndexEntry


class StoredResource(NamedTuple):
    """One version of a resource as stored (json is None for a deletion).

    A named tuple rather than a frozen dataclass: searches and exports make one per
    resource read, and a tuple is built three times faster."""

    resource_type: str
    id: str
    version: int
    last_updated: float  # epoch seconds, UTC
    deleted: bool
    json: bytes | None
    method: str = "PUT"  # the interaction that made this version: POST, PUT, PATCH, DELETE

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'

    @property
    def last_modified(self) -> str:
        """HTTP-date for the Last-Modified header."""
        return format_datetime(datetime.fromtimestamp(self.last_updated, UTC), usegmt=True)

    @property
    def instant(self) -> str:
        return instant(self.last_updated)

    @property
    def location(self) -> str:
        return f"{self.resource_type}/{self.id}/_history/{self.version}"


@lru_cache(maxsize=4096)
def instant(epoch: float) -> str:
    """FHIR instant with millisecond precision: 2024-03-05T10:00:00.123Z. Cached: a write
    formats the same instant for meta.lastUpdated and for its response."""
    millis = round(epoch * 1000)
    dt = datetime.fromtimestamp(millis // 1000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis % 1000:03d}Z"


def now_millis() -> float:
    """The current time as epoch seconds rounded to the millisecond that meta shows, so that
    `_at` / `_since` with a client's copy of meta.lastUpdated compare exactly."""
    return round(time.time() * 1000) / 1000


@dataclass(frozen=True, slots=True)
class HistoryPage:
    entries: list[StoredResource]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class NewResource:
    """A first version for `WriteTransaction.create_many`."""

    resource_type: str
    id: str
    last_updated: float
    json: bytes
    index: Sequence[IndexEntry]


class WriteTransaction(Protocol):
    def read(self, resource_type: str, id: str) -> StoredResource | None: ...

    def put(
        self,
        resource_type: str,
        id: str,
        version: int,
        last_updated: float,
        json: bytes,
        index: Sequence[IndexEntry],
        method: str,
    ) -> None:
        """Store a new current version (create when version is 1 and no row exists).
        `method` "POST" with version 1 is a create whose id the server has just made up:
        no row can exist, and a backend may skip looking for one."""

    def create_many(self, creates: Sequence[NewResource]) -> None:
        """Store first versions of resources whose ids the server has just made up (so no
        row can exist): all of them or, on a storage error, none."""

    def delete(self, resource_type: str, id: str, version: int, last_updated: float) -> None:
        """Store a deletion as a new version; index entries go, history stays."""

    def search_ids(self, query: Any, limit: int) -> list[str]:
        """Ids of current resources matching a parsed query (for conditional interactions)."""

    def savepoint(self) -> AbstractContextManager[None]:
        """A nested scope inside the transaction: an exception raised inside it undoes only
        the scope's writes (a batch Bundle runs each entry in one, and commits once)."""


class NotingTransaction:
    """A backend's write transaction, as a layer over storage sees it: each write is shown
    to the layer (`note_put`, `note_creates`, `note_delete`) before it goes to the
    backend, and what a failed savepoint noted is forgotten with its writes. The layers
    (the audit trail, the clinical indexes, the subscriptions outbox) keep their notes in
    `writes` and act on them once the transaction's body has succeeded; a write that fails
    fails the transaction or its savepoint, so noting before writing is safe."""

    def __init__(self, tx: Any) -> None:
        self._tx = tx
        self.writes: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)

    def put(
        self,
        resource_type: str,
        id: str,
        version: int,
        last_updated: float,
        json: bytes,
        index: Sequence[IndexEntry],
        method: str,
    ) -> None:
        self.note_put(resource_type, id, version, last_updated, json, index, method)
        self._tx.put(resource_type, id, version, last_updated, json, index, method)

    def create_many(self, creates: Sequence[NewResource]) -> None:
        self.note_creates(creates)
        self._tx.create_many(creates)

    def delete(self, resource_type: str, id: str, version: int, last_updated: float) -> None:
        self.note_delete(resource_type, id, version, last_updated)
        self._tx.delete(resource_type, id, version, last_updated)

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
        """What the layer keeps of a new version (nothing unless overridden)."""

    def note_creates(self, creates: Sequence[NewResource]) -> None:
        """What the layer keeps of first versions whose ids the server made up."""

    def note_delete(self, resource_type: str, id: str, version: int, last_updated: float) -> None:
        """What the layer keeps of a deletion (the version deleted is still readable)."""

    def mark(self) -> Any:
        """The notes' state, to go back to if a savepoint fails."""
        return len(self.writes)

    def rewind(self, mark: Any) -> None:
        del self.writes[mark:]

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A batch entry's scope: an entry that fails leaves no note."""
        mark = self.mark()
        with self._tx.savepoint():
            try:
                yield
            except BaseException:
                self.rewind(mark)
                raise


class NotingStorage:
    """A layer over `backend` whose transactions note what they write (`noting`: a
    NotingTransaction around the backend's) and, once a transaction's body has succeeded,
    record the notes in that same transaction (`record`). A standalone MongoDB writes
    after the block, so there the notes are recorded in a transaction of their own just
    after it.
    `committed` then gets what `record` returned (None when nothing was recorded)."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    @property
    def backend(self) -> Any:
        return self._backend

    def noting(self, tx: Any) -> NotingTransaction:
        return NotingTransaction(tx)

    def has_notes(self, noted: Any) -> bool:
        return bool(noted.writes)

    def record(self, tx: Any, noted: Any) -> Any:
        """Act on what `noted` kept, inside `tx`."""

    def committed(self, recorded: Any) -> None:
        """After the commit of a transaction whose notes were recorded."""

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        recorded = None
        deferred = None
        with self._backend.transaction() as tx:
            noted = self.noting(tx)
            yield noted
            if self.has_notes(noted):
                if getattr(tx, "buffered", False):
                    deferred = noted  # a standalone MongoDB writes after this block
                else:
                    recorded = self.record(tx, noted)
        if deferred is not None:
            with self._backend.transaction() as tx:
                recorded = self.record(tx, deferred)
        self.committed(recorded)


class Storage(Protocol):
    def transaction(self) -> AbstractContextManager[WriteTransaction]: ...

    def read(self, resource_type: str, id: str) -> StoredResource | None:
        """The current version, deleted or not; None if the id never existed."""

    def vread(self, resource_type: str, id: str, version: int) -> StoredResource | None: ...

    def history(
        self,
        resource_type: str | None,
        id: str | None,
        since: float | None,
        at: float | None,
        count: int,
        cursor: str | None,
    ) -> HistoryPage:
        """Versions newest first; at instance, type (id None) or system (both None) level."""

    def search(self, query: Any, count: int, cursor: str | None, bodies: bool = True) -> Any:
        """A page of matches (and their includes). With `bodies` False a backend may leave
        the matches' JSON out (json None, deleted False): for a caller that has the bodies
        elsewhere (the de-identification facade's view stores) and reads the missing ones
        with `vread`. Includes always carry their JSON."""

    def count(self, resource_type: str | None = None) -> int: ...

    def iter_current(self, resource_type: str) -> Iterator[StoredResource]: ...

    def close(self) -> None: ...


_groupable: ContextVar[bool] = ContextVar("diatabase_groupable_write", default=False)


@contextmanager
def groupable() -> Iterator[None]:
    """The transactions opened inside write one resource each (create, update, patch,
    delete): a backend may commit them together with others that arrive at the same moment
    (SQLite's group commit: one fsync for all)."""
    token = _groupable.set(True)
    try:
        yield
    finally:
        _groupable.reset(token)


def is_groupable() -> bool:
    return _groupable.get()
