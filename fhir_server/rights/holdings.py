"""What the warehouse holds, by source (`meta.source`), month (of each resource's last
update) and type: counts of current resources, read from the store in one grouped query per
backend (SQLite: the resources table joined to the `_source` index rows; MongoDB: one
aggregation per type collection). Nothing is read of the resources' JSON."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

UNSPECIFIED = ""  # resources without meta.source
DAY = 86400

# (source, month "YYYY-MM", resource type) -> current resources
Holdings = dict[tuple[str, str, str], int]


def holdings(backend: Any) -> Holdings:
    if hasattr(backend, "_writer"):
        return _sqlite(backend)
    return _mongo(backend)


def _sqlite(backend: Any) -> Holdings:
    rows = backend._reader().execute(
        "SELECT coalesce(u.value, ''), strftime('%Y-%m', r.last_updated, 'unixepoch'), "
        "r.type, count(*) FROM resources r "
        "LEFT JOIN idx_uri u ON u.pk = r.pk AND u.pid IN "
        "(SELECT pid FROM search_params WHERE code = '_source') "
        "WHERE r.deleted = 0 GROUP BY 1, 2, 3"
    )
    return {(source, month, rtype): count for source, month, rtype, count in rows}


def _mongo(backend: Any) -> Holdings:
    """Grouped in MongoDB by day (epoch seconds of its start) and source, months made here:
    a day is arithmetic every server (and mongomock) has, a month would need dates."""
    found: Holdings = defaultdict(int)
    pipeline = [
        {"$match": {"del": False}},
        {"$project": {
            "day": {"$subtract": ["$lu", {"$mod": ["$lu", DAY]}]},
            "src": {"$filter": {"input": {"$ifNull": ["$idx.uri", []]}, "as": "u",
                                "cond": {"$eq": ["$$u.p", "_source"]}}},
        }},
        {"$group": {"_id": {"d": "$day", "s": {"$arrayElemAt": ["$src.v", 0]}},
                    "n": {"$sum": 1}}},
    ]
    for rtype in backend.resource_types():
        for row in backend.collection(rtype).aggregate(pipeline):
            month = datetime.fromtimestamp(row["_id"]["d"], UTC).strftime("%Y-%m")
            found[(row["_id"].get("s") or UNSPECIFIED, month, rtype)] += row["n"]
    return dict(found)
