"""Full-text search: `_text` (the narrative) and `_content` (the whole resource's text).

What is indexed, per resource (one `FullTextEntry` beside its other index entries, written
in the same transaction and removed with them):
- `narrative`: `text.div` with its XHTML tags stripped and entities decoded;
- `content`: every other string value of the resource that is text a person would
  search (names, displays, texts, notes, addresses, identifier values), each distinct
  string once. Left out: ids, references, system and profile URLs, `meta`, base64 data,
  codes (`code`, `status`, `unit`, `gender`...: token parameters search them), dates and
  times (date parameters), and numbers. A CGM reading (a status, a code, a unit and a
  number) so has no full-text row at all.
`_content` searches both, `_text` the narrative alone.

What a value means (R4 leaves the syntax to the server): words, all of which must occur
(`helene dupont`); `OR` between groups of words (`insulin OR metformin`); a word ending in
`*` is a prefix (`hel*`); commas separate alternatives as in every FHIR parameter.
Matching is case- and accent-insensitive: words are compared in the normalised form of
search/text.py ("Hélène" is found by "helene", "HELENE" and "hélène").

The backends answer it with their own index (SQLite FTS5 in storage/sqlite_text.py, an
array of normalised words in storage/mongo_text.py); the word splitting here is the one
both use for the query.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

from fhir_server.search.errors import SearchError
from fhir_server.search.escaping import escape
from fhir_server.search.text import normalise
from fhir_server.search.types import FullTextEntry

TEXT_PARAM = "_text"
CONTENT_PARAM = "_content"
FULLTEXT_PARAMS = frozenset({TEXT_PARAM, CONTENT_PARAM})
MAX_TERMS = 32  # per value: a query of more words is refused rather than slow

# Keys whose values are identifiers or machine data, not text a person searches.
_SKIPPED_KEYS = frozenset({
    "id", "meta", "reference", "system", "url", "profile", "fullUrl", "data", "hash",
    "div", "resourceType", "contentType", "valueBase64Binary", "signature",
})
# Keys whose string values are codes (Coding.code, status, Quantity.unit...): searched with
# token parameters; left out, a CGM reading (status, code, unit) has no full-text row at
# all, which is most of an ingest.
_CODE_KEYS = frozenset({
    "code", "status", "unit", "use", "gender", "language", "mode", "intent", "priority",
    "comparator", "version",
})
_TAG = re.compile(r"<[^>]*>")
# A date, dateTime, instant or time: searched with date parameters, not words.
_TEMPORAL = re.compile(r"^\d{4}(-\d{2}(-\d{2}(T[\d:.]+(Z|[+-]\d{2}:\d{2})?)?)?)?$|^\d{2}:\d{2}")
# Words as SQLite's unicode61 tokenizer sees them: runs of letters and digits.
WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True, slots=True)
class Term:
    word: str  # normalised (casefolded, accents removed)
    prefix: bool


@dataclass(frozen=True, slots=True)
class TextValue:
    """One value of `_text` / `_content`: OR of groups, each an AND of terms."""

    groups: tuple[tuple[Term, ...], ...]
    raw: str

    def to_param(self) -> str:
        return escape(self.raw)


def narrative_text(resource: dict) -> str:
    text = resource.get("text")
    div = text.get("div") if isinstance(text, dict) else None
    if not isinstance(div, str) or not div:
        return ""
    return " ".join(html.unescape(_TAG.sub(" ", div)).split())


def fulltext_entry(resource: dict) -> FullTextEntry | None:
    """The resource's full-text entry, None when it has no text at all."""
    narrative = narrative_text(resource)
    strings: dict[str, None] = {}
    _collect(resource, strings)
    if not strings and not narrative:
        return None
    return FullTextEntry(CONTENT_PARAM, narrative, " ".join(strings))


def _collect(node: dict, out: dict[str, None]) -> None:
    for key, value in node.items():
        if key in _SKIPPED_KEYS:
            continue
        kind = type(value)
        if kind is str:
            if key not in _CODE_KEYS and _is_text(value):
                out[value] = None
        elif kind is dict:
            # `text` as a Narrative (a dict) is the narrative, taken apart; as a string
            # (CodeableConcept.text, Annotation.text) it is content
            if key != "text":
                _collect(value, out)
        elif kind is list:
            for item in value:
                if type(item) is dict:
                    _collect(item, out)
                elif type(item) is str and key not in _CODE_KEYS and _is_text(item):
                    out[item] = None


def _is_text(value: str) -> bool:
    return bool(value) and not (value[0].isdigit() and _TEMPORAL.match(value))


def words(text: str) -> list[str]:
    """The normalised words of a text, as both backends index them."""
    return WORD.findall(normalise(text))


def parse_text_value(raw: str, code: str) -> TextValue:
    """`helene dupont`, `insulin OR metformin`, `hel*` -> OR groups of AND terms."""
    groups: list[tuple[Term, ...]] = []
    current: list[Term] = []
    count = 0
    for token in raw.replace('"', " ").split():
        if token == "OR":
            if current:
                groups.append(tuple(current))
            current = []
            continue
        if token == "AND":
            continue
        prefix = token.endswith("*")
        found = words(token.rstrip("*"))
        for index, word in enumerate(found):
            current.append(Term(word, prefix and index == len(found) - 1))
            count += 1
    if current:
        groups.append(tuple(current))
    if not groups:
        raise SearchError(f"{code} needs at least one word (letters or digits)", code)
    if count > MAX_TERMS:
        raise SearchError(f"{code}: at most {MAX_TERMS} words", code)
    return TextValue(tuple(groups), raw)


def is_fulltext_clause(criterion: Any) -> bool:
    """A `_text` / `_content` clause (words, or `:missing`), as search/query.py parses it."""
    param = getattr(criterion, "param", None)
    return param is not None and param.code in FULLTEXT_PARAMS and param.type == "special"


def missing_value(clause: Any) -> bool | None:
    """For `_text:missing=x` / `_content:missing=x`: x (True: resources without any text of
    that kind); None for a search on words."""
    if clause.modifier != "missing":
        return None
    return any(getattr(value, "missing", False) for value in clause.values)
