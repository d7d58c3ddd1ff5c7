"""`_id=a,b,c,...`: the ids of a clause as one list, bounded by `Limits.max_id_values`.

Cohorts and a Group's `$export` ask for thousands of resources by id. Each backend looks
the list up at once (SQLite `id IN (...)`, MongoDB `$in`) rather than as ORed terms; past
the bound, the search is refused with a 400 naming the limit, before any query runs.
"""

from __future__ import annotations

from fhir_server.limits import Limits
from fhir_server.search.errors import SearchError
from fhir_server.search.limits import check_id_count
from fhir_server.search.query import Clause
from fhir_server.search.values import MissingValue, TokenValue


def listed_ids(clause: Clause, limits: Limits) -> list[str]:
    """The distinct ids the `_id` clause names, in their order (`:missing` values aside)."""
    ids: list[str] = []
    for value in clause.values:
        if isinstance(value, MissingValue):
            continue
        if not isinstance(value, TokenValue) or value.code is None:
            raise SearchError("_id takes a resource id", "_id")
        ids.append(value.code)
    check_id_count(len(ids), limits)
    return list(dict.fromkeys(ids))
