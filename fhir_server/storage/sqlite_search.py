"""Parsed FHIR searches compiled to SQL over the SQLite index tables.

Semantics (the same on every backend; prefixes are stated in search/ranges.py):
- AND between parameters (and repeated ones), OR between comma-separated values; a value
  matches when ONE index row of the resource satisfies it (several dates, codings, names).
- `:not` / `:not-in` match resources with no matching row (missing values included);
  `ne` matches resources having a row that is not equal (missing values excluded).
- `:missing=true` = no index row for the parameter; `:text` on tokens is a contains match
  on the normalised display/text; string default = starts-with on the normalised form.
- Chains and `_has` nest through idx_reference; `CompartmentClause` ORs its alternatives
  (per type in `by_type` for `$everything`).
- Default order is insertion (pk), except for a date or `_lastUpdated` range that leads
  (search/implied_order.py: read in that range's order); `_sort` keys use min (ascending)
  or max (descending) of the row values, missing values last in both directions, pk breaks
  ties.

Planning (SQLite only): each type-level criterion is checked per candidate row by a
correlated probe on the index table's pk index; the access path is the most selective
positive clause, chosen by counting its index rows up to DRIVER_LIMIT, as `pk IN (...)`,
or, when none is selective, a scan in pk order (a page only needs its first matches). With
`patient=X`, date clauses can drive from the (owner, pid, low) index: one patient's rows
only, `ge`/`gt` bounded on `low` through the widest stored period of that parameter. A
one-clause `_summary=count` is counted on the index alone.

Every value is a bound parameter: nothing from a request is ever interpolated into SQL text.

Paging is keyset-based: the cursor holds the sort values and pk of the last row of the page,
so rows inserted or updated meanwhile neither shift nor repeat the pages.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from fhir_server.search.errors import SearchError, UnsupportedModifier
from fhir_server.search.fulltext import is_fulltext_clause
from fhir_server.search.id_lists import listed_ids
from fhir_server.search.implied_order import RANGE_PREFIXES, implied_order, is_range_clause
from fhir_server.search.query import (
    AnyOf,
    ChainClause,
    Clause,
    CompartmentClause,
    HasClause,
    SearchQuery,
)
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
from fhir_server.storage import sqlite_budget, sqlite_text
from fhir_server.storage.base import StoredResource
from fhir_server.storage.cursor import CursorError

if TYPE_CHECKING:
    import sqlite3

    from fhir_server.storage.sqlite import SqliteStorage

TABLE_BY_TYPE = {
    "token": "idx_token",
    "string": "idx_string",
    "date": "idx_date",
    "number": "idx_number",
    "quantity": "idx_quantity",
    "reference": "idx_reference",
    "uri": "idx_uri",
    "composite": "idx_composite",
}
# Parameters answered from the resources table itself rather than from index rows.
DIRECT_PARAMS = ("_id", "_lastUpdated")
STRING_MAX = "\U0010ffff"
# Frontier resources per `_revinclude` statement: each is one OR term, and SQLite refuses
# an expression of 1,000 terms (a `_revinclude:iterate` over a page of Observations).
REVERSE_CHUNK = 200


@dataclass
class SearchPage:
    matches: list[StoredResource]
    included: list[StoredResource] = field(default_factory=list)
    total: int | None = None
    next_cursor: str | None = None
    previous_cursor: str | None = None
    warnings: tuple[str, ...] = ()  # told to the client in the Bundle's outcome entry


class _Compiler:
    """Builds one SQL condition with its arguments; aliases are unique per query."""

    def __init__(
        self,
        storage: SqliteStorage,
        conn: sqlite3.Connection,
        expander: Any = None,
        canonical: Any = None,
    ) -> None:
        self.storage = storage
        self.conn = conn
        self.expander = expander
        self.canonical = canonical
        self._aliases = itertools.count()
        # The first sort key's code, when there is one: a `_lastUpdated` range is then read
        # in the sort's own (type, last_updated) order rather than gathered as a pk set.
        self.order_first: str | None = None
        self._date_spans: dict[int, tuple[float, bool] | None] = {}
        # What the request may see (SearchQuery.restriction): ANDed on every type read.
        self.restriction: Any = None

    def alias(self) -> str:
        return f"t{next(self._aliases)}"

    def date_span(self, pid: int) -> tuple[float, bool] | None:
        """storage.date_span, read once per search (the planner asks for each date clause
        and each candidate plan)."""
        if pid not in self._date_spans:
            self._date_spans[pid] = self.storage.date_span(self.conn, pid)
        return self._date_spans[pid]

    def pid(self, rtype: str, code: str) -> int:
        # An unknown pid means no resource ever had this parameter: -1 matches no row.
        pid = self.storage.pid(rtype, code)
        return -1 if pid is None else pid

    def pid_match(self, rtype: str, code: str, column: str = "pid") -> tuple[str, list[int]]:
        """`pid=?`, or `pid IN (...)` for a parameter that shares other parameters' rows
        (`combo-code` is answered by the rows of code, component-code and its own)."""
        codes = self.storage.pid_codes(rtype, code)
        if len(codes) == 1:
            return f"{column}=?", [self.pid(rtype, code)]
        pids = [self.pid(rtype, c) for c in codes]
        return f"{column} IN ({','.join('?' * len(pids))})", pids

    # -- criteria --------------------------------------------------------------------------

    def criterion(self, crit: Any, rtype: str, alias: str) -> tuple[str, list[Any]]:
        if isinstance(crit, Clause):
            return self.clause(crit, rtype, alias)
        if isinstance(crit, ChainClause):
            return self.chain(crit, rtype, alias)
        if isinstance(crit, HasClause):
            return self.has(crit, rtype, alias)
        if isinstance(crit, AnyOf):
            return self.any_of(crit, rtype, alias)
        if isinstance(crit, CompartmentClause):
            ors, args = [], []
            alternatives = crit.alternatives
            if crit.by_type is not None:
                alternatives = crit.by_type.get(rtype, ())
            if crit.everyone(rtype):
                ors.append("1")
            elif not alternatives:
                return "0", []
            # Any compartment of the type (a Patient-level export of everyone, the type-level
            # `Patient/$everything`): nearly every row refers to one, so each row's own index
            # entries are probed. As `pk IN (...)`, every reference of the type was read
            # again for each page (an export of 160,000 Observations: 2,000 resources/s).
            probe = crit.compartment_id is None
            for alternative in alternatives:
                sql, alt_args = self.clause(alternative, rtype, alias, probe=probe)
                ors.append(sql)
                args += alt_args
            ands = ["(" + " OR ".join(ors) + ")"]
            for clause in crit.extra(rtype):
                sql, clause_args = self.clause(clause, rtype, alias)
                ands.append(sql)
                args += clause_args
            return "(" + " AND ".join(ands) + ")", args
        raise SearchError(f"unsupported search criterion {crit!r}")

    def any_of(self, crit: AnyOf, rtype: str, alias: str) -> tuple[str, list[Any]]:
        ors, args = [], []
        for alternative in crit.alternatives:
            ands = []
            for part in alternative:
                sql, part_args = self.criterion(part, rtype, alias)
                ands.append(sql)
                args += part_args
            ors.append("(" + (" AND ".join(ands) or "1") + ")")
        return "(" + (" OR ".join(ors) or "0") + ")", args

    def visible(self, rtype: str, alias: str) -> tuple[str, list[Any]]:
        """` AND (what the request may see of rtype)`, or nothing when it sees all."""
        criterion = self.restriction.criterion(rtype) if self.restriction is not None else None
        if criterion is None:
            return "", []
        sql, args = self.criterion(criterion, rtype, alias)
        return f" AND {sql}", args

    def chain(self, crit: ChainClause, rtype: str, alias: str) -> tuple[str, list[Any]]:
        ors, args = [], []
        x, t = self.alias(), self.alias()
        for target in crit.target_types:
            inner_sql, inner_args = self.criterion(crit.inner, target, t)
            visible_sql, visible_args = self.visible(target, t)
            ors.append(f"({t}.type=? AND {inner_sql}{visible_sql})")
            args += [target, *inner_args, *visible_args]
        if not ors:
            return "0", []
        sql = (
            f"{alias}.pk IN (SELECT {x}.pk FROM idx_reference {x} JOIN resources {t} "
            f"ON {t}.type={x}.ttype AND {t}.id={x}.tid "
            f"WHERE {x}.pid=? AND {t}.deleted=0 AND ({' OR '.join(ors)}))"
        )
        return sql, [self.pid(rtype, crit.param.code), *args]

    def has(self, crit: HasClause, rtype: str, alias: str) -> tuple[str, list[Any]]:
        x, s = self.alias(), self.alias()
        inner_sql, inner_args = self.criterion(crit.inner, crit.resource_type, s)
        visible_sql, visible_args = self.visible(crit.resource_type, s)
        sql = (
            f"{alias}.id IN (SELECT {x}.tid FROM idx_reference {x} JOIN resources {s} "
            f"ON {s}.pk={x}.pk WHERE {x}.pid=? AND {x}.ttype=? AND {s}.deleted=0 "
            f"AND {inner_sql}{visible_sql})"
        )
        pid = self.pid(crit.resource_type, crit.ref_param.code)
        return sql, [pid, rtype, *inner_args, *visible_args]

    def clause(
        self, clause: Clause, rtype: str, alias: str, probe: bool = False
    ) -> tuple[str, list[Any]]:
        """`alias.pk IN (rows of the index)`, or with `probe` a correlated EXISTS that looks
        up the row's own index entries (cheap per row, never materialises a large set)."""
        param = clause.param
        if is_fulltext_clause(clause):
            return sqlite_text.condition(clause, alias)
        if param.code in DIRECT_PARAMS:
            # A range on the row's own column lets SQLite choose (type, last_updated) for
            # the whole query: right when that is the sort, a full sort of the range when
            # the order is by pk (a `_lastUpdated` driver, if small, is chosen apart).
            return self.direct(clause, alias, indexable=self.order_first == "_lastUpdated")
        table = TABLE_BY_TYPE.get(param.type)
        if table is None:
            raise SearchError(f"parameter {param.code!r} of type {param.type} is not searchable")
        if clause.modifier == "missing":
            missing = any(isinstance(v, MissingValue) and v.missing for v in clause.values)
            body, args = "", []
        else:
            missing = clause.modifier in ("not", "not-in")
            body, args = self.clause_body(clause)
        if probe:
            op = "NOT EXISTS" if missing else "EXISTS"
            # Looked up by pk (idx_*_pk), named: without statistics SQLite may otherwise
            # walk another index for every row (the (pid, value) one, or for a reference
            # the (ttype, tid) one: all of a patient's rows per probe), which is quadratic.
            pid_sql, pids = self.pid_match(rtype, param.code, "+pid")
            sql = (
                f"{op} (SELECT 1 FROM {table} INDEXED BY {table}_pk "
                f"WHERE pk={alias}.pk AND {pid_sql}{body})"
            )
            return sql, [*pids, *args]
        op = "NOT IN" if missing else "IN"
        pid_sql, pids = self.pid_match(rtype, param.code)
        return f"{alias}.pk {op} (SELECT pk FROM {table} WHERE {pid_sql}{body})", [*pids, *args]

    def clause_body(self, clause: Clause) -> tuple[str, list[Any]]:
        """` AND (value OR value ...)` on one index row, for a clause without :missing."""
        ors, args = [], []
        for value in clause.values:
            sql, value_args = self.value(clause.param.type, clause.modifier, value)
            ors.append(sql)
            args += value_args
        # Several codes or targets: SQLite does not turn an OR of (code AND system) or
        # (tid AND ttype) pairs into lookups of the (pid, code) or (pid, tid) index, and reads
        # every row of the parameter (a conditional create of 100 identifiers read all of a
        # CGM's readings; a Group export's batch of 200 patients among 10,000, 0.2 s a
        # search); an IN list of the codes or targets beside the OR does.
        listed_column, listed = None, []
        if clause.param.type == "token" and clause.modifier in (None, "not"):
            listed_column = "code"
            listed = [v.code for v in clause.values if isinstance(v, TokenValue)]
        elif clause.param.type == "reference" and clause.modifier is None and all(
            isinstance(v, ReferenceValue)
            and v.url is None
            and v.identifier_value is None
            and v.identifier_system is None
            for v in clause.values
        ):
            listed_column = "tid"
            listed = [v.id for v in clause.values if isinstance(v, ReferenceValue)]
        if listed_column is None or len(ors) < 2 or len(listed) != len(ors) or None in listed:
            return f" AND ({' OR '.join(ors)})", args
        in_args = list(dict.fromkeys(listed))
        in_list = f" AND {listed_column} IN ({','.join('?' * len(in_args))})"
        return f"{in_list} AND ({' OR '.join(ors)})", [*in_args, *args]

    def direct(self, clause: Clause, alias: str, indexable: bool = False) -> tuple[str, list[Any]]:
        ors, args = [], []
        if clause.param.code == "_id":
            # One `id IN (...)` lookup of the (type, id) index: 10,000 ids (a cohort, a
            # Group's export) as ORed terms exceed SQLite's expression depth.
            ids = listed_ids(clause, self.storage.limits)
            if ids:
                ors.append(f"{alias}.id IN ({','.join('?' * len(ids))})")
                args += ids
        for value in clause.values:
            if isinstance(value, MissingValue):
                ors.append("0" if value.missing else "1")
            elif clause.param.code == "_id":
                continue  # listed above
            elif isinstance(value, DateValue):
                sql, date_args = (
                    last_updated_condition(value, f"{alias}.last_updated")
                    if indexable
                    else date_condition(
                        value, f"{alias}.last_updated", f"({alias}.last_updated+0.001)"
                    )
                )
                ors.append(sql)
                args += date_args
            else:
                raise SearchError(f"unsupported value for {clause.param.code}", clause.param.code)
        negate = clause.modifier == "not"
        body = " OR ".join(ors)
        return (f"NOT ({body})" if negate else f"({body})"), args

    # -- values ----------------------------------------------------------------------------

    def value(self, ptype: str, modifier: str | None, value: Any) -> tuple[str, list[Any]]:
        if ptype == "token":
            return self.token(modifier, value)
        if ptype == "string":
            return string_condition(modifier, value, "value", "exact")
        if ptype == "date":
            return date_condition(value, "low", "high")
        if ptype == "number":
            return number_condition(value, "value")
        if ptype == "quantity":
            return self.quantity(value, "value", "system", "code", "unit", "cvalue", "cunit")
        if ptype == "reference":
            return reference_condition(value)
        if ptype == "uri":
            return uri_condition(modifier, value)
        if ptype == "composite":
            return self.composite(value)
        raise SearchError(f"{ptype} search is not supported")

    def token(self, modifier: str | None, value: Any) -> tuple[str, list[Any]]:
        if modifier == "text":
            return string_condition("contains", value, "text", "text")
        if modifier in ("in", "not-in", "below", "above"):
            return self.expanded_token(modifier, value)
        if isinstance(value, OfTypeValue):
            raise UnsupportedModifier(":of-type is not supported by this server", "identifier")
        return token_condition(value, "system", "code")

    def expanded_token(self, modifier: str, value: Any) -> tuple[str, list[Any]]:
        if self.expander is None:
            raise UnsupportedModifier(
                f"token :{modifier} needs the terminology service, which is not configured"
            )
        if modifier in ("in", "not-in"):
            pairs = sorted(self.expander.value_set_codes(value.value))
        elif modifier == "below":
            pairs = [
                (value.system, c)
                for c in sorted(self.expander.descendants(value.system, value.code))
            ]
        else:
            pairs = [
                (value.system, c) for c in sorted(self.expander.ancestors(value.system, value.code))
            ]
        if not pairs:
            return "0", []
        ors, args = [], []
        for system, codes in itertools.groupby(pairs, key=lambda p: p[0]):
            code_list = [c for _, c in codes]
            ors.append(f"(system=? AND code IN ({','.join('?' * len(code_list))}))")
            args += [system, *code_list]
        return "(" + " OR ".join(ors) + ")", args

    def quantity(
        self, value: QuantityValue, v: str, system: str, code: str, unit: str, cv: str, cu: str
    ) -> tuple[str, list[Any]]:
        raw_sql, raw_args = _raw_quantity_condition(value, v, system, code, unit)
        if value.code and self.canonical is not None:
            converted = self.canonical(value, value.system, value.code)
            if converted is not None:
                # Any unit of the same dimension, through the canonical form; and rows that
                # have none (no UCUM code stored, only a unit text) on their own value and unit.
                canonical_value, canonical_unit = converted
                sql, args = number_condition(canonical_value, cv)
                return (
                    f"(({cu}=? AND {sql}) OR ({cu} IS NULL AND {raw_sql}))",
                    [canonical_unit, *args, *raw_args],
                )
        return raw_sql, raw_args

    def composite(self, value: CompositeValue) -> tuple[str, list[Any]]:
        if len(value.parts) != 2 or not isinstance(value.parts[0], TokenValue):
            raise SearchError("only two-part composites starting with a token are supported")
        first, second = value.parts
        sql_a, args_a = token_condition(first, "a_system", "a_code")
        if isinstance(second, TokenValue):
            sql_b, args_b = token_condition(second, "b_system", "b_code")
        elif isinstance(second, QuantityValue):
            sql_b, args_b = self.quantity(
                second, "b_value", "b_system", "b_code", "b_code", "b_cvalue", "b_cunit"
            )
        elif isinstance(second, DateValue):
            sql_b, args_b = date_condition(second, "b_low", "b_high")
        elif isinstance(second, StringValue):
            sql_b, args_b = string_condition(None, second, "b_text", "b_text")
        elif isinstance(second, NumberValue):
            sql_b, args_b = number_condition(second, "b_value")
        else:
            raise SearchError("unsupported composite component")
        return f"({sql_a} AND {sql_b})", [*args_a, *args_b]


# -- value conditions (pure functions of a value and column names) -------------------------


def _raw_quantity_condition(
    value: QuantityValue, v: str, system: str, code: str, unit: str
) -> tuple[str, list[Any]]:
    """The value compared as stored, with the system and code (or unit text) as given."""
    sql, args = number_condition(value, v)
    conditions, extra = [sql], list(args)
    if value.system and value.code:
        conditions.append(f"{system}=? AND {code}=?")
        extra += [value.system, value.code]
    elif value.code:
        conditions.append(f"({code}=? OR {unit}=?)")
        extra += [value.code, value.code]
    elif value.system:
        conditions.append(f"{system}=?")
        extra.append(value.system)
    return "(" + " AND ".join(conditions) + ")", extra


def token_condition(value: TokenValue, system: str, code: str) -> tuple[str, list[Any]]:
    if value.code is None:
        if value.system is None:
            return "1", []
        return f"{system}=?", [value.system]
    if not value.system_given:
        return f"{code}=?", [value.code]
    if value.system is None:
        return f"({code}=? AND {system} IS NULL)", [value.code]
    return f"({code}=? AND {system}=?)", [value.code, value.system]


def string_condition(
    modifier: str | None, value: StringValue, column: str, exact_column: str
) -> tuple[str, list[Any]]:
    if modifier == "exact":
        return f"{exact_column}=?", [value.value]
    if modifier in ("contains", "text"):
        escaped = value.normalised.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return f"{column} LIKE ? ESCAPE '\\'", [f"%{escaped}%"]
    # Default string search: starts with, on the normalised form (index range scan).
    return f"({column}>=? AND {column}<?)", [value.normalised, value.normalised + STRING_MAX]


def date_condition(value: DateValue, low: str, high: str) -> tuple[str, list[Any]]:
    lo, hi = value.low, value.high
    prefix = value.prefix
    if prefix == "eq":
        return f"({low}>=? AND {high}<=?)", [lo, hi]
    if prefix == "ne":
        return f"NOT ({low}>=? AND {high}<=?)", [lo, hi]
    if prefix == "gt":
        return f"{high}>?", [hi]
    if prefix == "lt":
        return f"{low}<?", [lo]
    if prefix == "ge":
        return f"{high}>?", [lo]
    if prefix == "le":
        return f"{low}<?", [hi]
    if prefix == "sa":
        return f"{low}>=?", [hi]
    if prefix == "eb":
        return f"{high}<=?", [lo]
    if prefix == "ap":
        approx_low, approx_high = value.approximate_bounds(time.time())
        return f"({low}<? AND {high}>?)", [approx_high, approx_low]
    raise SearchError(f"unknown prefix {prefix!r}")


def last_updated_condition(value: DateValue, column: str) -> tuple[str, list[Any]]:
    """`_lastUpdated` as a date period: an instant stored to the millisecond spans
    [column, column + 1 ms). Where the period's end is compared, the column's own bound
    (implied by it, 2 ms looser so that rounding cannot drop a row) is ANDed in, so that
    the (type, last_updated) index serves the range: `column + 0.001 > X` alone is an
    expression no index can read."""
    high = f"({column}+0.001)"
    sql, args = date_condition(value, column, high)
    prefix = value.prefix
    if prefix in ("gt", "ge", "ap"):
        floor = args[-1] - 0.002
        return f"({column}>? AND {sql})", [floor, *args]
    if prefix in ("eq", "eb"):
        ceiling = args[-1]  # the bound `high <= ?` compares with
        return f"({column}<=? AND {sql})", [ceiling, *args]
    return sql, args


def number_condition(value: Any, column: str) -> tuple[str, list[Any]]:
    """Number and quantity comparisons (`value` a NumberValue or QuantityValue or Decimal)."""
    if isinstance(value, Decimal | float | int):
        exact = float(value)
        return f"({column}>=? AND {column}<=?)", [exact * (1 - 1e-9), exact * (1 + 1e-9)]
    prefix = value.prefix
    v, lo, hi = float(value.value), float(value.low), float(value.high)
    if prefix == "eq":
        return f"({column}>=? AND {column}<?)", [lo, hi]
    if prefix == "ne":
        return f"NOT ({column}>=? AND {column}<?)", [lo, hi]
    if prefix in ("gt", "sa"):
        return f"{column}>?", [v]
    if prefix in ("lt", "eb"):
        return f"{column}<?", [v]
    if prefix == "ge":
        return f"{column}>=?", [v]
    if prefix == "le":
        return f"{column}<=?", [v]
    if prefix == "ap":
        margin = abs(v) * 0.1
        return f"({column}>=? AND {column}<=?)", [v - margin, v + margin]
    raise SearchError(f"unknown prefix {prefix!r}")


def reference_condition(value: ReferenceValue) -> tuple[str, list[Any]]:
    if value.identifier_value is not None or value.identifier_system is not None:
        conditions, args = [], []
        if value.identifier_value is not None:
            conditions.append("ivalue=?")
            args.append(value.identifier_value)
        if value.identifier_system is not None:
            conditions.append("isystem=?")
            args.append(value.identifier_system)
        return "(" + " AND ".join(conditions) + ")", args
    if value.url is not None:
        return "url=?", [value.url]
    if value.type is not None and value.id is None:  # any resource of the type
        return "ttype=?", [value.type]
    if value.type is not None:
        return "(tid=? AND ttype=?)", [value.id, value.type]
    return "tid=?", [value.id]


def uri_condition(modifier: str | None, value: UriValue) -> tuple[str, list[Any]]:
    if modifier == "below":
        return "(value>=? AND value<?)", [value.value, value.value + STRING_MAX]
    if modifier == "above":
        return "(substr(?, 1, length(value))=value)", [value.value]
    return "value=?", [value.value]


# -- sorting ---------------------------------------------------------------------------------

SORT_COLUMNS = {
    "token": ("idx_token", "code", "code"),
    "string": ("idx_string", "value", "value"),
    "date": ("idx_date", "low", "high"),
    "number": ("idx_number", "value", "value"),
    "quantity": ("idx_quantity", "value", "value"),
    "reference": ("idx_reference", "tid", "tid"),
    "uri": ("idx_uri", "value", "value"),
}


def sort_expression(compiler: _Compiler, key: SortKey, rtype: str, alias: str) -> tuple[str, list]:
    """An SQL expression per row; missing values sort last in both directions."""
    if key.code == "_id":
        return f"{alias}.id", []
    if key.code == "_lastUpdated":
        return f"{alias}.last_updated", []
    assert key.param is not None
    table, asc_col, desc_col = SORT_COLUMNS.get(key.param.type, (None, None, None))
    if table is None:
        raise SearchError(f"cannot sort on {key.param.type} parameter {key.code!r}", "_sort")
    column, agg = (desc_col, "max") if key.descending else (asc_col, "min")
    if rtype != "Resource":
        pid_sql, pids = compiler.pid_match(rtype, key.code, "+pid")
        return f"(SELECT {agg}({column}) FROM {table} WHERE pk={alias}.pk AND {pid_sql})", pids
    # System-level search: the parameter's pid differs per type; any of them will do.
    pid_codes = compiler.storage.pid_codes
    pids = [
        pid for (t, code), pid in compiler.storage._pids.items() if code in pid_codes(t, key.code)
    ] or [-1]
    marks = ",".join("?" * len(pids))
    sql = f"(SELECT {agg}({column}) FROM {table} WHERE pk={alias}.pk AND +pid IN ({marks}))"
    return sql, pids


# The (type, column) index that gives a type's resources in the order of a sort key.
SORT_INDEXES = {
    "_lastUpdated": "resources_type_updated",
    "_id": "sqlite_autoindex_resources_1",  # UNIQUE (type, id)
}
# Sort expressions that are never NULL: no "missing values last" terms, which would keep
# SQLite from reading their order off an index.
NEVER_NULL = frozenset({"r.last_updated", "r.id", "r.pk"})


def _keyset_condition(
    exprs: list[tuple[str, list, bool]], values: list[Any], last_pk: int, reverse: bool
) -> tuple[str, list[Any]]:
    """Rows strictly after (or before, when paging back) the position (values, pk)."""
    ors, args = [], []
    prefix_sql, prefix_args = [], []
    keys = [*exprs, ("r.pk", [], False)]
    positions = [*values, last_pk]
    for (expr, expr_args, descending), position in zip(keys, positions, strict=True):
        if position is not None and expr in NEVER_NULL:
            op = ">" if descending == reverse else "<"
            cmp_sql, cmp_args = f"({expr} {op} ?)", [*expr_args, position]
            eq_sql, eq_args = f"{expr} = ?", [*expr_args, position]
        elif position is None:
            # Missing values sort last: after one, only other missing ones can follow.
            cmp_sql, cmp_args = (f"{expr} IS NOT NULL", list(expr_args)) if reverse else ("0", [])
            eq_sql, eq_args = f"{expr} IS NULL", list(expr_args)
        else:
            # Forward on an ascending key (or backward on a descending one) wants larger values.
            op = ">" if descending == reverse else "<"
            if reverse:
                cmp_sql, cmp_args = f"({expr} {op} ?)", [*expr_args, position]
            else:
                cmp_sql = f"({expr} {op} ? OR {expr} IS NULL)"
                cmp_args = [*expr_args, position, *expr_args]
            eq_sql, eq_args = f"{expr} = ?", [*expr_args, position]
        ors.append("(" + " AND ".join([*prefix_sql, cmp_sql]) + ")")
        args += [*prefix_args, *cmp_args]
        prefix_sql.append(eq_sql)
        prefix_args += eq_args
    condition = "(" + " OR ".join(ors) + ")"
    first_expr, first_args, first_descending = keys[0]
    if positions[0] is not None and first_expr in NEVER_NULL and first_expr != "r.pk":
        # Implied by the ORs, but an index on the first key can only read a range from
        # a bound of its own.
        op = ">=" if first_descending == reverse else "<="
        condition = f"({first_expr} {op} ? AND {condition})"
        args = [*first_args, positions[0], *args]
    return condition, args


# -- running a search ------------------------------------------------------------------------


def _where(
    compiler: _Compiler,
    query: SearchQuery,
    alias: str = "r",
    driver: tuple[str, list[Any]] | None = None,
) -> tuple[str, list[Any]]:
    """The WHERE condition of a search. Index rows are keyed by (type, parameter) pids, so
    a system-level search compiles its criteria once per searched type and ORs them.
    `driver`: the access path of a type-level search, instead of the planner's choice."""
    conditions, args = [f"{alias}.deleted=0"], []
    if query.resource_type is not None:
        sql, crit_args = _type_criteria(
            compiler, query.resource_type, query.clauses, alias, driver
        )
        conditions.append(_type_condition(alias, sql))
        args.append(query.resource_type)
        if sql:
            conditions.append(sql)
            args += crit_args
        return " AND ".join(conditions), args
    types = list(query.resource_types)
    if not query.clauses and query.restriction is None:
        if types:
            conditions.append(f"{alias}.type IN ({','.join('?' * len(types))})")
            args += types
        return " AND ".join(conditions), args
    if not types:
        # Every type that was ever indexed (a type without index rows cannot match a filter).
        types = sorted({rtype for rtype, _ in compiler.storage._pids})
    per_type = []
    for rtype in types:
        clauses = query.clauses
        visible = query.restriction.criterion(rtype) if query.restriction is not None else None
        if visible is not None:
            clauses = (visible, *clauses)
        sql, part_args = _type_criteria(compiler, rtype, clauses, alias)
        per_type.append(f"({_type_condition(alias, sql)}{f' AND {sql}' if sql else ''})")
        args += [rtype, *part_args]
    conditions.append("(" + " OR ".join(per_type or ["0"]) + ")")
    return " AND ".join(conditions), args


def _type_condition(alias: str, criteria: str) -> str:
    """`type=?`, kept away from the (type, last_updated) index when a driving pk set leads:
    otherwise SQLite may walk every resource of the type and probe the set for each."""
    driven = criteria.startswith(f"{alias}.pk IN (")
    return f"+{alias}.type=?" if driven else f"{alias}.type=?"


# A driving index set larger than this is not worth materialising: scanning resources in
# pk order and probing each one's index rows finds a page sooner.
DRIVER_LIMIT = 20000
# A driving set this small is taken as soon as it is counted: checking its rows costs less
# than counting the other candidates (each count ~0.1 ms; a patient's day of CGM readings,
# query (a), is 288 rows).
SMALL_DRIVER = 1000
BROAD_DRIVER_FACTOR = 10  # failing that, a driving set of up to 200,000 rows


def _type_criteria(
    compiler: _Compiler,
    rtype: str,
    clauses: Sequence[Any],
    alias: str,
    driver: tuple[str, list[Any]] | None = None,
) -> tuple[str, list[Any]]:
    """ANDed criteria on one type, planned: the most selective positive clause (estimated by
    counting its index rows up to DRIVER_LIMIT) becomes `pk IN (...)`, the access path;
    every clause is also checked per row by a correlated probe. Without a selective clause,
    rows are scanned in pk order and probed (a page needs only its first matches)."""
    if not clauses and driver is None:
        return "", []
    parts, args = [], []
    for crit in clauses:
        if isinstance(crit, Clause):
            sql, crit_args = compiler.clause(crit, rtype, alias, probe=True)
        else:
            sql, crit_args = compiler.criterion(crit, rtype, alias)
        parts.append(sql)
        args += crit_args
    if driver is None:
        driver = _choose_driver(compiler, rtype, clauses)
    if driver is not None:
        parts.insert(0, f"{alias}.pk IN ({driver[0]})")
        args = [*driver[1], *args]
    return " AND ".join(parts), args


def _choose_driver(
    compiler: _Compiler, rtype: str, clauses: Sequence[Any]
) -> tuple[str, list[Any]] | None:
    if any(isinstance(c, Clause) and c.param.code == "_id" and c.modifier is None for c in clauses):
        return None  # the unique (type, id) index is the access path
    candidates = [
        _driver_sql(compiler, rtype, c)
        for c in clauses
        if isinstance(c, Clause)
        and c.param.code not in DIRECT_PARAMS
        and c.modifier not in ("missing", "not", "not-in")
        and c.param.type in TABLE_BY_TYPE
    ]
    # Likely-small sets first: once one is small, the others are counted only that far.
    candidates = (
        _owner_date_drivers(compiler, rtype, clauses)
        + sqlite_text.drivers(clauses)
        + candidates
        + _last_updated_drivers(compiler, rtype, clauses)
    )
    best = _smallest(compiler.conn, candidates, DRIVER_LIMIT, SMALL_DRIVER)
    if best is None:
        # Broader sets (one CGM patient's 27,000 readings, 3 % of the values below 54)
        # still lead when not too large: a scan in pk order finds a page quickly only if
        # the matches are spread out, and a patient's data arrives together, so the scan
        # may probe almost the whole type first (seconds at a million resources). Reading
        # a set of up to 200,000 pks is bounded; that scan is not.
        best = _smallest(compiler.conn, candidates, DRIVER_LIMIT * BROAD_DRIVER_FACTOR)
    return best


def _smallest(
    conn: sqlite3.Connection,
    candidates: list[tuple[str, list[Any]]],
    limit: int,
    small: int = 0,
) -> tuple[str, list[Any]] | None:
    """The candidate with the fewest rows below `limit` (each counted only that far); the
    first one of at most `small` rows, without counting the others."""
    best, best_count = None, limit
    for sql, args in candidates:
        count = conn.execute(f"SELECT count(*) FROM ({sql} LIMIT ?)", [*args, best_count])
        found = count.fetchone()[0]
        if found < best_count:
            best, best_count = (sql, args), found
            if found <= small:
                break
    return best


def fast_count(compiler: _Compiler, query: SearchQuery) -> int | None:
    """The number of matches of a type-level search with one positive clause, counted on
    the index alone: index rows exist only for current, non-deleted resources of the
    parameter's own type, so no join is needed (DISTINCT: one resource may match twice)."""
    if query.resource_type is None or len(query.clauses) != 1 or query.restriction is not None:
        return None
    clause = query.clauses[0]
    if (
        not isinstance(clause, Clause)
        or clause.param.code in DIRECT_PARAMS
        or clause.modifier in ("missing", "not", "not-in")
        or clause.param.type not in TABLE_BY_TYPE
    ):
        return None
    sql, args = _driver_sql(compiler, query.resource_type, clause)
    distinct = sql.replace("SELECT pk", "SELECT DISTINCT pk", 1)
    return compiler.conn.execute(f"SELECT count(*) FROM ({distinct})", args).fetchone()[0]


def _driver_sql(compiler: _Compiler, rtype: str, clause: Clause) -> tuple[str, list[Any]]:
    table = TABLE_BY_TYPE[clause.param.type]
    body, args = compiler.clause_body(clause)
    pid = compiler.pid(rtype, clause.param.code)
    if clause.param.type == "date":
        # `high > X` alone cannot use the (pid, low) index: bound low too (see _low_floor).
        span_info = compiler.date_span(pid)
        floors = [_low_floor(v, span_info[0]) if span_info else None for v in clause.values]
        if floors and all(f is not None for f in floors):
            body += " AND low>?"
            args = [*args, min(f for f in floors if f is not None)]
        return f"SELECT pk FROM {table} WHERE pid=?{body}", [pid, *args]
    pid_sql, pids = compiler.pid_match(rtype, clause.param.code)
    return f"SELECT pk FROM {table} WHERE {pid_sql}{body}", [*pids, *args]


def _last_updated_drivers(
    compiler: _Compiler, rtype: str, clauses: Sequence[Any]
) -> list[tuple[str, list[Any]]]:
    """A `_lastUpdated` range read from the (type, last_updated) index. Without it, a
    poll for what changed since the last one (`_lastUpdated=gt<then>`, often nothing) scans
    every resource of the type in pk order: 2 s at 10 M. Not when the search is sorted by
    `_lastUpdated`: the same index then gives the range in order."""
    if compiler.order_first == "_lastUpdated":
        return []
    drivers = []
    for clause in clauses:
        if (
            isinstance(clause, Clause)
            and clause.param.code == "_lastUpdated"
            and clause.modifier is None
            and all(isinstance(v, DateValue) and v.prefix != "ne" for v in clause.values)
        ):
            sql, args = compiler.direct(clause, "resources", indexable=True)
            drivers.append(
                (f"SELECT pk FROM resources WHERE type=? AND deleted=0 AND {sql}", [rtype, *args])
            )
    return drivers


def _owner_date_drivers(
    compiler: _Compiler, rtype: str, clauses: Sequence[Any]
) -> list[tuple[str, list[Any]]]:
    """With `patient=X` in the query, date clauses run on the (owner, pid, low) index: one
    patient's rows only. `ge`/`gt`/`eq`/`sa` bound `low` from below through the widest
    stored period, and all date clauses on one parameter are combined into one range
    (`ge X & lt Y`) when no resource ever had several values for it."""
    owner = _owner_id(compiler, rtype, clauses)
    if owner is None:
        return []
    by_param: dict[str, list[Clause]] = {}
    for c in clauses:
        if (
            isinstance(c, Clause)
            and c.param.type == "date"
            and c.modifier is None
            and c.param.code not in DIRECT_PARAMS
            and all(isinstance(v, DateValue) and v.prefix in RANGE_PREFIXES for v in c.values)
        ):
            by_param.setdefault(c.param.code, []).append(c)
    drivers = []
    for code, date_clauses in by_param.items():
        pid = compiler.pid(rtype, code)
        span_info = compiler.date_span(pid)
        if span_info is None:
            continue
        span, multi = span_info
        groups = [[c] for c in date_clauses] if multi else [date_clauses]
        for group in groups:
            conditions, args = [], []
            for c in group:
                ors = []
                for value in c.values:
                    sql, value_args = date_condition(value, "low", "high")
                    floor = _low_floor(value, span)
                    if floor is not None:
                        sql = f"({sql} AND low>?)"
                        value_args = [*value_args, floor]
                    ors.append(sql)
                    args += value_args
                conditions.append("(" + " OR ".join(ors) + ")")
            drivers.append(
                (
                    "SELECT pk FROM idx_date WHERE owner=? AND pid=? AND "
                    + " AND ".join(conditions),
                    [owner, pid, *args],
                )
            )
    return drivers


def _low_floor(value: DateValue, span: float) -> float | None:
    """A lower bound on `low` implied by the prefix (high > h means low > h - span)."""
    if value.prefix == "gt":
        return value.high - span - 1e-6
    if value.prefix == "ge":
        return value.low - span - 1e-6
    return None


def _owner_id(compiler: _Compiler, rtype: str, clauses: Sequence[Any]) -> str | None:
    """The id of a plain `patient=X` (or `patient=Patient/X`) clause, if any: date rows carry
    the target id of their resource's `patient` reference as `owner`. Where `patient` is
    the resource's `subject` restricted to patients (Observation, Condition, ...; see
    `SearchParamRegistry.owner_codes`), `subject=Patient/X` names the same owner."""
    found = _owner_clause(compiler, rtype, clauses)
    return found[1] if found is not None else None


def _owner_clause(
    compiler: _Compiler, rtype: str, clauses: Sequence[Any]
) -> tuple[str, str] | None:
    """(parameter code, patient id) of the clause `_owner_id` reads."""
    codes = compiler.storage.owner_codes(rtype)
    for c in clauses:
        if (
            isinstance(c, Clause)
            and c.param.code in codes
            and c.param.type == "reference"
            and c.modifier in (None, "Patient")
            and len(c.values) == 1
        ):
            value = c.values[0]
            typed = value.type if isinstance(value, ReferenceValue) else None
            if c.modifier == "Patient":
                typed = "Patient"
            if (
                isinstance(value, ReferenceValue)
                and value.id
                and value.url is None
                and value.identifier_value is None
                and value.identifier_system is None
                # `subject=X` alone may be a Group or a Device: only a patient is an owner
                and (typed == "Patient" or (typed is None and c.param.code == "patient"))
            ):
                return c.param.code, value.id
    return None


def matching_ids(
    storage: SqliteStorage, conn: sqlite3.Connection, query: SearchQuery, limit: int
) -> list[str]:
    compiler = _Compiler(storage, conn, storage.expander, storage.canonical_query)
    compiler.restriction = query.restriction
    where, args = _where(compiler, query)
    rows = conn.execute(f"SELECT r.id FROM resources r WHERE {where} LIMIT ?", [*args, limit])
    return [row[0] for row in rows]


def run_search(
    storage: SqliteStorage,
    conn: sqlite3.Connection,
    query: SearchQuery,
    count: int,
    cursor: str | None,
    bodies: bool = True,
) -> SearchPage:
    compiler = _Compiler(storage, conn, storage.expander, storage.canonical_query)
    compiler.restriction = query.restriction
    result = query.result
    keys = result.sort or implied_order(query)
    compiler.order_first = keys[0].code if keys else None
    rtype = query.resource_type or "Resource"
    sort = [(*sort_expression(compiler, key, rtype, "r"), key.descending) for key in keys]
    total = None
    notes: tuple[str, ...] = ()
    planned: tuple[str, list[Any]] | None = None

    def planned_where() -> tuple[str, list[Any]]:
        nonlocal planned
        if planned is None:
            planned = _where(compiler, query)
        return planned

    def count_all() -> int:
        fast = fast_count(compiler, query)
        if fast is not None:
            return fast
        where, args = planned_where()
        return conn.execute(f"SELECT count(*) FROM resources r WHERE {where}", args).fetchone()[0]

    if result.summary == "count" or count == 0:  # the count is the answer: the whole budget
        return SearchPage([], total=count_all())
    if result.total == "accurate":  # beside a page: counted for a bounded time, or not at all
        seconds = storage.limits.total_count_seconds
        total = sqlite_budget.within(seconds, "total_count_seconds", count_all)
        if total is None:
            notes = (storage.limits.total_not_counted(),)
    # Index-ordered windows before planning the general query, whose count probes cost more.
    rows = _date_window_rows(compiler, query, keys, sort, count, cursor) if sort else None
    after = _forward_pk(storage, cursor) if not sort else None
    if rows is None and after is not None:
        rows = _owner_pk_window_rows(compiler, query, count, after)
    if rows is not None:
        page = _page(storage, conn, compiler, query, rows, count, cursor, False, total, bodies)
        return dataclasses.replace(page, warnings=notes + page.warnings) if notes else page
    where, args = planned_where()

    reverse = False
    page_where, page_args = where, list(args)
    if cursor:
        try:
            state = storage.cursors.decode(cursor)
            direction, values, last_pk = state["d"], state["v"], int(state["pk"])
            if direction not in ("n", "p") or len(values) != len(sort):
                raise ValueError
        except (CursorError, KeyError, TypeError, ValueError):
            raise CursorError("The paging cursor is invalid or belongs to another search") from None
        reverse = direction == "p"
        cond, cond_args = _keyset_condition(sort, values, last_pk, reverse)
        page_where += f" AND {cond}"
        page_args += cond_args

    select_args = [a for _, expr_args, _ in sort for a in expr_args]
    order = []
    for i, (expr, _, descending) in enumerate(sort):
        # Missing values sort last in reading order (so first when reading backwards).
        desc = descending != reverse
        missing = "" if expr in NEVER_NULL else f"s{i} IS NULL {'DESC' if reverse else 'ASC'}, "
        order.append(f"{missing}s{i} {'DESC' if desc else 'ASC'}")
    order.append(f"r.pk {'DESC' if reverse else 'ASC'}")
    columns = "".join(f", {expr} AS s{i}" for i, (expr, _, _) in enumerate(sort))
    # Sorted by `_lastUpdated` or `_id` with no driving pk set: read the type's index on
    # that column in order. Left to itself, SQLite may sort the whole type instead (ties go
    # by ascending pk, so a descending index order is only partly the sort's): 3.6-4.6 s at
    # 10 M.
    sort_index = SORT_INDEXES.get(compiler.order_first or "")
    hint = (
        f" INDEXED BY {sort_index}"
        if sort_index and query.resource_type is not None and "+r.type=?" not in where
        else ""
    )
    sql = (
        f"SELECT r.pk{columns} FROM resources r{hint} WHERE {page_where} "
        f"ORDER BY {', '.join(order)} LIMIT ?"
    )
    rows = conn.execute(sql, [*select_args, *page_args, count + 1]).fetchall()
    page = _page(storage, conn, compiler, query, rows, count, cursor, reverse, total, bodies)
    return dataclasses.replace(page, warnings=notes + page.warnings) if notes else page


def _forward_pk(storage: SqliteStorage, cursor: str | None) -> int | None:
    """The pk after which a default-order page starts: 0 for the first page, the cursor's
    for a `next` page; None for a `previous` page or a cursor of another search."""
    if not cursor:
        return 0
    position = _forward_position(storage, cursor)
    return position[1] if position is not None and not position[0] else None


def _forward_position(storage: SqliteStorage, cursor: str) -> tuple[list, int] | None:
    """(sort values, pk) of a `next` cursor; None for a `previous` one or a bad one (the
    general plan reports it)."""
    try:
        state = storage.cursors.decode(cursor)
        if state["d"] == "n" and isinstance(state["v"], list):
            return state["v"], int(state["pk"])
    except (CursorError, KeyError, TypeError, ValueError):
        pass
    return None


def _page(
    storage: SqliteStorage,
    conn: sqlite3.Connection,
    compiler: _Compiler,
    query: SearchQuery,
    rows: list,
    count: int,
    cursor: str | None,
    reverse: bool,
    total: int | None,
    bodies: bool = True,
) -> SearchPage:
    """The page of `rows` (up to count + 1, in reading order unless `reverse`)."""
    has_more = len(rows) > count
    rows = rows[:count]
    if reverse:
        rows.reverse()
    matches = storage.read_many([row[0] for row in rows], bodies)

    def position(row: tuple, direction: str) -> str:
        return storage.cursors.encode({"d": direction, "v": list(row[1:]), "pk": row[0]})

    next_cursor = previous_cursor = None
    if rows:
        if (has_more and not reverse) or (reverse and cursor):
            next_cursor = position(rows[-1], "n")
        if (cursor and not reverse) or (reverse and has_more):
            previous_cursor = position(rows[0], "p")
    if total is None and not cursor and not has_more:
        total = len(matches)
    included, warnings = _includes(storage, conn, compiler, query, matches)
    return SearchPage(matches, included, total, next_cursor, previous_cursor, warnings)


# Candidate windows tried, in index rows per page row, before the general plan.
OWNER_WINDOWS = (4, 64)


def _date_window_rows(
    compiler: _Compiler,
    query: SearchQuery,
    keys: Sequence[SortKey],
    sort: list,
    count: int,
    cursor: str | None,
) -> list | None:
    """A page of `[patient=X&]_sort=[-]date` without sorting all of X's resources (a CGM
    patient has 100,000 readings a year), or all of the type's (`_sort=-date`, the latest
    readings of everyone: 42 s at 10 M), or None for the general plan.

    Date rows are indexed by (pid, low) and, with their patient (`owner`), by (owner, pid,
    low). Sorting descending on max(high): take L, the k-th largest `low` of the rows, and
    the window of rows with low >= L - span (span: the widest period ever stored for the
    parameter). A resource outside the window has every high below L, so when the window's
    page rows all reach L, they are the page. Ascending on min(low) likewise, with low <= L.
    After a `next` cursor at value v, only rows with low <= v (ascending: >= v) can follow,
    so L is taken among those. A window that proves nothing is widened once (not without a
    patient when other criteria may make matches rare in it), then the general plan runs.

    Range clauses on the sorted parameter itself (`date=ge2025-12-01&_sort=date`, or the
    implied order of `date=ge2025-12-01`) bound `low` in L's search and in the window when
    no resource has several values for it (see _date_range): L is then the k-th row of the
    range, and a range with fewer rows than that is read whole, exactly."""
    rtype = query.resource_type
    if rtype is None or len(keys) != 1 or count <= 0:
        return None
    key = keys[0]
    if key.param is None or key.param.type != "date" or key.code in DIRECT_PARAMS:
        return None
    owner = _owner_id(compiler, rtype, query.clauses)
    pid = compiler.storage.pid(rtype, key.code)
    if pid is None:
        return None
    owner_sql, owner_args = ("owner=? AND ", [owner]) if owner is not None else ("", [])
    span_info = compiler.date_span(pid)
    if span_info is None:
        return None
    span = span_info[0]
    folded, range_sql, range_args = _date_range(key.code, query.clauses, span_info)
    others = [c for c in query.clauses if c not in folded]
    windows = OWNER_WINDOWS[:1] if owner is None and others else OWNER_WINDOWS
    expr, expr_args, descending = sort[0]
    direction = "DESC" if descending else "ASC"
    after_sql, after_args, keyset, keyset_args = "", [], "", []
    if cursor:
        position = _forward_position(compiler.storage, cursor)
        if position is None or len(position[0]) != 1 or position[0][0] is None:
            return None  # backwards, or among resources without the date: general plan
        value, last_pk = position[0][0], position[1]
        after_sql, after_args = (" AND low<=?" if descending else " AND low>=?"), [value]
        keyset, keyset_args = _keyset_condition(sort, [value], last_pk, False)
        keyset = f" AND {keyset}"
    after_sql, after_args = after_sql + range_sql, [*after_args, *range_args]
    for factor in windows:
        wanted = (count + 1) * factor
        found = compiler.conn.execute(
            f"SELECT low FROM idx_date WHERE {owner_sql}pid=?{after_sql} "
            f"ORDER BY low {direction} LIMIT 1 OFFSET ?",
            (*owner_args, pid, *after_args, wanted - 1),
        ).fetchone()
        if found is None and not folded:
            return None  # fewer dated rows than that: the general plan is cheap enough
        if found is None:  # the whole range is fewer rows than that: read it all
            window = (
                f"SELECT pk FROM idx_date WHERE {owner_sql}pid=?{after_sql}",
                [*owner_args, pid, *after_args],
            )
        else:
            bound = found[0]
            low = "low>=?" if descending else "low<=?"
            window = (  # bounded by the cursor too: rows before it are no candidates
                f"SELECT pk FROM idx_date WHERE {owner_sql}pid=? AND {low}{after_sql}",
                [*owner_args, pid, bound - span if descending else bound, *after_args],
            )
        where, args = _where(compiler, query, "r", window)
        rows = compiler.conn.execute(
            f"SELECT r.pk, {expr} AS s0 FROM resources r WHERE {where}{keyset} "
            f"ORDER BY s0 IS NULL, s0 {direction}, r.pk ASC LIMIT ?",
            [*expr_args, *args, *keyset_args, count + 1],
        ).fetchall()
        if found is None:
            return rows
        last = rows[-1][1] if len(rows) == count + 1 else None
        if last is not None and (last >= bound if descending else last <= bound):
            return rows
    return None


def _date_range(
    code: str, clauses: Sequence[Any], span_info: tuple[float, bool]
) -> tuple[list[Clause], str, list[Any]]:
    """The plain date clauses on `code` (ANDed) as bounds on an index row's `low`:
    (clauses folded, ` AND low>? AND low<?`, arguments). Only when no resource ever had
    several values for the parameter: its one row then holds both what the clause tests and
    what the sort reads, so a row outside the bounds is no match. A value's period is at most
    `span` long, so `high > X` bounds `low > X - span` (_low_floor)."""
    span, multi = span_info
    if multi:
        return [], "", []
    folded: list[Clause] = []
    sql, args = "", []
    for clause in clauses:
        if not (is_range_clause(clause) and clause.param.code == code):
            continue
        floors = [_range_floor(v, span) for v in clause.values]
        ceilings = [_low_ceiling(v) for v in clause.values]
        if all(f is not None for f in floors):
            sql += " AND low>?"
            args.append(min(f for f in floors if f is not None))
        if all(c is not None for c in ceilings):
            sql += " AND low<=?"
            args.append(max(c for c in ceilings if c is not None))
        folded.append(clause)
    return folded, sql, args


def _range_floor(value: DateValue, span: float) -> float | None:
    """A lower bound on `low` (below it, exclusive) implied by the prefix: _low_floor's,
    and `eq` / `sa` (start within or after X)."""
    if value.prefix == "eq":
        return value.low - 1e-6
    if value.prefix == "sa":
        return value.high - 1e-6
    return _low_floor(value, span)


def _low_ceiling(value: DateValue) -> float | None:
    """An upper bound on `low` implied by the prefix (date_condition: `lt` is low < X's
    start, `le` low < its end, `eq` and `eb` end within X, so start before its end)."""
    if value.prefix == "lt":
        return value.low
    if value.prefix in ("le", "eq", "eb"):
        return value.high
    return None


def _owner_pk_window_rows(
    compiler: _Compiler, query: SearchQuery, count: int, after: int
) -> list | None:
    """The next page after pk `after` of a patient's resources in the default (pk) order,
    or None for the general plan. The patient's reference rows are indexed by (pid, tid,
    ttype, pk): the k-th next pk bounds a window that holds every match up to it, so when
    the window gives a full page, it is the page (an index range read in order, where the
    general plan materializes all the patient's pks: 105,000 for a year of CGM)."""
    rtype = query.resource_type
    if rtype is None or query.result.sort or count <= 0:
        return None
    found = _owner_clause(compiler, rtype, query.clauses)
    pid = compiler.storage.pid(rtype, found[0]) if found is not None else None
    if found is None or pid is None:
        return None
    code, owner = found
    others = [c for c in query.clauses if not (isinstance(c, Clause) and c.param.code == code)]
    if any(isinstance(c, Clause) and c.param.type == "date" for c in others):
        return None  # the (owner, date) index leads those (_owner_date_drivers)
    # Another criterion may be rare among the patient's rows: then one small window only,
    # before the general plan (which may find a selective driver for it).
    factors = OWNER_WINDOWS[:1] if others else OWNER_WINDOWS
    rows_sql = "SELECT pk FROM idx_reference WHERE pid=? AND tid=? AND ttype='Patient' AND pk>?"
    for factor in factors:
        offset = (count + 1) * factor - 1
        bound = compiler.conn.execute(
            f"{rows_sql} ORDER BY pk LIMIT 1 OFFSET ?", (pid, owner, after, offset)
        ).fetchone()
        window = (
            (f"{rows_sql} AND pk<=?", [pid, owner, after, bound[0]])
            if bound is not None
            else (rows_sql, [pid, owner, after])  # the rest of the patient's rows: all of them
        )
        where, args = _where(compiler, query, "r", window)
        rows = compiler.conn.execute(
            f"SELECT r.pk FROM resources r WHERE {where} AND r.pk>? ORDER BY r.pk LIMIT ?",
            [*args, after, count + 1],
        ).fetchall()
        if bound is None or len(rows) == count + 1:
            return rows
    return None


def _includes(
    storage: SqliteStorage,
    conn: sqlite3.Connection,
    compiler: _Compiler,
    query: SearchQuery,
    matches: list[StoredResource],
) -> tuple[list[StoredResource], tuple[str, ...]]:
    """The included resources, and a warning when the limits cut them short."""
    result = query.result
    if not matches or not (result.include or result.revinclude):
        return [], ()
    limits = storage.limits
    seen = {(m.resource_type, m.id) for m in matches}
    included: list[StoredResource] = []
    frontier = list(matches)
    for depth in range(limits.max_include_iterations):
        found: list[StoredResource] = []
        for inc in result.include:
            if depth == 0 or inc.iterate:
                found += _forward(storage, conn, compiler, inc, frontier)
        for inc in result.revinclude:
            if depth == 0 or inc.iterate:
                found += _reverse(storage, conn, compiler, inc, frontier, limits.max_included)
        fresh = []
        for res in found:
            key = (res.resource_type, res.id)
            if key not in seen and not res.deleted:
                seen.add(key)
                fresh.append(res)
        included += fresh
        if not fresh:
            return included, ()
        if len(included) >= limits.max_included:
            break
        frontier = fresh
    return included[: limits.max_included], (limits.includes_cut_short(),)


def _include_pids(compiler: _Compiler, inc: Include, source_types: Sequence[str]) -> list[int]:
    pids = []
    for rtype in source_types:
        if inc.source_type not in ("*", rtype):
            continue
        if inc.param_code == "*" or inc.source_type == "*":
            pids += [pid for (t, _), pid in compiler.storage._pids.items() if t == rtype]
        else:
            pid = compiler.storage.pid(rtype, inc.param_code)
            if pid is not None:
                pids.append(pid)
    return pids


def _forward(
    storage, conn, compiler, inc: Include, frontier: list[StoredResource]
) -> list[StoredResource]:
    types = sorted({r.resource_type for r in frontier})
    pids = _include_pids(compiler, inc, types)
    if not pids:
        return []
    pks = _pks_of(conn, frontier)
    sql = (
        "SELECT DISTINCT t.pk FROM idx_reference x JOIN resources t ON t.type=x.ttype AND "
        f"t.id=x.tid WHERE x.pk IN ({','.join('?' * len(pks))}) AND x.pid IN "
        f"({','.join('?' * len(pids))}) AND t.deleted=0"
    )
    args: list[Any] = [*pks, *pids]
    if inc.target_type:
        sql += " AND t.type=?"
        args.append(inc.target_type)
    sql += " ORDER BY t.pk"
    pks = _visible_pks(compiler, [row[0] for row in conn.execute(sql, args)])
    return storage.read_many(pks)


def _reverse(
    storage, conn, compiler, inc: Include, frontier: list[StoredResource], limit: int
) -> list[StoredResource]:
    if inc.source_type == "*":
        # `_revinclude=*`: every resource referring to the frontier, through any parameter
        # (idx_reference holds reference parameters only, so no pid filter is needed).
        pid_sql, pids = "1", []
    else:
        pids = _include_pids(compiler, inc, [inc.source_type])
        if not pids:
            return []
        pid_sql = f"x.pid IN ({','.join('?' * len(pids))})"
    pks: set[int] = set()
    for start in range(0, len(frontier), REVERSE_CHUNK):
        chunk = frontier[start : start + REVERSE_CHUNK]
        ors = " OR ".join(["(x.ttype=? AND x.tid=?)"] * len(chunk))
        args = [value for res in chunk for value in (res.resource_type, res.id)]
        sql = (
            "SELECT DISTINCT s.pk FROM idx_reference x JOIN resources s ON s.pk=x.pk "
            f"WHERE {pid_sql} AND ({ors}) AND s.deleted=0 ORDER BY s.pk LIMIT ?"
        )
        pks.update(row[0] for row in conn.execute(sql, [*pids, *args, limit]))
    return storage.read_many(_visible_pks(compiler, sorted(pks))[:limit])


def _visible_pks(compiler: _Compiler, pks: list[int]) -> list[int]:
    """The pks (in their order) of resources the request may see (all without a
    restriction): included resources are held to it like matches."""
    if compiler.restriction is None or not pks:
        return pks
    by_type: dict[str, list[int]] = {}
    for pk, rtype in compiler.conn.execute(
        f"SELECT pk, type FROM resources WHERE pk IN ({','.join('?' * len(pks))})", pks
    ):
        by_type.setdefault(rtype, []).append(pk)
    kept: set[int] = set()
    for rtype, type_pks in by_type.items():
        sql, args = compiler.visible(rtype, "v")
        if not sql:
            kept.update(type_pks)
            continue
        rows = compiler.conn.execute(
            f"SELECT v.pk FROM resources v WHERE v.pk IN ({','.join('?' * len(type_pks))})"
            f"{sql}",
            [*type_pks, *args],
        )
        kept.update(row[0] for row in rows)
    return [pk for pk in pks if pk in kept]


def _pks_of(conn: sqlite3.Connection, resources: list[StoredResource]) -> list[int]:
    pks = []
    for res in resources:
        row = conn.execute(
            "SELECT pk FROM resources WHERE type=? AND id=?", (res.resource_type, res.id)
        ).fetchone()
        if row:
            pks.append(row[0])
    return pks
