"""Erasure on MongoDB: every version of some resources removed from their type's
collection (which embeds their index entries and full-text words) and from `history`, and
the per-patient documents of the clinical indexes and of the subscriptions (their pending
events and per-patient state). MongoDB (WiredTiger) reuses the space
of removed documents; it offers no overwrite of freed blocks, so on-disk scrubbing is the
operator's (an encrypted storage engine, or a resync of the member)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fhir_server.clinical.indexes_mongo import CODES, DAYS
from fhir_server.subscriptions.outbox_mongo import EVENTS, STATE


def erase(storage: Any, keys: Sequence[tuple[str, str]], patients: Sequence[str]) -> int:
    removed = 0
    with storage._write_lock:
        for rtype, rid in keys:
            storage.collection(rtype).delete_one({"_id": rid})
            removed += storage.history_collection.delete_many({"t": rtype, "i": rid}).deleted_count
            storage.db[EVENTS].delete_many({"ftype": rtype, "fid": rid})
        if patients:
            for name in (CODES, DAYS, STATE):
                storage.db[name].delete_many({"patient": {"$in": list(patients)}})
    return removed


def deleted_referring(storage: Any, patient_id: str) -> list[tuple[str, str]]:
    """Resources deleted before the erasure whose former versions name the patient."""
    needle = f'"Patient/{patient_id}"'.encode()
    found = []
    for rtype in storage.resource_types():
        for doc in storage.collection(rtype).find({"del": True}, {"_id": 1}):
            versions = storage.history_collection.find({"t": rtype, "i": doc["_id"]}, {"j": 1})
            if any(v.get("j") is not None and needle in bytes(v["j"]) for v in versions):
                found.append((rtype, doc["_id"]))
    return found
