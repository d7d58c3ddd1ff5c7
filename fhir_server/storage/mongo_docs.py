"""How a resource version is laid out in MongoDB documents (no I/O here).

Current versions live in one collection per resource type, `_id` being the resource id:

    {_id, seq, v, lu, luh, del, m, j, pc, idx: {token: [{p, s, c, t}], ...}, srt: {...}}

- `seq`: an ObjectId fixed when the resource is first created: the default order and the
  tie-breaker of every sort (the SQLite backend's integer pk).
- `v`, `lu`, `del`, `m`: version, lastUpdated (epoch seconds), deleted flag, interaction.
- `luh`: lu + 1 ms, the end of the lastUpdated instant as a half-open period, so that
  `_lastUpdated` compares exactly as on SQLite (which computes the same double).
- `j`: the stored JSON bytes (BSON binary), so a read or a search page is one round trip.
- `pc`: the patient compartment the resource belongs to (the patient's id; its own id for
  resources outside any patient): the recommended shard key (see README).
- `idx`: the search index entries, one array per parameter kind, each element carrying its
  parameter code `p`. Fields that are None are left out (a Mongo `{s: null}` query matches a
  missing field, which is what SQL's `IS NULL` meant).
- `ftn`, `ftc`: the words of the narrative and of the whole text (storage/mongo_text.py).
- `srt`: per parameter, the value that `_sort` uses: `a` (ascending: the smallest value)
  and `d` (descending: the largest), `n: 1` when the resource has one. Missing values sort
  last, as on SQLite.

History holds every version, `_id` "Type/id/version" (unique: two writers cannot both make
version n of a resource), `hs` an ObjectId giving the insertion order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bson import Binary, ObjectId

from fhir_server.search.compartment import compartment_params
from fhir_server.search.types import (
    CompositeEntry,
    DateEntry,
    FullTextEntry,
    IndexEntry,
    NumberEntry,
    QuantityEntry,
    ReferenceEntry,
    StringEntry,
    TokenEntry,
    UriEntry,
)
from fhir_server.storage import mongo_text
from fhir_server.storage.base import StoredResource

# Parameters answered from the document's own fields rather than from index entries.
DIRECT_PARAMS = frozenset({"_id", "_lastUpdated"})
LAST_UPDATED_PRECISION = 0.001

# Embedded field names per entry kind, in NamedTuple field order after `param`.
ENTRY_FIELDS: dict[type, tuple[str, tuple[str, ...]]] = {
    TokenEntry: ("token", ("s", "c", "t")),
    StringEntry: ("string", ("v", "e")),
    DateEntry: ("date", ("lo", "hi")),
    NumberEntry: ("number", ("v",)),
    QuantityEntry: ("quantity", ("v", "s", "c", "u", "cv", "cu")),
    ReferenceEntry: ("reference", ("tt", "ti", "u", "is", "iv")),
    UriEntry: ("uri", ("v",)),
}
# What `_sort` compares per kind: (field for ascending, field for descending), as SQLite.
SORT_FIELDS: dict[str, tuple[str, str]] = {
    "token": ("c", "c"),
    "string": ("v", "v"),
    "date": ("lo", "hi"),
    "number": ("v", "v"),
    "quantity": ("v", "v"),
    "reference": ("ti", "ti"),
    "uri": ("v", "v"),
}
KINDS = ("token", "string", "date", "number", "quantity", "reference", "uri", "composite")


def _composite(entry: CompositeEntry) -> dict[str, Any] | None:
    """Two-part composites (token + token/quantity/date/string/number/uri) as one element."""
    if len(entry.parts) < 2 or not isinstance(entry.parts[0], TokenEntry):
        return None
    a, b = entry.parts[0], entry.parts[1]
    out: dict[str, Any] = {"p": entry.param, "as": a.system, "ac": a.code}
    if isinstance(b, TokenEntry):
        out.update(bs=b.system, bc=b.code, bt=b.text)
    elif isinstance(b, QuantityEntry):
        out.update(bs=b.system, bc=b.code, bv=b.value, bcv=b.canonical_value, bcu=b.canonical_unit)
    elif isinstance(b, DateEntry):
        out.update(blo=b.low, bhi=b.high)
    elif isinstance(b, StringEntry):
        out.update(bt=b.value)
    elif isinstance(b, NumberEntry):
        out.update(bv=b.value)
    elif isinstance(b, UriEntry):
        out.update(bc=b.value)
    elif isinstance(b, ReferenceEntry):
        out.update(bc=b.target_id)
    else:
        return None
    return {k: v for k, v in out.items() if v is not None}


def embed_index(entries: Sequence[IndexEntry]) -> tuple[dict[str, list], dict[str, dict]]:
    """The `idx` and `srt` sub-documents for a version's index entries."""
    idx: dict[str, list[dict[str, Any]]] = {}
    sort_values: dict[str, dict[str, list]] = {}
    for entry in entries:
        if entry.param in DIRECT_PARAMS or type(entry) is FullTextEntry:
            continue  # the document's own fields (FullTextEntry: mongo_text.fields)
        if isinstance(entry, CompositeEntry):
            element = _composite(entry)
            if element is not None:
                idx.setdefault("composite", []).append(element)
            continue
        kind, names = ENTRY_FIELDS[type(entry)]
        element = {"p": entry.param}
        for name, value in zip(names, entry[1:], strict=True):
            if value is not None:
                element[name] = value
        idx.setdefault(kind, []).append(element)
        asc, desc = SORT_FIELDS[kind]
        bucket = sort_values.setdefault(entry.param, {"a": [], "d": []})
        if element.get(asc) is not None:
            bucket["a"].append(element[asc])
        if element.get(desc) is not None:
            bucket["d"].append(element[desc])
    srt: dict[str, dict[str, Any]] = {}
    for code, bucket in sort_values.items():
        if bucket["a"] and bucket["d"]:
            srt[code] = {"n": 1, "a": min(bucket["a"]), "d": max(bucket["d"])}
    return idx, srt


def patient_compartment(rtype: str, rid: str, entries: Sequence[IndexEntry]) -> str:
    """The id of the patient whose compartment holds the resource (its own id otherwise)."""
    if rtype == "Patient":
        return rid
    links = compartment_params("Patient", rtype)
    if links:
        for entry in entries:
            if (
                isinstance(entry, ReferenceEntry)
                and entry.param in links
                and entry.target_type == "Patient"
                and entry.target_id
            ):
                return entry.target_id
    return rid


def current_doc(
    rtype: str,
    rid: str,
    version: int,
    last_updated: float,
    json: bytes | None,
    entries: Sequence[IndexEntry],
    method: str,
    seq: ObjectId,
    pc: str | None = None,
) -> dict[str, Any]:
    idx, srt = embed_index(entries)
    return {
        "_id": rid,
        "seq": seq,
        "v": version,
        "lu": last_updated,
        "luh": last_updated + LAST_UPDATED_PRECISION,
        "del": json is None,
        "m": method,
        "j": None if json is None else Binary(json),
        "pc": pc if pc is not None else patient_compartment(rtype, rid, entries),
        "idx": idx,
        "srt": srt,
        **mongo_text.fields(entries),
    }


def history_id(rtype: str, rid: str, version: int) -> str:
    return f"{rtype}/{rid}/{version}"


def history_doc(
    rtype: str, rid: str, version: int, last_updated: float, json: bytes | None, method: str
) -> dict[str, Any]:
    return {
        "_id": history_id(rtype, rid, version),
        "t": rtype,
        "i": rid,
        "v": version,
        "lu": last_updated,
        "del": json is None,
        "m": method,
        "j": None if json is None else Binary(json),
        "hs": ObjectId(),
    }


def stored(rtype: str, doc: dict[str, Any]) -> StoredResource:
    """A current-collection document as a StoredResource."""
    json = doc.get("j")
    return StoredResource(
        rtype,
        doc["_id"],
        doc["v"],
        doc["lu"],
        bool(doc["del"]),
        None if json is None else bytes(json),
        doc.get("m", "PUT"),
    )


def stored_history(doc: dict[str, Any]) -> StoredResource:
    json = doc.get("j")
    return StoredResource(
        doc["t"],
        doc["i"],
        doc["v"],
        doc["lu"],
        bool(doc["del"]),
        None if json is None else bytes(json),
        doc.get("m", "PUT"),
    )
