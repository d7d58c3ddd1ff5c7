"""The shapes search works with, shared by the registry, the index extractor, the query
parser and every storage backend (which turns index entries into rows or embedded fields).

Index entries are small NamedTuples: millions are built during a bulk ingest, so they must
be cheap to make and to bind as SQL parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

ParamType = Literal[
    "number", "date", "string", "token", "reference", "composite", "quantity", "uri", "special"
]


@dataclass(frozen=True, slots=True)
class Component:
    """One part of a composite parameter: the parameter it reuses and its sub-expression."""

    definition: str  # canonical URL (or code) of the component's SearchParameter
    expression: str  # FHIRPath relative to the composite's element


@dataclass(frozen=True, slots=True)
class SearchParam:
    """One search parameter as it applies to one resource type."""

    code: str  # the name used in URLs, e.g. "subject", "value-quantity"
    type: ParamType
    resource_type: str  # the base type this entry is for ("Resource" for _id, _lastUpdated...)
    expression: str | None  # FHIRPath, e.g. "Observation.subject"
    url: str = ""  # canonical URL of the SearchParameter resource
    description: str = ""
    target: tuple[str, ...] = ()  # reference target types
    components: tuple[Component, ...] = ()
    modifiers: tuple[str, ...] = ()
    comparators: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict, compare=False, hash=False)


# Index entries. Dates are epoch seconds (float) as a half-open period [low, high): "2024"
# is [2024-01-01T00:00Z, 2025-01-01T00:00Z), an instant to the second covers that second.
# Open period ends use DATE_MIN / DATE_MAX so that comparisons stay plain SQL.
DATE_MIN = -62135596800.0  # 0001-01-01T00:00:00Z
DATE_MAX = 253402300800.0  # 10000-01-01T00:00:00Z


class TokenEntry(NamedTuple):
    param: str
    system: str | None
    code: str | None
    text: str | None  # display / text, normalised (casefolded, accents removed) for :text


class StringEntry(NamedTuple):
    param: str
    value: str  # normalised: casefolded, accents removed, whitespace collapsed
    exact: str  # the original string, for :exact


class DateEntry(NamedTuple):
    param: str
    low: float
    high: float


class NumberEntry(NamedTuple):
    param: str
    value: float


class QuantityEntry(NamedTuple):
    param: str
    value: float
    system: str | None
    code: str | None  # unit code (UCUM code when system is UCUM)
    unit: str | None  # human unit text
    canonical_value: float | None  # value in canonical_unit, when the unit converts
    canonical_unit: str | None


class ReferenceEntry(NamedTuple):
    param: str
    target_type: str | None  # "Patient" for "Patient/123"
    target_id: str | None
    url: str | None  # absolute or canonical URL when not a local type/id reference
    identifier_system: str | None  # Reference.identifier, for :identifier
    identifier_value: str | None


class UriEntry(NamedTuple):
    param: str
    value: str


class CompositeEntry(NamedTuple):
    param: str
    parts: tuple  # one entry per component (TokenEntry, QuantityEntry, DateEntry, ...)


class FullTextEntry(NamedTuple):
    """The words of one resource for `_text` and `_content` (search/fulltext.py): one entry
    per resource, `param` always `_content`."""

    param: str
    narrative: str  # text.div without its tags
    content: str  # every other distinct text string of the resource


IndexEntry = (
    TokenEntry
    | StringEntry
    | DateEntry
    | NumberEntry
    | QuantityEntry
    | ReferenceEntry
    | UriEntry
    | CompositeEntry
    | FullTextEntry
)
