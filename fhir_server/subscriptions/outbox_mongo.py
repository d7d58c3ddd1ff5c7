"""The outbox in MongoDB (outbox_sqlite.py's tables as collections), written with the write
transaction's session: `subscription_events` (`_id` "sub|event number"),
`subscription_streams` (`_id` the subscription), `subscription_state`
(`_id` "sub|patient") and `subscription_meta` (the generation token).

On a standalone server (no transactions) the outbox is written right after the write
(storage/mongo.py's `buffered` mode, as the audit trail and clinical indexes are): a crash
between the two can lose those events; a replica set keeps them in one transaction.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from typing import Any

from fhir_server.model import jsonio
from fhir_server.storage.mongo_docs import stored
from fhir_server.subscriptions.matcher import Event

EVENTS, STREAMS, STATE, META = (
    "subscription_events", "subscription_streams", "subscription_state", "subscription_meta"
)
STREAM_FIELDS = ("events", "delivered", "started", "attempts", "next_attempt", "last_error",
                 "last_sent")


def _event_id(sub_id: str, number: int) -> str:
    return f"{sub_id}|{number:012d}"


class MongoOutbox:
    def __init__(self, storage: Any) -> None:
        self.storage = storage
        db = storage.db
        self.events_collection = db[EVENTS]
        self.streams_collection = db[STREAMS]
        self.state_collection = db[STATE]
        self.meta = db[META]
        self.events_collection.create_index([("sub", 1), ("event", 1)])

    @staticmethod
    def _session(tx: Any) -> Any:
        return getattr(tx, "session", None)

    # -- inside a write transaction ---------------------------------------------------------

    def generation(self, tx: Any) -> str:
        doc = self.meta.find_one({"_id": "generation"}, session=self._session(tx))
        return doc["value"] if doc else ""

    def read_generation(self) -> str:
        doc = self.meta.find_one({"_id": "generation"})
        return doc["value"] if doc else ""

    def bump(self, tx: Any) -> None:
        self.meta.replace_one({"_id": "generation"},
                              {"_id": "generation", "value": secrets.token_hex(8)},
                              upsert=True, session=self._session(tx))

    def subscriptions(self, tx: Any) -> list[tuple[dict[str, Any], int]]:
        found = []
        for doc in self.storage.db["Subscription"].find(
            {"del": False}, {"idx": 0, "srt": 0}, session=self._session(tx)
        ):
            resource = stored("Subscription", doc)
            if resource.json is not None:
                found.append((jsonio.loads(resource.json), resource.version))
        return found

    def _open(self, sub_id: str, now: float, session: Any) -> None:
        self.streams_collection.update_one(
            {"_id": sub_id},
            {"$setOnInsert": {"events": 0, "delivered": 0, "started": now, "attempts": 0,
                              "next_attempt": 0.0, "last_error": None, "last_sent": None}},
            upsert=True, session=session,
        )

    def open_streams(self, tx: Any, ids: Iterable[str], now: float) -> None:
        for sub_id in ids:
            self._open(sub_id, now, self._session(tx))

    def append(self, tx: Any, events: Sequence[Event], now: float) -> None:
        session = self._session(tx)
        by_subscription: dict[str, list[Event]] = {}
        for event in events:
            by_subscription.setdefault(event.subscription, []).append(event)
        docs = []
        for sub_id, mine in by_subscription.items():
            self._open(sub_id, now, session)
            stream = self.streams_collection.find_one_and_update(
                {"_id": sub_id}, {"$inc": {"events": len(mine)}}, session=session,
                return_document=True,
            )
            first = stream["events"] - len(mine) + 1
            docs += [
                {"_id": _event_id(sub_id, first + i), "sub": sub_id, "event": first + i,
                 "at": e.at, "ftype": e.focus_type, "fid": e.focus_id, "fver": e.focus_version}
                for i, e in enumerate(mine)
            ]
        self.events_collection.insert_many(docs, session=session)

    def state(self, tx: Any) -> MongoEpisodeState:
        return MongoEpisodeState(self.state_collection, self._session(tx))

    # -- the delivery worker's reads and marks ----------------------------------------------

    def acquire_lease(self, owner: str, now: float, seconds: float) -> bool:
        """The one worker delivering for this database: a lease document taken when free
        or expired, renewed by its owner (MongoDB has no lock file to share)."""
        from pymongo.errors import DuplicateKeyError

        try:
            self.meta.find_one_and_update(
                {"_id": "lease", "$or": [{"owner": owner}, {"expires": {"$lt": now}}]},
                {"$set": {"owner": owner, "expires": now + seconds}},
                upsert=True,
            )
        except DuplicateKeyError:
            return False  # held by another, unexpired
        doc = self.meta.find_one({"_id": "lease"})
        return doc is not None and doc.get("owner") == owner

    @staticmethod
    def _row(doc: dict[str, Any]) -> tuple:
        return (doc["_id"], *(doc.get(f) for f in STREAM_FIELDS))

    def streams(self) -> list[tuple]:
        return [self._row(d) for d in self.streams_collection.find({})]

    def stream(self, sub_id: str) -> tuple | None:
        doc = self.streams_collection.find_one({"_id": sub_id})
        return None if doc is None else self._row(doc)

    def events(self, sub_id: str, first: int, last: int) -> list[tuple]:
        docs = self.events_collection.find(
            {"sub": sub_id, "event": {"$gte": first, "$lte": last}}
        ).sort("event", 1)
        return [(d["event"], d["at"], d["ftype"], d["fid"], d["fver"]) for d in docs]

    def watched(self, sub_id: str) -> dict[str, tuple[float | None, bool]]:
        return {
            d["patient"]: (d["since"], bool(d["fired"]))
            for d in self.state_collection.find({"sub": sub_id})
        }

    def mark(
        self,
        tx: Any,
        delivered: Sequence[tuple[str, int, float]],
        failed: Sequence[tuple[str, int, float, str]],
        reset: Sequence[str] = (),
        retention_before: float | None = None,
    ) -> None:
        session = self._session(tx)
        for sub, event, when in delivered:
            self.streams_collection.update_one(
                {"_id": sub},
                {"$max": {"delivered": event},
                 "$set": {"attempts": 0, "next_attempt": 0.0, "last_error": None,
                          "last_sent": when}},
                session=session,
            )
        for sub, attempts, when, message in failed:
            self.streams_collection.update_one(
                {"_id": sub},
                {"$set": {"attempts": attempts, "next_attempt": when, "last_error": message}},
                session=session,
            )
        for sub in reset:
            self.streams_collection.update_one(
                {"_id": sub}, {"$set": {"attempts": 0, "next_attempt": 0.0}}, session=session
            )
        if retention_before is not None:
            for stream in self.streams_collection.find({}, session=session):
                self.events_collection.delete_many(
                    {"sub": stream["_id"], "event": {"$lte": stream["delivered"]},
                     "at": {"$lt": retention_before}},
                    session=session,
                )

    def heartbeat_sent(self, tx: Any, sub_id: str, when: float) -> None:
        self.streams_collection.update_one(
            {"_id": sub_id}, {"$set": {"last_sent": when}}, session=self._session(tx)
        )

    def put_state(self, tx: Any, sub_id: str, patient: str, since: float | None,
                  fired: bool) -> None:
        self.state(tx).put(sub_id, patient, since, fired)


class MongoEpisodeState:
    def __init__(self, collection: Any, session: Any) -> None:
        self.collection = collection
        self.session = session

    def get(self, subscription: str, patient: str) -> tuple[float | None, bool] | None:
        doc = self.collection.find_one({"_id": f"{subscription}|{patient}"},
                                       session=self.session)
        return None if doc is None else (doc["since"], bool(doc["fired"]))

    def put(self, subscription: str, patient: str, since: float | None, fired: bool) -> None:
        self.collection.replace_one(
            {"_id": f"{subscription}|{patient}"},
            {"_id": f"{subscription}|{patient}", "sub": subscription, "patient": patient,
             "since": since, "fired": fired},
            upsert=True, session=self.session,
        )
