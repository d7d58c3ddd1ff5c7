"""Parsed FHIR searches translated to MongoDB queries over the embedded index entries.

The semantics are those of the SQLite backend (sqlite_search.py); prefixes come from
search/ranges.py, which states them once for every backend.

- A Clause is an `$elemMatch` on the entries of its kind with the parameter code `p` and
  one value's condition (values ORed, `:not` / `:not-in` as `$nor`), so that each value is
  a range scan of the kind's multikey index (mongo_indexes.py).
- `_id` and `_lastUpdated` are conditions on the document's own `_id` and `lu` / `luh`.
- Chains and `_has` are two-step: first the ids of the matching targets (or the referring
  sources) are found with their own indexed query, then the outer query takes them with
  `$in`. Limit: a step may yield at most MAX_SUBQUERY_IDS ids; a broader chain or _has is
  refused with a SearchError (400) asking to narrow it, rather than answered wrongly.
- Sorting uses the per-parameter sort values stored in `srt` (missing values last), then
  `seq` (creation order); paging is keyset-based, the signed cursor holding the last row's
  sort values and seq, so concurrent writes never shift or repeat pages.
- A system-level search queries each type's collection with the same sort and cursor and
  merges the pages. A `CompartmentClause` ORs its alternatives (for `$everything`, those of
  each collection's type, from `by_type`).
- Quantities with a unit that has a canonical form match entries through it, and entries
  without one (no UCUM code stored) on their raw value and code or unit text.
- `_revinclude=*` looks in every type's collection for entries referring to the matches;
  includes are returned in creation order across types (SQLite's pk order).
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from bson import ObjectId

from fhir_server.search.errors import SearchError, UnsupportedModifier
from fhir_server.search.expansion import expand_token_clause, needs_expansion
from fhir_server.search.fulltext import is_fulltext_clause
from fhir_server.search.id_lists import listed_ids
from fhir_server.search.implied_order import implied_order
from fhir_server.search.query import (
    AnyOf,
    ChainClause,
    Clause,
    CompartmentClause,
    HasClause,
    SearchQuery,
)
from fhir_server.search.ranges import RangePredicate, date_predicate, number_predicate
from fhir_server.search.result_params import Include, SortKey
from fhir_server.search.values import (
    CompositeValue,
    DateValue,
    MissingValue,
    NumberValue,
    OfTypeValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
)
from fhir_server.storage import mongo_budget, mongo_text
from fhir_server.storage.base import StoredResource
from fhir_server.storage.cursor import CursorError
from fhir_server.storage.mongo_docs import DIRECT_PARAMS, KINDS, SORT_FIELDS, stored

if TYPE_CHECKING:
    from fhir_server.storage.mongo import MongoStorage

STRING_MAX = "\U0010ffff"
MAX_SUBQUERY_IDS = 100_000
NEVER: dict[str, Any] = {"_id": {"$in": []}}
CURRENT: dict[str, Any] = {"del": False}
_OPS = {"<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte"}
# What a page needs of a document: the JSON, sort values, and references for includes.
PAGE_PROJECTION = {f"idx.{kind}": 0 for kind in KINDS if kind != "reference"}


@dataclass
class SearchPage:
    matches: list[StoredResource]
    included: list[StoredResource] = field(default_factory=list)
    total: int | None = None
    next_cursor: str | None = None
    previous_cursor: str | None = None
    warnings: tuple[str, ...] = ()  # told to the client in the Bundle's outcome entry


def both(*conditions: dict[str, Any]) -> dict[str, Any]:
    """AND of conditions (empty ones dropped), flat when their keys do not clash."""
    parts = [c for c in conditions if c]
    merged: dict[str, Any] = {}
    for part in parts:
        if any(key in merged for key in part):
            return {"$and": parts}
        merged.update(part)
    return merged


def any_of(conditions: list[dict[str, Any]]) -> dict[str, Any]:
    if not conditions:
        return NEVER
    if any(not c for c in conditions):
        return {}
    return conditions[0] if len(conditions) == 1 else {"$or": conditions}


def range_condition(predicate: RangePredicate, fields: dict[str, str]) -> dict[str, Any]:
    groups = []
    for group in predicate.any_of:
        condition: dict[str, dict[str, float]] = {}
        for bound in group:
            condition.setdefault(fields[bound.field], {})[_OPS[bound.op]] = bound.value
        groups.append(condition)
    body = any_of(groups)
    return {"$nor": [body]} if predicate.negate else body


def date_condition(value: DateValue, low: str, high: str) -> dict[str, Any]:
    predicate = date_predicate(value, time.time())
    return range_condition(predicate, {"low": low, "high": high})


def number_condition(value: Any, column: str) -> dict[str, Any]:
    """Number and quantity comparisons (a NumberValue, QuantityValue or a plain number)."""
    if isinstance(value, Decimal | float | int):
        exact = float(value)
        return {column: {"$gte": exact * (1 - 1e-9), "$lte": exact * (1 + 1e-9)}}
    return range_condition(number_predicate(value), {"value": column})


def raw_quantity_condition(
    value: QuantityValue, v: str, system: str, code: str, unit: str
) -> dict[str, Any]:
    """The value compared as stored, with the system and code (or unit text) as given."""
    unit_condition: dict[str, Any] = {}
    if value.system and value.code:
        unit_condition = {system: value.system, code: value.code}
    elif value.code:
        unit_condition = any_of([{code: value.code}, {unit: value.code}])
    elif value.system:
        unit_condition = {system: value.system}
    return both(number_condition(value, v), unit_condition)


def token_condition(value: TokenValue, system: str = "s", code: str = "c") -> dict[str, Any]:
    if value.code is None:
        return {} if value.system is None else {system: value.system}
    if not value.system_given:
        return {code: value.code}
    return {code: value.code, system: value.system}  # system None: no system stored


def string_condition(
    modifier: str | None, value: StringValue, column: str = "v", exact: str = "e"
) -> dict[str, Any]:
    if modifier == "exact":
        return {exact: value.value}
    if modifier in ("contains", "text"):
        return {column: {"$regex": re.escape(value.normalised)}}
    # Default string search: starts with, on the normalised form (an index range scan).
    return {column: {"$gte": value.normalised, "$lt": value.normalised + STRING_MAX}}


def reference_condition(value: ReferenceValue) -> dict[str, Any]:
    if value.identifier_value is not None or value.identifier_system is not None:
        condition: dict[str, Any] = {}
        if value.identifier_value is not None:
            condition["iv"] = value.identifier_value
        if value.identifier_system is not None:
            condition["is"] = value.identifier_system
        return condition
    if value.url is not None:
        return {"u": value.url}
    if value.type is not None and value.id is None:  # any resource of the type
        return {"tt": value.type}
    if value.type is not None:
        return {"ti": value.id, "tt": value.type}
    return {"ti": value.id}


def uri_condition(modifier: str | None, value: UriValue) -> dict[str, Any]:
    if modifier == "below":
        return {"v": {"$gte": value.value, "$lt": value.value + STRING_MAX}}
    if modifier == "above":
        # Stored URIs that are a prefix of the given one: every prefix, as an index lookup.
        return {"v": {"$in": [value.value[:k] for k in range(len(value.value) + 1)]}}
    return {"v": value.value}


class Translator:
    """Builds the filter of a search for one resource type's collection."""

    def __init__(self, storage: MongoStorage, session: Any = None, restriction: Any = None):
        self.storage = storage
        self.session = session
        # What the request may see (SearchQuery.restriction): ANDed on every type read.
        self.restriction = restriction

    def filter(self, query: SearchQuery, rtype: str) -> dict[str, Any]:
        # A type-level search carries its own type's restriction among its clauses.
        visible = self.visible(rtype) if query.resource_type is None else {}
        return both(CURRENT, visible, *(self.criterion(crit, rtype) for crit in query.clauses))

    def visible(self, rtype: str) -> dict[str, Any]:
        """The condition of what the request may see of `rtype` ({}: everything)."""
        criterion = self.restriction.criterion(rtype) if self.restriction is not None else None
        return {} if criterion is None else self.criterion(criterion, rtype)

    def criterion(self, crit: Any, rtype: str) -> dict[str, Any]:
        if isinstance(crit, Clause):
            return self.clause(crit)
        if isinstance(crit, ChainClause):
            return self.chain(crit)
        if isinstance(crit, HasClause):
            return self.has(crit, rtype)
        if isinstance(crit, AnyOf):
            return any_of(
                [both(*(self.criterion(p, rtype) for p in alt)) for alt in crit.alternatives]
            )
        if isinstance(crit, CompartmentClause):
            # Compartment membership (`GET Patient/1/Observation`, `$everything`): its
            # clauses are ORed; a search over several types takes each type's own ones.
            alternatives = crit.alternatives
            if crit.by_type is not None:
                alternatives = crit.by_type.get(rtype, ())
            extra = [self.criterion(clause, rtype) for clause in crit.extra(rtype)]
            if crit.everyone(rtype):
                return both({}, *extra)
            membership = any_of([self.criterion(alt, rtype) for alt in alternatives])
            return both(membership, *extra)
        raise SearchError(f"unsupported search criterion {crit!r}")

    # -- chains and _has: two steps ----------------------------------------------------------

    def _ids(self, rtype: str, condition: dict[str, Any], what: str) -> list[str]:
        cursor = self.storage.collection(rtype).find(condition, {"_id": 1}, session=self.session)
        ids = [doc["_id"] for doc in cursor.limit(MAX_SUBQUERY_IDS + 1)]
        if len(ids) > MAX_SUBQUERY_IDS:
            raise SearchError(
                f"{what} matches more than {MAX_SUBQUERY_IDS} {rtype} resources: narrow it"
            )
        return ids

    def chain(self, crit: ChainClause) -> dict[str, Any]:
        targets = []
        for target in crit.target_types:
            inner = both(CURRENT, self.criterion(crit.inner, target), self.visible(target))
            ids = self._ids(target, inner, f"the chain {crit.key}")
            if ids:
                targets.append({"tt": target, "ti": {"$in": ids}})
        if not targets:
            return NEVER
        return {"idx.reference": {"$elemMatch": both({"p": crit.param.code}, any_of(targets))}}

    def has(self, crit: HasClause, rtype: str) -> dict[str, Any]:
        code = crit.ref_param.code
        link = {"idx.reference": {"$elemMatch": {"p": code, "tt": rtype}}}
        sources = both(
            CURRENT,
            link,
            self.criterion(crit.inner, crit.resource_type),
            self.visible(crit.resource_type),
        )
        cursor = self.storage.collection(crit.resource_type).find(
            sources, {"idx.reference": 1}, session=self.session
        )
        ids: set[str] = set()
        for count, doc in enumerate(cursor.limit(MAX_SUBQUERY_IDS + 1)):
            if count >= MAX_SUBQUERY_IDS:
                raise SearchError(
                    f"{crit.key} matches more than {MAX_SUBQUERY_IDS} {crit.resource_type} "
                    "resources: narrow it"
                )
            for entry in doc.get("idx", {}).get("reference", ()):
                if entry["p"] == code and entry.get("tt") == rtype and entry.get("ti"):
                    ids.add(entry["ti"])
        return {"_id": {"$in": sorted(ids)}}

    # -- clauses -----------------------------------------------------------------------------

    def clause(self, clause: Clause) -> dict[str, Any]:
        param = clause.param
        if is_fulltext_clause(clause):
            return mongo_text.condition(clause)
        if param.code in DIRECT_PARAMS:
            return self.direct(clause)
        kind = param.type
        if kind not in KINDS:
            raise SearchError(f"parameter {param.code!r} of type {kind} is not searchable")
        path = f"idx.{kind}"
        if clause.modifier == "missing":
            missing = any(isinstance(v, MissingValue) and v.missing for v in clause.values)
            present = {"$elemMatch": {"p": param.code}}
            return {path: {"$not": present}} if missing else {path: present}
        if needs_expansion(clause):
            conditions = self.expanded(clause)
        else:
            conditions = [self.value(kind, clause.modifier, value) for value in clause.values]
        # An entry condition that is an OR of its own (a quantity through its canonical form
        # or its raw value) becomes one $elemMatch per branch, each an index range scan:
        # some entry matches (A or B) exactly when some entry matches A or some matches B.
        branches = [b for c in conditions for b in (c["$or"] if list(c) == ["$or"] else [c])]
        matches = [{path: {"$elemMatch": both({"p": param.code}, b)}} for b in branches]
        if clause.modifier in ("not", "not-in"):
            return {"$nor": matches} if matches else {}
        return any_of(matches)

    def expanded(self, clause: Clause) -> list[dict[str, Any]]:
        """Token :in/:not-in/:below/:above: the codes from terminology, by system."""
        by_system: dict[str | None, list[str]] = {}
        for token in expand_token_clause(clause, self.storage.expander):
            if token.code is not None:
                by_system.setdefault(token.system, []).append(token.code)
        return [
            {"s": system, "c": codes[0] if len(codes) == 1 else {"$in": codes}}
            for system, codes in by_system.items()
        ]

    def direct(self, clause: Clause) -> dict[str, Any]:
        ors: list[dict[str, Any]] = []
        if clause.param.code == "_id":
            ids = listed_ids(clause, self.storage.limits)  # one `$in` lookup of `_id`
            if ids:
                ors.append({"_id": ids[0] if len(ids) == 1 else {"$in": ids}})
        for value in clause.values:
            if isinstance(value, MissingValue):
                ors.append(NEVER if value.missing else {})
            elif clause.param.code == "_id":
                continue  # listed above
            elif isinstance(value, DateValue):
                ors.append(date_condition(value, "lu", "luh"))
            else:
                raise SearchError(f"unsupported value for {clause.param.code}", clause.param.code)
        body = any_of(ors)
        return {"$nor": [body]} if clause.modifier == "not" else body

    def value(self, kind: str, modifier: str | None, value: Any) -> dict[str, Any]:
        if kind == "token":
            if modifier == "text":
                return string_condition("contains", value, "t", "t")
            if isinstance(value, OfTypeValue):
                raise UnsupportedModifier(":of-type is not supported by this server", "identifier")
            return token_condition(value)
        if kind == "string":
            return string_condition(modifier, value)
        if kind == "date":
            return date_condition(value, "lo", "hi")
        if kind == "number":
            return number_condition(value, "v")
        if kind == "quantity":
            return self.quantity(value, "v", "s", "c", "u", "cv", "cu")
        if kind == "reference":
            return reference_condition(value)
        if kind == "uri":
            return uri_condition(modifier, value)
        return self.composite(value)

    def quantity(
        self, value: QuantityValue, v: str, system: str, code: str, unit: str, cv: str, cu: str
    ) -> dict[str, Any]:
        raw = raw_quantity_condition(value, v, system, code, unit)
        canonical = self.storage.canonical_query
        if value.code and canonical is not None:
            converted = canonical(value, value.system, value.code)
            if converted is not None:
                # Any unit of the same dimension, through the canonical form; and entries
                # that have none (no UCUM code stored, only a unit text) on their own value
                # and unit (`{cu: None}` matches the absent field, as SQL's IS NULL).
                canonical_value, canonical_unit = converted
                through_canonical = both(
                    {cu: canonical_unit}, number_condition(canonical_value, cv)
                )
                return {"$or": [through_canonical, both({cu: None}, raw)]}
        return raw

    def composite(self, value: CompositeValue) -> dict[str, Any]:
        if len(value.parts) != 2 or not isinstance(value.parts[0], TokenValue):
            raise SearchError("only two-part composites starting with a token are supported")
        first, second = value.parts
        condition_a = token_condition(first, "as", "ac")
        if isinstance(second, TokenValue):
            condition_b = token_condition(second, "bs", "bc")
        elif isinstance(second, QuantityValue):
            condition_b = self.quantity(second, "bv", "bs", "bc", "bc", "bcv", "bcu")
        elif isinstance(second, DateValue):
            condition_b = date_condition(second, "blo", "bhi")
        elif isinstance(second, StringValue):
            condition_b = string_condition(None, second, "bt", "bt")
        elif isinstance(second, NumberValue):
            condition_b = number_condition(second, "bv")
        else:
            raise SearchError("unsupported composite component")
        return both(condition_a, condition_b)


# -- sorting and keyset paging ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SortSpec:
    field: str  # the document path compared
    presence: str | None  # path that is 1 when the value exists (None: always exists)
    descending: bool


def sort_specs(keys: Iterable[SortKey]) -> list[SortSpec]:
    specs = []
    for key in keys:
        if key.code == "_id":
            specs.append(SortSpec("_id", None, key.descending))
        elif key.code == "_lastUpdated":
            specs.append(SortSpec("lu", None, key.descending))
        else:
            assert key.param is not None
            if key.param.type not in SORT_FIELDS:
                raise SearchError(
                    f"cannot sort on {key.param.type} parameter {key.code!r}", "_sort"
                )
            side = "d" if key.descending else "a"
            specs.append(SortSpec(f"srt.{key.code}.{side}", f"srt.{key.code}.n", key.descending))
    return specs


def mongo_sort(specs: list[SortSpec], reverse: bool) -> list[tuple[str, int]]:
    """Reading order: present values first (missing last), then the value, then seq."""
    flip = -1 if reverse else 1
    order: list[tuple[str, int]] = []
    for spec in specs:
        if spec.presence is not None:
            order.append((spec.presence, -1 * flip))
        order.append((spec.field, (-1 if spec.descending else 1) * flip))
    order.append(("seq", flip))
    return order


def keyset_condition(
    specs: list[SortSpec], values: list[Any], last_seq: ObjectId, reverse: bool
) -> dict[str, Any]:
    """Rows strictly after (or before, when paging back) the position (values, seq)."""
    ors: list[dict[str, Any]] = []
    prefix: list[dict[str, Any]] = []
    keys = [*specs, SortSpec("seq", None, False)]
    for spec, position in zip(keys, [*values, last_seq], strict=True):
        if position is None:
            # Missing values sort last: after one, only other missing ones can follow.
            assert spec.presence is not None
            compare = {spec.presence: 1} if reverse else NEVER
            equal: dict[str, Any] = {spec.presence: None}
        else:
            op = "$gt" if spec.descending == reverse else "$lt"
            compare = {spec.field: {op: position}}
            if not reverse and spec.presence is not None:
                compare = any_of([compare, {spec.presence: None}])
            equal = {spec.field: position}
        ors.append(both(*prefix, compare) if prefix else compare)
        prefix.append(equal)
    return any_of(ors)


def _path(doc: dict[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _compare(a: Any, b: Any) -> int:
    return (a > b) - (a < b)


def _row_order(specs: list[SortSpec], reverse: bool) -> Any:
    """A sort key function giving Python the order `mongo_sort` gives MongoDB."""

    def cmp(x: dict[str, Any], y: dict[str, Any]) -> int:
        for spec in specs:
            vx, vy = _path(x, spec.field), _path(y, spec.field)
            if vx is None or vy is None:
                result = _compare(vx is None, vy is None)  # missing last
            else:
                result = _compare(vx, vy) * (-1 if spec.descending else 1)
            if result:
                return -result if reverse else result
        result = _compare(x["seq"], y["seq"])
        return -result if reverse else result

    return functools.cmp_to_key(cmp)


# -- running a search ------------------------------------------------------------------------


def _types(storage: MongoStorage, query: SearchQuery) -> list[str]:
    if query.resource_type is not None:
        return [query.resource_type]
    existing = storage.resource_types()
    if query.resource_types:
        return [t for t in query.resource_types if t in existing]
    return existing


def _filters(
    storage: MongoStorage, query: SearchQuery, session: Any = None
) -> list[tuple[str, dict[str, Any]]]:
    translator = Translator(storage, session, query.restriction)
    return [(rtype, translator.filter(query, rtype)) for rtype in _types(storage, query)]


# Prefixes whose condition is on one end of the period only: "some entry's high > X" is
# "the largest high > X", a bound on the sort value `srt.<code>.d` (low and `a` likewise).
ONE_ENDED = frozenset({"gt", "ge", "lt", "le"})


def sort_value_bounds(query: SearchQuery, keys: Iterable[SortKey]) -> dict[str, Any]:
    """The date clauses on the first sort key's parameter restated on its sort values
    (equivalent, see ONE_ENDED), so that the sort's index (`sort_date_desc`) is read as a
    bounded range in order: `date=ge2025-12-01&_sort=-date` then reads its page off the
    index instead of sorting every match. {} when there is nothing to restate."""
    first = next(iter(keys), None)
    if first is None or first.param is None or first.param.type != "date":
        return {}
    if first.code in DIRECT_PARAMS or query.resource_type is None:
        return {}
    fields = {"low": f"srt.{first.code}.a", "high": f"srt.{first.code}.d"}
    bounds = []
    for clause in query.clauses:
        if (
            isinstance(clause, Clause)
            and clause.param.code == first.code
            and clause.modifier is None
            and clause.values
            and all(isinstance(v, DateValue) and v.prefix in ONE_ENDED for v in clause.values)
        ):
            bounds.append(any_of([range_condition(date_predicate(v, time.time()), fields)
                                  for v in clause.values]))
    return both({f"srt.{first.code}.n": 1}, *bounds) if bounds else {}


def matching_ids(
    storage: MongoStorage, query: SearchQuery, limit: int, session: Any = None
) -> list[str]:
    ids: list[str] = []
    for rtype, condition in _filters(storage, query, session):
        docs = storage.collection(rtype).find(condition, {"_id": 1}, session=session)
        ids += [doc["_id"] for doc in docs.limit(limit - len(ids))]
        if len(ids) >= limit:
            break
    return ids


def run_search(
    storage: MongoStorage, query: SearchQuery, count: int, cursor: str | None
) -> SearchPage:
    result = query.result
    keys = result.sort or implied_order(query)
    specs = sort_specs(keys)
    filters = _filters(storage, query)
    on_sort_values = sort_value_bounds(query, keys)
    if on_sort_values:
        filters = [(rtype, both(condition, on_sort_values)) for rtype, condition in filters]
    total = None
    notes: tuple[str, ...] = ()

    def count_all() -> int:
        return sum(storage.collection(t).count_documents(f) for t, f in filters)

    if result.summary == "count" or count == 0:  # the count is the answer: the whole budget
        return SearchPage([], total=count_all())
    if result.total == "accurate":  # beside a page: counted for a bounded time, or not at all
        seconds = storage.limits.total_count_seconds
        total = mongo_budget.within(seconds, "total_count_seconds", count_all)
        if total is None:
            notes = (storage.limits.total_not_counted(),)

    reverse = False
    position: dict[str, Any] = {}
    if cursor:
        try:
            state = storage.cursors.decode(cursor)
            direction, values, last_seq = state["d"], state["v"], ObjectId(state["pk"])
            if direction not in ("n", "p") or len(values) != len(specs):
                raise ValueError
        except (CursorError, KeyError, TypeError, ValueError):
            raise CursorError("The paging cursor is invalid or belongs to another search") from None
        reverse = direction == "p"
        position = keyset_condition(specs, values, last_seq, reverse)

    order = mongo_sort(specs, reverse)
    rows: list[tuple[str, dict[str, Any]]] = []
    for rtype, condition in filters:
        docs = (
            storage.collection(rtype)
            .find(both(condition, position), PAGE_PROJECTION)
            .sort(order)
            .limit(count + 1)
        )
        rows += [(rtype, doc) for doc in docs]
    if len(filters) > 1:
        key = _row_order(specs, reverse)
        rows.sort(key=lambda row: key(row[1]))
    has_more = len(rows) > count
    rows = rows[:count]
    if reverse:
        rows.reverse()
    matches = [stored(rtype, doc) for rtype, doc in rows]

    def position_of(doc: dict[str, Any], direction: str) -> str:
        values = [_path(doc, spec.field) for spec in specs]
        return storage.cursors.encode({"d": direction, "v": values, "pk": str(doc["seq"])})

    next_cursor = previous_cursor = None
    if rows:
        if (has_more and not reverse) or (reverse and cursor):
            next_cursor = position_of(rows[-1][1], "n")
        if (cursor and not reverse) or (reverse and has_more):
            previous_cursor = position_of(rows[0][1], "p")
    if total is None and not cursor and not has_more:
        total = len(matches)
    included, warnings = _includes(storage, query, rows)
    return SearchPage(matches, included, total, next_cursor, previous_cursor, notes + warnings)


# -- _include / _revinclude ------------------------------------------------------------------


def _references(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc.get("idx", {}).get("reference", ()))


def _includes(
    storage: MongoStorage, query: SearchQuery, rows: list[tuple[str, dict[str, Any]]]
) -> tuple[list[StoredResource], tuple[str, ...]]:
    """The included resources, and a warning when the limits cut them short."""
    result = query.result
    if not rows or not (result.include or result.revinclude):
        return [], ()
    limits = storage.limits
    visible = Translator(storage, None, query.restriction).visible
    seen = {(rtype, doc["_id"]) for rtype, doc in rows}
    included: list[StoredResource] = []
    frontier = rows
    for depth in range(limits.max_include_iterations):
        found: list[tuple[str, dict[str, Any]]] = []
        for inc in result.include:
            if depth == 0 or inc.iterate:
                found += _forward(storage, inc, frontier, visible)
        for inc in result.revinclude:
            if depth == 0 or inc.iterate:
                found += _reverse(storage, inc, frontier, limits.max_included, visible)
        fresh = []
        for rtype, doc in found:
            key = (rtype, doc["_id"])
            if key not in seen and not doc["del"]:
                seen.add(key)
                fresh.append((rtype, doc))
        included += [stored(rtype, doc) for rtype, doc in fresh]
        if not fresh:
            return included, ()
        if len(included) >= limits.max_included:
            break
        frontier = fresh
    return included[: limits.max_included], (limits.includes_cut_short(),)


Visible = Callable[[str], dict[str, Any]]


def _fetch(
    storage: MongoStorage, targets: dict[str, set[str]], visible: Visible
) -> list[tuple[str, dict]]:
    """The current resources named that the request may see, in creation order across
    types (as SQLite's pk order)."""
    found = []
    for rtype in sorted(targets):
        named = {"_id": {"$in": sorted(targets[rtype])}, "del": False}
        docs = storage.collection(rtype).find(both(named, visible(rtype)), PAGE_PROJECTION)
        found += [(rtype, doc) for doc in docs]
    found.sort(key=lambda row: row[1]["seq"])
    return found


def _forward(
    storage: MongoStorage,
    inc: Include,
    frontier: list[tuple[str, dict[str, Any]]],
    visible: Visible,
) -> list[tuple[str, dict[str, Any]]]:
    every_param = inc.param_code == "*" or inc.source_type == "*"
    targets: dict[str, set[str]] = {}
    for rtype, doc in frontier:
        if inc.source_type not in ("*", rtype):
            continue
        for entry in _references(doc):
            ttype, tid = entry.get("tt"), entry.get("ti")
            if not ttype or not tid or not (every_param or entry["p"] == inc.param_code):
                continue
            if inc.target_type and ttype != inc.target_type:
                continue
            if re.fullmatch(r"[A-Z][A-Za-z]{1,63}", ttype):
                targets.setdefault(ttype, set()).add(tid)
    return _fetch(storage, targets, visible)


def _reverse(
    storage: MongoStorage,
    inc: Include,
    frontier: list[tuple[str, dict[str, Any]]],
    limit: int,
    visible: Visible,
) -> list[tuple[str, dict[str, Any]]]:
    by_type: dict[str, list[str]] = {}
    for rtype, doc in frontier:
        by_type.setdefault(rtype, []).append(doc["_id"])
    pointing = any_of([{"tt": t, "ti": {"$in": ids}} for t, ids in sorted(by_type.items())])
    every_param = inc.param_code == "*" or inc.source_type == "*"
    entry = pointing if every_param else both({"p": inc.param_code}, pointing)
    # `_revinclude=*`: every resource referring to the frontier, of any type, through any
    # parameter; merged in creation order across types (SQLite's pk order).
    source_types = storage.resource_types() if inc.source_type == "*" else [inc.source_type]
    found: list[tuple[str, dict[str, Any]]] = []
    for source_type in source_types:
        docs = (
            storage.collection(source_type)
            .find(
                both({"del": False, "idx.reference": {"$elemMatch": entry}},
                     visible(source_type)),
                PAGE_PROJECTION,
            )
            .sort("seq", 1)
            .limit(limit)
        )
        found += [(source_type, doc) for doc in docs]
    if len(source_types) > 1:
        found.sort(key=lambda row: row[1]["seq"])
    return found[:limit]
