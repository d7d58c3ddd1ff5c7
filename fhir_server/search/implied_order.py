"""The order of a search without `_sort` that pages a broad date or `_lastUpdated` range.

R4 leaves the order of an unsorted search to the server. Diatabase's is insertion order,
except for a type-level search that filters on a plain date or `_lastUpdated` range and on
nothing that leads better (`_id`, a reference such as `patient=`, a compartment, chain or
`_has`, the request's own restriction): such a search is read in the range's own index
order, as if it said `_sort=-date` (latest first: what a dashboard shows) or
`_sort=_lastUpdated` (a poll reads what changed since, oldest first; it goes before a date
range). A page then reads its N+1 rows off the index, where insertion order had to count
the range to choose how to reach it (`Observation?date=ge..` matching 100,000s of
resources counted them on every page) or scan until the range began. Latest first also
lets MongoDB read `date=ge..` off one index of the sort values (mongo_indexes.py
`sort_date_desc`), bounded by the clause.

The rule depends on the query alone, so every page of one search has the same order, on
every backend.
"""

from __future__ import annotations

from fhir_server.search.query import Clause, SearchQuery
from fhir_server.search.result_params import SortKey
from fhir_server.search.values import DateValue

# Prefixes that bound a range (`ne` and `ap` do not give one index range).
RANGE_PREFIXES = frozenset({"eq", "gt", "ge", "lt", "le", "sa", "eb"})


def is_range_clause(criterion: object) -> bool:
    """A plain date or `_lastUpdated` range: no modifier, every value a bounded prefix."""
    return (
        isinstance(criterion, Clause)
        and criterion.modifier is None
        and criterion.param.type == "date"
        and bool(criterion.values)
        and all(isinstance(v, DateValue) and v.prefix in RANGE_PREFIXES for v in criterion.values)
    )


def implied_order(query: SearchQuery) -> tuple[SortKey, ...]:
    """The sort an unsorted search is read in: empty for insertion order."""
    if (query.result.sort or query.resource_type is None or query.restriction is not None
            or query.insertion_order):
        return ()
    ranges = []
    for criterion in query.clauses:
        if not isinstance(criterion, Clause):
            return ()  # a compartment, chain or `_has`: usually the selective part
        if criterion.param.code == "_id" or criterion.param.type == "reference":
            return ()  # the id index, a patient's or an encounter's rows lead
        if is_range_clause(criterion):
            ranges.append(criterion)
    if not ranges:
        return ()
    polled = next((c for c in ranges if c.param.code == "_lastUpdated"), None)
    if polled is not None:
        return (SortKey("_lastUpdated", False, polled.param),)
    return (SortKey(ranges[0].param.code, True, ranges[0].param),)
