"""Full-text search on MongoDB: arrays of normalised words in each current document.

MongoDB's own `$text` index would do, but mongomock (on which the MongoDB backend is tested
here) does not implement `$text`, and its language stemming differs from the SQLite
backend's. So each document carries the words of its text (search/fulltext.py), normalised
as search/text.py does (casefolded, accents removed: "Hélène" is stored as `helene`), each
once: `ftn` the narrative's, `ftc` all of them (narrative and content). Both arrays have a
multikey index (storage/mongo_indexes.py): a word is an index point look-up, a prefix
(`hel*`) an anchored `$regex`, which is an index range.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fhir_server.search.fulltext import TEXT_PARAM, TextValue, missing_value, words
from fhir_server.search.query import Clause
from fhir_server.search.types import FullTextEntry, IndexEntry

NARRATIVE_FIELD = "ftn"
CONTENT_FIELD = "ftc"


def fields(entries: Sequence[IndexEntry]) -> dict[str, list[str]]:
    """The word arrays of a document, from its FullTextEntry (none without one)."""
    for entry in entries:
        if type(entry) is FullTextEntry:
            narrative = list(dict.fromkeys(words(entry.narrative)))
            content = list(dict.fromkeys([*narrative, *words(entry.content)]))
            found = {NARRATIVE_FIELD: narrative, CONTENT_FIELD: content}
            return {name: value for name, value in found.items() if value}
    return {}


def condition(clause: Clause) -> dict[str, Any]:
    """The Mongo filter of a `_text` / `_content` clause: OR of groups, each an AND."""
    field = NARRATIVE_FIELD if clause.param.code == TEXT_PARAM else CONTENT_FIELD
    missing = missing_value(clause)
    if missing is not None:  # an empty array is left out of the document
        return {field: {"$exists": not missing}}
    alternatives = []
    for value in clause.values:
        assert isinstance(value, TextValue)
        for group in value.groups:
            exact = [t.word for t in group if not t.prefix]
            parts: list[dict[str, Any]] = [{field: {"$all": exact}}] if exact else []
            parts += [
                {field: {"$regex": "^" + re.escape(t.word)}} for t in group if t.prefix
            ]
            alternatives.append(parts[0] if len(parts) == 1 else {"$and": parts})
    return alternatives[0] if len(alternatives) == 1 else {"$or": alternatives}
