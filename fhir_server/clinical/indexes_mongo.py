"""The clinical indexes (indexes.py) in two MongoDB collections, written with the write
transaction's session (`clinical_codes`, `cgm_days`; `_id` is the key)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fhir_server.clinical.glucose import CGM_CODES
from fhir_server.clinical.indexes import DAY_FIELDS, Deltas

CODES, DAYS = "clinical_codes", "cgm_days"
VERSION_KEY = "clinical_indexes_version"


class MongoClinicalIndexes:
    def __init__(self, storage: Any) -> None:
        self.storage = storage
        self.codes_collection = storage.db[CODES]
        self.days_collection = storage.db[DAYS]
        self.codes_collection.create_index([("patient", 1), ("n", 1)])
        self.days_collection.create_index([("day", 1), ("patient", 1)])

    def apply(self, tx: Any, deltas: Deltas) -> None:
        session = getattr(tx, "session", None)
        if deltas.codes:
            for key, n in deltas.codes.items():
                self.codes_collection.update_one(
                    {"_id": "|".join(key)},
                    {"$inc": {"n": n}, "$set": {"patient": key[0], "system": key[1],
                                                "code": key[2]}},
                    upsert=True, session=session,
                )
            self.codes_collection.delete_many({"n": {"$lte": 0}}, session=session)
        if deltas.days:
            # one update per key (few per transaction: codes and days touched); mongomock
            # has no bulk_write for the pymongo of today
            for key, row in deltas.days.items():
                self.days_collection.update_one(
                    {"_id": f"{key[0]}|{key[1]}"},
                    {"$inc": dict(zip(DAY_FIELDS, row, strict=True)),
                     "$set": {"patient": key[0], "day": key[1]}},
                    upsert=True, session=session,
                )
            self.days_collection.delete_many({"n": {"$lte": 0}}, session=session)

    def version(self, tx: Any) -> int | None:
        """INDEXES_VERSION of the code that last rebuilt them; None: never built."""
        doc = self.storage.meta.find_one({"_id": VERSION_KEY},
                                         session=getattr(tx, "session", None))
        return int(doc["version"]) if doc else None

    def replace(self, tx: Any, deltas: Deltas, version: int) -> None:
        session = getattr(tx, "session", None)
        self.codes_collection.delete_many({}, session=session)
        self.days_collection.delete_many({}, session=session)
        self.apply(tx, deltas)
        self.storage.meta.update_one({"_id": VERSION_KEY}, {"$set": {"version": version}},
                                     upsert=True, session=session)

    def code_counts(self, patient: str) -> dict[tuple[str, str], int]:
        return {
            (d["system"], d["code"]): int(d["n"])
            for d in self.codes_collection.find({"patient": patient, "n": {"$gt": 0}})
        }

    def codes(self, patient: str) -> list[tuple[str, str]]:
        return sorted(self.code_counts(patient))

    def window(
        self, first: str, last: str, patients: Sequence[str] | None = None
    ) -> dict[str, tuple[int, str, list[float]]]:
        match: dict[str, Any] = {"day": {"$gte": first, "$lte": last}, "n": {"$gt": 0}}
        if patients is not None:
            match["patient"] = {"$in": list(patients)}
        group: dict[str, Any] = {"_id": "$patient", "days": {"$sum": 1},
                                 "last": {"$max": "$day"}}
        group.update({f: {"$sum": f"${f}"} for f in DAY_FIELDS})
        return {
            d["_id"]: (int(d["days"]), d["last"], [d[f] for f in DAY_FIELDS])
            for d in self.days_collection.aggregate([{"$match": match}, {"$group": group}])
        }

    def cgm_patients(self, patients: Sequence[str]) -> set[str]:
        found = self.codes_collection.distinct("patient", {
            "code": {"$in": list(CGM_CODES)}, "n": {"$gt": 0},
            "patient": {"$in": list(patients)}})
        return set(found)
