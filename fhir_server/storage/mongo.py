"""The MongoDB backend (pymongo), for deployments that outgrow one machine.

    mongodb://host1,host2/diatabase?replicaSet=rs0&maxPoolSize=50&readPreference=primary

One collection per resource type holds the current versions with their search index
entries embedded (layout in mongo_docs.py), `history` every version, `meta` the paging
cursor key. Searches are translated to MongoDB queries by mongo_search.py.

Connection settings (pool size, timeouts, TLS, read preference, write concern...) are
standard MongoDB URI options passed to pymongo as they are; the write concern defaults to
`majority` when the URL does not set `w`. One option is Diatabase's own and is removed
before pymongo sees the URL: `txmode`, how `Storage.transaction()` is made atomic:

- `auto` (default): ask the server (`hello`). A replica set or a sharded cluster runs each
  storage transaction (a FHIR transaction Bundle included) as one multi-document
  transaction with write concern majority, read concern snapshot.
- `standalone` (what `auto` gives on a standalone server): MongoDB cannot make writes to two
  documents atomic there, so a storage transaction may write one resource only (its current
  document and its history entry); a second write, e.g. the second entry of a transaction
  Bundle, is refused with an OperationOutcome before anything is written. Single
  interactions and batch Bundles work.
- `single-writer`: FOR TESTS AND SINGLE-PROCESS DEVELOPMENT ONLY (mongomock, a standalone
  dev server). Writes apply at once and an undo log rolls them back if the transaction
  fails. Reads take the writers' lock too, so that readers in this process never see a
  transaction half-way (mongomock is not safe for a read racing a write either); another
  process could, and a crash mid-way leaves a transaction half-done. mongomock (which has
  no sessions) needs this mode to run the storage contract suite.

Writers are serialised per resource: a version is written only over the version it
follows (a conditional replace on `v`) and the history `_id` "Type/id/version" is unique,
so two writers racing on one resource cannot both succeed: the loser gets a 409 conflict,
never a lost update. Writers inside one server process are also serialised by a lock, as on
SQLite, so that a read-check-write in a transaction (If-Match, conditional create) waits
rather than fails when the race is within the process.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlsplit, urlunsplit

from bson import Binary, ObjectId
from pymongo import MongoClient, ReadPreference
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from fhir_server.limits import Limits
from fhir_server.model.outcome import FhirError, error
from fhir_server.search.types import IndexEntry
from fhir_server.storage import mongo_budget
from fhir_server.storage.base import HistoryPage, NewResource, StoredResource
from fhir_server.storage.cursor import CursorCodec, CursorError
from fhir_server.storage.mongo_docs import (
    current_doc,
    history_doc,
    history_id,
    stored,
    stored_history,
)
from fhir_server.storage.mongo_indexes import HISTORY, HISTORY_INDEXES, META, RESOURCE_INDEXES

TX_MODES = ("auto", "multi-document", "standalone", "single-writer")
DEFAULT_DATABASE = "diatabase"
ITER_BATCH = 1000
_RESOURCE_COLLECTION = re.compile(r"[A-Z][A-Za-z]{1,63}")


def conflict(rtype: str, rid: str) -> FhirError:
    return error(
        409,
        "conflict",
        f"{rtype}/{rid} was changed by another writer at the same time; read it again and retry",
    )


def standalone_refusal() -> FhirError:
    return error(
        400,
        "not-supported",
        "This server's MongoDB is a standalone server, which cannot write several resources "
        "atomically: transaction Bundles need a MongoDB replica set or sharded cluster. Send "
        "the entries as a batch Bundle, or one by one. Nothing was written.",
    )


def split_url(url: str) -> tuple[str, str, dict[str, str]]:
    """(scheme, URL for pymongo without Diatabase's options, Diatabase's options).

    The other options are passed on exactly as written (no re-encoding)."""
    parts = urlsplit(url)
    ours: dict[str, str] = {}
    theirs: list[str] = []
    for item in re.split(r"[&;]", parts.query):
        if not item:
            continue
        key, _, value = item.partition("=")
        if key == "txmode":
            ours[key] = unquote_plus(value)
        else:
            theirs.append(item)
    return parts.scheme, urlunsplit(parts._replace(query="&".join(theirs))), ours


def client_settings(url: str) -> tuple[str, dict[str, Any], str, str]:
    """(URL for pymongo, extra MongoClient arguments, database name, txmode) for a URL.

    Every standard option of the URL (maxPoolSize, serverSelectionTimeoutMS, tls...,
    readPreference, w...) goes to pymongo as it is; `w` defaults to majority and `journal`
    to true: an acknowledged write is on disk on a majority of members, as SQLite's FULL."""
    scheme, client_url, ours = split_url(url)
    database = unquote_plus(urlsplit(url).path.lstrip("/")) or DEFAULT_DATABASE
    kwargs: dict[str, Any] = {"appname": "diatabase"}
    given = {key.lower() for key, _ in parse_qsl(urlsplit(client_url).query)}
    if scheme != "mongomock" and "w" not in given:
        kwargs["w"] = "majority"
    if scheme != "mongomock" and "journal" not in given:
        kwargs["journal"] = True  # acknowledged once in the members' journals (j: true)
    if "appname" in given:
        del kwargs["appname"]
    return client_url, kwargs, database, ours.get("txmode", "auto")


class MongoStorage:
    def __init__(self, client: Any, database: str, txmode: str = "auto") -> None:
        if txmode not in TX_MODES:
            raise ValueError(f"txmode must be one of {', '.join(TX_MODES)}, not {txmode!r}")
        self.client = client
        self.db = client[database]
        self.history_collection = self.db[HISTORY]
        self.meta = self.db[META]
        self.txmode = self._detect_mode() if txmode == "auto" else txmode
        self._write_lock = threading.RLock()
        self._reading: AbstractContextManager[Any] = (
            self._write_lock if self.txmode == "single-writer" else nullcontext()
        )
        self._indexed: set[str] = set()
        self._index_lock = threading.Lock()
        self.ensure_indexes(self.resource_types())
        self.history_collection.create_indexes(list(HISTORY_INDEXES))
        self.cursors = CursorCodec(self._cursor_key())
        # Set by the service when terminology is available (as on SQLite).
        self.expander: Any = None
        # Set by the service from Settings.limits: include expansion, count bounds.
        self.limits = Limits()
        self.canonical_query: Any = None

    @classmethod
    def from_url(cls, url: str) -> MongoStorage:
        client_url, kwargs, database, txmode = client_settings(url)
        if url.startswith("mongomock:"):
            import mongomock  # test dependency: an in-memory imitation of a standalone server

            return cls(mongomock.MongoClient(), database, txmode)
        return cls(MongoClient(client_url, **kwargs), database, txmode)

    # -- set-up ------------------------------------------------------------------------------

    def _detect_mode(self) -> str:
        """multi-document on a replica set member or mongos; standalone otherwise."""
        try:
            hello = self.client.admin.command("hello")
        except NotImplementedError:  # mongomock: an in-memory standalone
            return "standalone"
        except OperationFailure:  # servers older than 4.4.2 know only isMaster
            hello = self.client.admin.command("isMaster")
        if hello.get("setName") or hello.get("msg") == "isdbgrid":
            return "multi-document"
        return "standalone"

    def resource_types(self) -> list[str]:
        """Resource types that have a collection in this database."""
        return sorted(
            name for name in self.db.list_collection_names() if _RESOURCE_COLLECTION.fullmatch(name)
        )

    def ensure_indexes(self, resource_types: Sequence[str]) -> None:
        for rtype in resource_types:
            if rtype in self._indexed:
                continue
            with self._index_lock:
                if rtype not in self._indexed:
                    self.db[rtype].create_indexes(list(RESOURCE_INDEXES))
                    self._indexed.add(rtype)

    def _cursor_key(self) -> bytes:
        self.meta.update_one(
            {"_id": "cursor_key"},
            {"$setOnInsert": {"key": Binary(secrets.token_bytes(32))}},
            upsert=True,
        )
        doc = self.meta.find_one({"_id": "cursor_key"})
        assert doc is not None
        return bytes(doc["key"])

    def collection(self, rtype: str) -> Any:
        if not _RESOURCE_COLLECTION.fullmatch(rtype):
            raise ValueError(f"not a resource type: {rtype!r}")
        return self.db[rtype]

    def close(self) -> None:
        self.client.close()

    # -- reads -------------------------------------------------------------------------------

    def _read(self, rtype: str, rid: str, session: Any = None) -> StoredResource | None:
        if not _RESOURCE_COLLECTION.fullmatch(rtype):
            return None
        doc = self.db[rtype].find_one({"_id": rid}, {"idx": 0, "srt": 0}, session=session)
        return stored(rtype, doc) if doc else None

    def read(self, resource_type: str, id: str) -> StoredResource | None:
        with self._reading, mongo_budget.bounded():
            return self._read(resource_type, id)

    def vread(self, resource_type: str, id: str, version: int) -> StoredResource | None:
        with self._reading, mongo_budget.bounded():
            doc = self.history_collection.find_one({"_id": history_id(resource_type, id, version)})
        return stored_history(doc) if doc else None

    def history(
        self,
        resource_type: str | None,
        id: str | None,
        since: float | None,
        at: float | None,
        count: int,
        cursor: str | None,
    ) -> HistoryPage:
        with self._reading, mongo_budget.bounded():
            return self._history(resource_type, id, since, at, count, cursor)

    def _history(
        self,
        resource_type: str | None,
        id: str | None,
        since: float | None,
        at: float | None,
        count: int,
        cursor: str | None,
    ) -> HistoryPage:
        match: dict[str, Any] = {}
        if resource_type is not None:
            match["t"] = resource_type
        if id is not None:
            match["i"] = id
        if since is not None:
            match["lu"] = {"$gte": since}
        position: dict[str, Any] = {}
        if cursor:
            try:
                last_updated, hs = self.cursors.decode(cursor)
                last_updated, hs = float(last_updated), ObjectId(hs)
            except (CursorError, TypeError, ValueError):
                raise CursorError("The history paging cursor is invalid") from None
            position = {
                "$or": [{"lu": {"$lt": last_updated}}, {"lu": last_updated, "hs": {"$lt": hs}}]
            }
        order = {"lu": -1, "hs": -1}
        if at is None:
            query = {**match, **position} if not position else {"$and": [match, position]}
            docs = list(
                self.history_collection.find(query).sort(list(order.items())).limit(count + 1)
            )
        else:
            # The version current at `at`: the newest made at or before it, per resource.
            at_match = dict(match)
            at_match["lu"] = {**at_match.get("lu", {}), "$lte": at}
            pipeline: list[dict[str, Any]] = [
                {"$match": at_match},
                {"$sort": {"t": 1, "i": 1, "v": -1}},
                {"$group": {"_id": {"t": "$t", "i": "$i"}, "doc": {"$first": "$$ROOT"}}},
                {"$replaceRoot": {"newRoot": "$doc"}},
            ]
            if position:
                pipeline.append({"$match": position})
            pipeline += [{"$sort": order}, {"$limit": count + 1}]
            docs = list(self.history_collection.aggregate(pipeline, allowDiskUse=True))
        entries = [stored_history(doc) for doc in docs[:count]]
        next_cursor = None
        if len(docs) > count:
            last = docs[count - 1]
            next_cursor = self.cursors.encode([last["lu"], str(last["hs"])])
        return HistoryPage(entries, next_cursor)

    def count(self, resource_type: str | None = None) -> int:
        with self._reading, mongo_budget.bounded():
            types = [resource_type] if resource_type is not None else self.resource_types()
            return sum(
                self.db[rtype].count_documents({"del": False})
                for rtype in types
                if _RESOURCE_COLLECTION.fullmatch(rtype)
            )

    def iter_current(self, resource_type: str) -> Iterator[StoredResource]:
        if not _RESOURCE_COLLECTION.fullmatch(resource_type):
            return
        # Paged by seq so that single-writer mode need not hold its lock between pages.
        after: Any = None
        while True:
            condition: dict[str, Any] = {"del": False}
            if after is not None:
                condition["seq"] = {"$gt": after}
            with self._reading, mongo_budget.bounded():
                docs = list(
                    self.db[resource_type]
                    .find(condition, {"idx": 0, "srt": 0})
                    .sort("seq", 1)
                    .limit(ITER_BATCH)
                )
            yield from (stored(resource_type, doc) for doc in docs)
            if len(docs) < ITER_BATCH:
                return
            after = docs[-1]["seq"]

    def search(self, query: Any, count: int, cursor: str | None, bodies: bool = True) -> Any:
        # Bodies always: a document holds its JSON, reading it costs nothing more.
        from fhir_server.storage.mongo_search import run_search

        with self._reading, mongo_budget.bounded():
            return run_search(self, query, count, cursor)

    # -- writes ------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[MongoTransaction]:
        with self._write_lock:
            if self.txmode == "multi-document":
                yield from self._multi_document()
            elif self.txmode == "single-writer":
                yield from self._single_writer()
            else:
                yield from self._standalone()

    def _multi_document(self) -> Iterator[MongoTransaction]:
        with self.client.start_session() as session:
            session.start_transaction(
                read_concern=ReadConcern("snapshot"),
                write_concern=WriteConcern("majority", j=True),
                read_preference=ReadPreference.PRIMARY,
            )
            try:
                yield MongoTransaction(self, session=session, undo=[])
            except BaseException as exc:
                if session.in_transaction:
                    session.abort_transaction()
                if isinstance(exc, DuplicateKeyError) or (
                    isinstance(exc, PyMongoError)
                    and exc.has_error_label("TransientTransactionError")
                ):
                    raise _write_conflict() from None
                raise
            try:
                _commit(session)
            except PyMongoError as exc:
                if exc.has_error_label("TransientTransactionError"):
                    raise _write_conflict() from None
                raise

    def _single_writer(self) -> Iterator[MongoTransaction]:
        tx = MongoTransaction(self, undo=[])
        try:
            yield tx
        except BaseException:
            tx.rollback()
            raise

    def _standalone(self) -> Iterator[MongoTransaction]:
        tx = MongoTransaction(self, buffered=True)
        yield tx
        tx.flush()

    # Each write first inserts the history entry: its unique _id is the guard against a
    # second writer making the same version; the current document is then replaced only if
    # it still holds the version that was read.

    def apply_put(
        self,
        rtype: str,
        rid: str,
        version: int,
        last_updated: float,
        json: bytes | None,
        index: Sequence[IndexEntry],
        method: str,
        session: Any = None,
        undo: list | None = None,
    ) -> None:
        self.ensure_indexes([rtype])
        col = self.collection(rtype)
        previous = col.find_one({"_id": rid}, session=session)
        if json is None and previous is None:
            return  # deleting what never existed, as on SQLite: nothing happens
        if previous is not None and previous["v"] >= version:
            raise conflict(rtype, rid)
        seq = previous["seq"] if previous is not None else ObjectId()
        pc = previous.get("pc") if json is None and previous is not None else None
        doc = current_doc(rtype, rid, version, last_updated, json, index, method, seq, pc)
        hist = history_doc(rtype, rid, version, last_updated, json, method)
        try:
            self.history_collection.insert_one(hist, session=session)
        except DuplicateKeyError:
            if session is not None:
                raise  # the server aborted the transaction; _multi_document answers 409
            raise conflict(rtype, rid) from None
        if undo is not None:
            undo.append(("history", hist["_id"]))
        try:
            if previous is None:
                col.insert_one(doc, session=session)
            else:
                guard = {"_id": rid, "v": previous["v"], "pc": previous.get("pc")}
                if col.replace_one(guard, doc, session=session).matched_count != 1:
                    raise conflict(rtype, rid)
        except DuplicateKeyError:
            if session is not None:
                raise
            self._forget(hist["_id"], undo)
            raise conflict(rtype, rid) from None
        except FhirError:
            # In a transaction the history entry stays in the undo log (or goes with the
            # abort); without one it goes now.
            if session is None:
                self._forget(hist["_id"], undo)
            raise
        if undo is not None:
            undo.append(("current", rtype, rid, previous))

    def _forget(self, history_key: str, undo: list | None) -> None:
        self.history_collection.delete_one({"_id": history_key})
        if undo and undo[-1] == ("history", history_key):
            undo.pop()


def _write_conflict() -> FhirError:
    return error(409, "conflict", "Another writer changed the same data meanwhile: retry")


def _commit(session: Any) -> None:
    """Commit, retrying while the outcome is unknown (commit is idempotent then)."""
    for _ in range(3):
        try:
            session.commit_transaction()
            return
        except PyMongoError as exc:
            if not exc.has_error_label("UnknownTransactionCommitResult"):
                raise
    session.commit_transaction()


class MongoTransaction:
    """A storage transaction in one of the three modes (see the module docstring)."""

    def __init__(
        self,
        storage: MongoStorage,
        session: Any = None,
        undo: list | None = None,
        buffered: bool = False,
    ) -> None:
        self.storage = storage
        self.session = session
        self.undo = undo
        self.buffered = buffered
        self._pending: tuple | None = None  # standalone: the one write, applied at commit

    def read(self, resource_type: str, id: str) -> StoredResource | None:
        if self._pending is not None and self._pending[:2] == (resource_type, id):
            rtype, rid, version, last_updated, json, _, method = self._pending
            return StoredResource(rtype, rid, version, last_updated, json is None, json, method)
        return self.storage._read(resource_type, id, self.session)

    def search_ids(self, query: Any, limit: int) -> list[str]:
        if self._pending is not None:
            # A search after a write in one transaction: only a transaction Bundle does
            # that, and on a standalone server it could not see the unwritten write.
            raise standalone_refusal()
        from fhir_server.storage.mongo_search import matching_ids

        with mongo_budget.bounded():
            return matching_ids(self.storage, query, limit, self.session)

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
        self._write((resource_type, id, version, last_updated, json, tuple(index), method))

    def create_many(self, creates: Sequence[NewResource]) -> None:
        # One scope per resource, as a batch entry: a standalone server writes them one
        # by one (see `savepoint`), a transaction keeps its undo log.
        for c in creates:
            with self.savepoint():
                self.put(c.resource_type, c.id, 1, c.last_updated, c.json, c.index, "POST")

    def delete(self, resource_type: str, id: str, version: int, last_updated: float) -> None:
        self._write((resource_type, id, version, last_updated, None, (), "DELETE"))

    def _write(self, write: tuple) -> None:
        if self.buffered:
            if self._pending is not None:
                raise standalone_refusal()
            self._pending = write
            return
        self.storage.apply_put(*write, session=self.session, undo=self.undo)

    def flush(self) -> None:
        """Standalone: apply the one buffered write (history entry, then current document)."""
        if self._pending is not None:
            write, self._pending = self._pending, None
            self.storage.apply_put(*write)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested scope whose writes an exception undoes (a batch Bundle's entry).

        With an undo log (multi-document, single-writer), the scope's writes are undone
        inside the transaction. On a standalone server each scope may write one resource,
        applied when the scope ends: batch entries are independent, so a batch works there,
        entry by entry. A MongoDB error inside a multi-document transaction aborts the
        whole transaction (MongoDB has no savepoints): it is not caught here."""
        if self.buffered:
            if self._pending is not None:
                raise standalone_refusal()
            try:
                yield
            except BaseException:
                self._pending = None
                raise
            self.flush()
            return
        mark = len(self.undo or [])
        try:
            yield
        except PyMongoError:
            raise
        except BaseException:
            self.rollback(mark)
            raise

    def rollback(self, mark: int = 0) -> None:
        """Undo the writes logged after `mark`, newest first (in the session, if any)."""
        if not self.undo:
            return
        storage, session = self.storage, self.session
        while len(self.undo) > mark:
            step = self.undo.pop()
            if step[0] == "history":
                storage.history_collection.delete_one({"_id": step[1]}, session=session)
            else:
                _, rtype, rid, previous = step
                col = storage.collection(rtype)
                if previous is None:
                    col.delete_one({"_id": rid}, session=session)
                else:
                    col.replace_one({"_id": rid}, previous, session=session)
