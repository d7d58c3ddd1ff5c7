"""The audit store on MongoDB: the `audit_event` collection (not a resource collection:
lower case, so the backend never takes it for one) and the head in `meta`.

An append reads the head, inserts the numbered events and moves the head, all in the
write's session: in a multi-document transaction the events commit with the write, and
two processes appending at once conflict on the head document, so one of them gets the
backend's 409 (retry) rather than a fork in the chain. On a standalone server (no
transactions), the writer appends after the write (see writer.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

from bson import Binary

from fhir_server.audit.chain import GENESIS, chain
from fhir_server.audit.criteria import AuditCriteria, Condition
from fhir_server.audit.events import IndexedFields
from fhir_server.audit.store import AuditPage, StoredRecord, cursor_position, stored_event
from fhir_server.storage.base import StoredResource, instant

COLLECTION = "audit_event"
HEAD_ID = "audit_head"
FIELDS = {
    "seq": "_id",
    "recorded": "rec",
    "action": "act",
    "subtype": "sub",
    "outcome": "out",
    "door": "door",
    "address": "adr",
    "user": "usr",
    "patient": "pat",
    "entity": "ent",
}
INDEXES = (("rec", 1), ("pat", 1), ("ent", 1), ("cli", 1), ("usr", 1))
_OPERATORS = {"<": "$lt", ">=": "$gte"}


class MongoAuditStore:
    def __init__(self, storage: Any) -> None:
        self.storage = storage
        self.collection = storage.db[COLLECTION]
        for key in INDEXES:
            self.collection.create_index([key, ("_id", 1)])

    def append(self, tx: Any, events: Sequence[tuple[dict[str, Any], IndexedFields]]) -> None:
        session = getattr(tx, "session", None)
        meta = self.storage.meta
        head = meta.find_one({"_id": HEAD_ID}, session=session)
        last = self.collection.find_one({}, {"_id": 1}, sort=[("_id", -1)], session=session)
        head_seq, head_hash = (head["seq"], bytes(head["hash"])) if head else (0, GENESIS)
        start = max(head_seq, last["_id"] if last else 0)
        records = chain([event for event, _ in events], start, head_hash)
        docs = []
        for record, (_, fields) in zip(records, events, strict=True):
            docs.append(
                {
                    "_id": record.seq,
                    "rec": record.recorded,
                    "act": fields.action,
                    "sub": fields.subtype,
                    "out": fields.outcome,
                    "door": fields.door,
                    "cli": fields.client,
                    "usr": fields.user,
                    "adr": fields.address,
                    "pat": list(fields.patients),
                    "ent": list(fields.entities),
                    "json": Binary(record.json),
                    "hash": Binary(record.hash),
                }
            )
        self.collection.insert_many(docs, session=session)
        tail = records[-1]
        meta.update_one(
            {"_id": HEAD_ID},
            {"$set": {"seq": tail.seq, "hash": Binary(tail.hash)}},
            upsert=True,
            session=session,
        )

    def read(self, rid: str) -> StoredResource | None:
        if not rid.isdigit():
            return None
        doc = self.collection.find_one({"_id": int(rid)}, {"rec": 1, "json": 1})
        return stored_event(doc["_id"], doc["rec"], bytes(doc["json"])) if doc else None

    def search(
        self, criteria: AuditCriteria, count: int, cursor: str | None, total: bool
    ) -> AuditPage:
        if criteria.empty:
            return AuditPage([], total=0 if total else None)
        terms = [{"$or": [_condition(c) for c in term]} for term in criteria.terms]
        query: dict[str, Any] = {"$and": terms} if terms else {}
        paged = dict(query)
        direction = -1 if criteria.descending else 1
        if cursor:
            recorded, seq = cursor_position(self.storage.cursors, cursor)
            op = "$lt" if criteria.descending else "$gt"
            position = {"$or": [{"rec": {op: recorded}}, {"rec": recorded, "_id": {op: seq}}]}
            paged = {"$and": [*terms, position]}
        docs = list(
            self.collection.find(paged, {"rec": 1, "json": 1})
            .sort([("rec", direction), ("_id", direction)])
            .limit(count + 1)
        )
        page = AuditPage([stored_event(d["_id"], d["rec"], bytes(d["json"])) for d in docs[:count]])
        if len(docs) > count:
            last = docs[count - 1]
            page.next_cursor = self.storage.cursors.encode(["audit", last["rec"], last["_id"]])
        if total:
            page.total = self.collection.count_documents(query)
        return page

    def head(self) -> tuple[int, bytes] | None:
        head = self.storage.meta.find_one({"_id": HEAD_ID})
        return (head["seq"], bytes(head["hash"])) if head else None

    def records(self) -> Iterator[StoredRecord]:
        for doc in self.collection.find({}).sort("_id", 1):
            indexed = IndexedFields(
                instant(doc["rec"]),
                doc.get("act"),
                doc.get("sub"),
                doc.get("out"),
                doc.get("cli"),
                doc.get("usr"),
                doc.get("adr"),
                doc.get("door"),
                tuple(doc.get("pat", ())),
                tuple(doc.get("ent", ())),
            )
            yield StoredRecord(doc["_id"], bytes(doc["json"]), bytes(doc["hash"]), indexed)


def _condition(condition: Condition) -> dict[str, Any]:
    name, op, operand = condition.field, condition.op, condition.operand
    if name == "agent":
        return {"$or": [{"cli": operand}, {"usr": operand}]}
    key = FIELDS[name]
    if op == "between":
        low, high = operand  # type: ignore[misc]
        return {key: {"$gte": low, "$lt": high}}
    if op == "prefix":
        return {key: {"$regex": "^" + re.escape(str(operand))}}
    if op in _OPERATORS:
        return {key: {_OPERATORS[op]: operand}}
    return {key: operand}
