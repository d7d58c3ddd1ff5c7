"""One search clause evaluated in memory on the index entries of one resource.

The storage backends answer clauses with SQL or Mongo filters over stored index rows. Some
callers need the same answer for a resource that is not stored as it is searched: the
de-identification facade matches the de-identified view of a resource (shifted dates, no
names), which no index holds. They extract the view's entries with `IndexExtractor` and
ask `clause_matches` here, which gives each value kind the meaning the SQLite backend gives
it (sqlite_search.py; prefixes from ranges.py, strings normalised by text.py):

- a value matches when ONE entry of the parameter satisfies it, OR between values;
- `:missing=true` = no entry; token `:not` = no entry matches; date and number `ne` =
  some entry is not equal (missing values excluded);
- string default = starts with (normalised), `:exact` = equal as written, `:contains` and
  `:text` = substring (normalised); token `:text` = substring of the normalised display;
- quantities are compared as stored (value, system, code or unit text): no unit
  conversion, unlike the SQL backend with a terminology service;
- token `:in`/`:not-in`/`:below`/`:above` and `:of-type` need a terminology expansion:
  UnsupportedModifier (a 400), never a silent non-match.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from fhir_server.search.errors import UnsupportedModifier
from fhir_server.search.query import Clause
from fhir_server.search.ranges import date_predicate, number_predicate
from fhir_server.search.types import (
    CompositeEntry,
    DateEntry,
    IndexEntry,
    NumberEntry,
    QuantityEntry,
    ReferenceEntry,
    StringEntry,
    TokenEntry,
    UriEntry,
)
from fhir_server.search.values import (
    CompositeValue,
    DateValue,
    MissingValue,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
    Value,
)

_EXPANDED = ("in", "not-in", "below", "above")


def clause_matches(clause: Clause, entries: Iterable[IndexEntry], now: float | None = None) -> bool:
    """Whether a resource whose index entries are `entries` matches `clause` (entries of
    other parameters are ignored). `now` anchors the `ap` prefix on dates."""
    own = [entry for entry in entries if entry[0] == clause.param.code]
    modifier = clause.modifier
    if modifier == "missing":
        return any(
            (not own) if value.missing else bool(own)
            for value in clause.values
            if isinstance(value, MissingValue)
        )
    kind = clause.param.type
    if kind == "token" and modifier in _EXPANDED:
        raise UnsupportedModifier(
            f"token :{modifier} is not supported on {clause.param.code} here", clause.key
        )
    if modifier == "of-type":
        raise UnsupportedModifier(":of-type is not supported by this server", clause.key)
    moment = time.time() if now is None else now
    hit = any(
        _value_matches(kind, modifier, value, entry, moment)
        for value in clause.values
        for entry in own
    )
    return not hit if modifier == "not" else hit


def _value_matches(
    kind: str, modifier: str | None, value: Value, entry: IndexEntry, now: float
) -> bool:
    if kind == "token" and modifier == "text":
        return (
            isinstance(entry, TokenEntry)
            and isinstance(value, StringValue)
            and (value.normalised in (entry.text or ""))
        )
    if isinstance(value, CompositeValue):
        return isinstance(entry, CompositeEntry) and _composite_matches(value, entry, now)
    return _part_matches(value, modifier, entry, now)


def _part_matches(value: Value, modifier: str | None, entry: IndexEntry, now: float) -> bool:
    if isinstance(value, DateValue):
        return isinstance(entry, DateEntry) and date_predicate(value, now).matches(
            low=entry.low, high=entry.high
        )
    if isinstance(value, StringValue):
        return isinstance(entry, StringEntry) and string_matches(value, modifier, entry)
    if isinstance(value, TokenValue):
        return isinstance(entry, TokenEntry) and token_matches(value, entry.system, entry.code)
    if isinstance(value, QuantityValue):
        return isinstance(entry, QuantityEntry) and _quantity_matches(value, entry)
    if isinstance(value, NumberValue):
        return isinstance(entry, NumberEntry) and number_predicate(value).matches(value=entry.value)
    if isinstance(value, ReferenceValue):
        return isinstance(entry, ReferenceEntry) and _reference_matches(value, entry)
    if isinstance(value, UriValue):
        return isinstance(entry, UriEntry) and _uri_matches(value, modifier, entry.value)
    return False


def string_matches(value: StringValue, modifier: str | None, entry: StringEntry) -> bool:
    if modifier == "exact":
        return entry.exact == value.value
    if modifier in ("contains", "text"):
        return value.normalised in entry.value
    return entry.value.startswith(value.normalised)


def token_matches(value: TokenValue, system: str | None, code: str | None) -> bool:
    """`code`, `system|code`, `|code` (no system) and `system|` (any code)."""
    if value.code is None:
        return value.system is None or system == value.system
    if code != value.code:
        return False
    if not value.system_given:
        return True
    return system == value.system  # `|code`: value.system is None, so no system


def _quantity_matches(value: QuantityValue, entry: QuantityEntry) -> bool:
    if not number_predicate(value).matches(value=entry.value):
        return False
    if value.system and value.code:
        return entry.system == value.system and entry.code == value.code
    if value.code:
        return value.code in (entry.code, entry.unit)
    if value.system:
        return entry.system == value.system
    return True


def _reference_matches(value: ReferenceValue, entry: ReferenceEntry) -> bool:
    if value.identifier_value is not None or value.identifier_system is not None:
        if value.identifier_value is not None and entry.identifier_value != value.identifier_value:
            return False
        return value.identifier_system is None or entry.identifier_system == (
            value.identifier_system
        )
    if value.url is not None:
        return entry.url == value.url
    if entry.target_id != value.id:
        return False
    return value.type is None or entry.target_type == value.type


def _uri_matches(value: UriValue, modifier: str | None, stored: str) -> bool:
    if modifier == "below":
        return stored.startswith(value.value)
    if modifier == "above":
        return value.value.startswith(stored)
    return stored == value.value


def _composite_matches(value: CompositeValue, entry: CompositeEntry, now: float) -> bool:
    if len(value.parts) != len(entry.parts):
        return False
    return all(
        _part_matches(part, None, stored, now)
        for part, stored in zip(value.parts, entry.parts, strict=True)
    )
