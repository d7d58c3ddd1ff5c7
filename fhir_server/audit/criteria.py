"""A parsed AuditEvent search (search/query.py's SearchQuery) as conditions on the fields
the audit store indexes; each backend's store compiles them.

Supported: `patient`, `entity`, `agent` (a client id or a user `sub`), `altid` (a user),
`date` and `_lastUpdated` (when recorded), `action`, `subtype`, `outcome`, `site` (the
door: rest, deid, mllp, cli), `address` (the client's network address), `type`, `_id`;
`_count`, `_sort` on date / _lastUpdated / _id, `_total`, `_summary=count`. Any other
parameter or modifier is refused (400), never ignored: an auditor must not read a
narrower answer as a complete one.
"""

from __future__ import annotations

from dataclasses import dataclass

from fhir_server.search.errors import SearchError
from fhir_server.search.query import Clause, SearchQuery
from fhir_server.search.values import DateValue, ReferenceValue, StringValue, TokenValue

# search parameter -> indexed field
TOKEN_FIELDS = {"action": "action", "subtype": "subtype", "outcome": "outcome", "site": "door"}
REFERENCE_FIELDS = {"patient": "patient", "entity": "entity", "agent": "agent"}
SORTABLE = {"date", "_lastUpdated", "_id"}


@dataclass(frozen=True, slots=True)
class Condition:
    """`field op operand`: op is "=", "prefix", a comparison on `recorded` ("<",
    ">="), or "between" (a half-open (low, high) period of `recorded`)."""

    field: str
    op: str
    operand: object


@dataclass(frozen=True, slots=True)
class AuditCriteria:
    terms: tuple[tuple[Condition, ...], ...]  # ANDed terms, each an OR of conditions
    descending: bool = True  # newest first unless `_sort=date`
    empty: bool = False  # a criterion no record can meet (`type` other than rest)


def audit_criteria(query: SearchQuery) -> AuditCriteria:
    if query.unknown:
        first = query.unknown[0]
        message = f"{first.name} is not supported on AuditEvent: {first.reason}"
        raise SearchError(message, first.name)
    result = query.result
    if result.include or result.revinclude or result.elements or result.contained:
        raise SearchError("AuditEvent searches take no _include, _revinclude, _elements")
    descending = True
    for key in result.sort[:1]:
        if key.code not in SORTABLE:
            raise SearchError(f"AuditEvent sorts by date, _lastUpdated or _id, not {key.code}")
        descending = key.descending
    terms: list[tuple[Condition, ...]] = []
    empty = False
    for clause in query.clauses:
        if not isinstance(clause, Clause):
            raise SearchError(f"{clause.key}: chains and _has are not supported on AuditEvent")
        term, never = _term(clause)
        empty = empty or never
        if term:
            terms.append(term)
    return AuditCriteria(tuple(terms), descending, empty)


def _term(clause: Clause) -> tuple[tuple[Condition, ...], bool]:
    code, modifier = clause.param.code, clause.modifier
    if modifier and not (code == "agent" and modifier == "identifier"):
        raise SearchError(f"{clause.key}: modifiers are not supported on AuditEvent", code)
    conditions: list[Condition] = []
    for value in clause.values:
        if code in ("date", "_lastUpdated") and isinstance(value, DateValue):
            conditions.extend(_date_conditions(value))
            continue
        if code == "_id" and isinstance(value, TokenValue):
            if value.code and value.code.isdigit():
                conditions.append(Condition("seq", "=", int(value.code)))
            continue
        if code in TOKEN_FIELDS and isinstance(value, TokenValue) and value.code:
            conditions.append(Condition(TOKEN_FIELDS[code], "=", value.code))
            continue
        if code == "altid" and isinstance(value, TokenValue) and value.code:
            conditions.append(Condition("user", "=", value.code))
            continue
        if code == "type" and isinstance(value, TokenValue):
            if value.code == "rest":
                return (), False  # every record is of type rest
            continue
        if code == "address" and isinstance(value, StringValue):
            conditions.append(Condition("address", "prefix", value.value))
            continue
        if code in REFERENCE_FIELDS and isinstance(value, ReferenceValue):
            # the patients an event names are indexed once, as patients
            field = "patient" if code == "entity" and value.type == "Patient" else code
            target = _reference_operand(field, value)
            if target is not None:
                conditions.append(Condition(REFERENCE_FIELDS[field], "=", target))
            continue
        raise SearchError(f"{clause.key} is not supported on AuditEvent", code)
    # no usable value (an _id that is not a record number, a type other than rest)
    return tuple(conditions), not conditions


def _reference_operand(code: str, value: ReferenceValue) -> str | None:
    if code == "agent":
        return value.identifier_value or value.id or value.url
    if value.id is None:
        return None
    if code == "patient":
        return value.id if value.type in (None, "Patient") else None
    return f"{value.type}/{value.id}" if value.type else value.id


def _date_conditions(value: DateValue) -> list[Condition]:
    """`recorded` is an instant (a point): eq means inside the period, and so on."""
    prefix, low, high = value.prefix, value.low, value.high
    if prefix == "eq":
        return [Condition("recorded", "between", (low, high))]
    if prefix in ("lt", "eb"):
        return [Condition("recorded", "<", low)]
    if prefix == "le":
        return [Condition("recorded", "<", high)]
    if prefix in ("gt", "sa"):
        return [Condition("recorded", ">=", high)]
    if prefix == "ge":
        return [Condition("recorded", ">=", low)]
    raise SearchError(f"date: the prefix {prefix} is not supported on AuditEvent", "date")
