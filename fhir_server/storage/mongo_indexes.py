"""The MongoDB indexes Diatabase needs, per collection (created at start-up, on the first
write to a new resource type, and by `diatabase mongo init`).

Each search parameter kind has one multikey compound index over its embedded entries,
starting with the parameter code, so that an `$elemMatch` on one entry is an index range
scan: e.g. `code=http://loinc.org|2339-0` scans (idx.token.p, idx.token.c, idx.token.s).
"""

from __future__ import annotations

from pymongo import ASCENDING, DESCENDING, IndexModel

HISTORY = "history"
META = "meta"


def _index(*fields: str, name: str) -> IndexModel:
    return IndexModel([(field, ASCENDING) for field in fields], name=name)


RESOURCE_INDEXES: tuple[IndexModel, ...] = (
    _index("seq", name="seq"),
    _index("lu", "seq", name="last_updated"),
    _index("pc", name="patient_compartment"),
    _index("idx.token.p", "idx.token.c", "idx.token.s", name="token"),
    _index("idx.string.p", "idx.string.v", name="string"),
    _index("idx.string.p", "idx.string.e", name="string_exact"),
    _index("idx.date.p", "idx.date.lo", "idx.date.hi", name="date"),
    _index("idx.number.p", "idx.number.v", name="number"),
    _index("idx.quantity.p", "idx.quantity.v", name="quantity"),
    _index("idx.quantity.p", "idx.quantity.cu", "idx.quantity.cv", name="quantity_canonical"),
    _index("idx.reference.p", "idx.reference.ti", "idx.reference.tt", name="reference"),
    _index("idx.reference.tt", "idx.reference.ti", name="reference_target"),
    _index("idx.reference.p", "idx.reference.u", name="reference_url"),
    _index("idx.reference.p", "idx.reference.iv", "idx.reference.is", name="reference_identifier"),
    _index("idx.uri.p", "idx.uri.v", name="uri"),
    _index("idx.composite.p", "idx.composite.ac", name="composite"),
    # `_sort=-date`, and the order of an unsorted date range (search/implied_order.py):
    # present values first, latest first, then creation order (mongo_search.mongo_sort).
    IndexModel([("srt.date.n", DESCENDING), ("srt.date.d", DESCENDING), ("seq", ASCENDING)],
               name="sort_date_desc"),
    _index("ftn", name="fulltext_narrative"),
    _index("ftc", name="fulltext_content"),
)

HISTORY_INDEXES: tuple[IndexModel, ...] = (
    IndexModel([("t", ASCENDING), ("i", ASCENDING), ("v", DESCENDING)], name="instance"),
    IndexModel([("lu", DESCENDING), ("hs", DESCENDING)], name="system_time"),
    IndexModel([("t", ASCENDING), ("lu", DESCENDING), ("hs", DESCENDING)], name="type_time"),
)
