"""Full-text search on SQLite: an FTS5 index over each resource's text (search/fulltext.py).

`fulltext` is an FTS5 table whose rowid is the resource's pk. Its rows are written and
deleted like the other index tables' (buffered, by the write-behind thread in big
transactions, and removed with them by `SqliteTransaction._clear_index` on update and
delete: an erasure must go through it too), so they are written in the same transaction as
the resource; only the statement differs (`INSERT_TARGET`, `KEY_COLUMN`). The table keeps
its own copy of the text: FTS5 needs it to remove a row's words, and an external-content
table kept in step by triggers cost six times more per row (a trigger into FTS5: 16 µs a
row, against 2.7 µs for a direct insert, measured on this machine). The tokenizer is
unicode61 with `remove_diacritics 2`: case and accents do not matter ("Hélène" =
"helene"), as in the query words (normalised the same way by search/text.py).
`detail=column` keeps which column a word is in (`_text` searches `narrative` only) but
not word positions: phrases are not offered, and the index is about half the size of a
full one; `columnsize=0` drops the per-row sizes that only ranking would use.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

import orjson

from fhir_server.search.fulltext import (
    TEXT_PARAM,
    TextValue,
    fulltext_entry,
    is_fulltext_clause,
    missing_value,
)
from fhir_server.search.query import Clause

TABLE = "fulltext"
INSERT_TARGET = "fulltext (rowid, narrative, content)"  # rows are (pk, narrative, content)
KEY_COLUMN = "rowid"

SCHEMA = """
CREATE VIRTUAL TABLE IF NOT EXISTS fulltext USING fts5(
    narrative, content, detail=column, columnsize=0,
    tokenize='unicode61 remove_diacritics 2'
);
"""
BACKFILL_BATCH = 2000


def match_expression(clause: Clause) -> str:
    """The FTS5 query of a `_text` / `_content` clause. Every word is quoted (it holds
    letters and digits only: search/fulltext.py), so nothing from the request is read as
    FTS5 syntax."""
    alternatives = []
    for value in clause.values:
        assert isinstance(value, TextValue)
        for group in value.groups:
            terms = [f'"{t.word}"' + ("*" if t.prefix else "") for t in group]
            alternatives.append("(" + " AND ".join(terms) + ")")
    expression = " OR ".join(alternatives)
    if clause.param.code == TEXT_PARAM:
        return f"{{narrative}} : ({expression})"
    return expression


def matching_pks(clause: Clause) -> tuple[str, list[Any]]:
    """`SELECT pk ...` of the resources (of any type) whose text matches the clause."""
    return "SELECT rowid AS pk FROM fulltext WHERE fulltext MATCH ?", [match_expression(clause)]


def condition(clause: Clause, alias: str) -> tuple[str, list[Any]]:
    """The clause on the row `alias` (the FTS5 set is computed once per query)."""
    missing = missing_value(clause)
    if missing is not None:
        which = " WHERE narrative != ''" if clause.param.code == TEXT_PARAM else ""
        op = "NOT IN" if missing else "IN"
        return f"{alias}.pk {op} (SELECT rowid FROM {TABLE}{which})", []
    sql, args = matching_pks(clause)
    return f"{alias}.pk IN ({sql})", args


def drivers(clauses: Iterable[Any]) -> list[tuple[str, list[Any]]]:
    """Searches on words as candidate access paths for the planner: a rare word is the
    smallest set of a search."""
    return [
        matching_pks(c)
        for c in clauses
        if is_fulltext_clause(c) and missing_value(c) is None
    ]


def row(pk: int, entry: Any) -> tuple[int, str, str]:
    return (pk, entry.narrative, entry.content)


def backfill(conn: sqlite3.Connection) -> int:
    """Index the text of every current resource (a database made before full-text search),
    inside the caller's transaction, in pk order a batch at a time. Returns the number of
    resources indexed."""
    done, last = 0, 0
    while True:
        found = conn.execute(
            "SELECT r.pk, h.json FROM resources r JOIN history h "
            "ON h.type = r.type AND h.id = r.id AND h.version = r.version "
            "WHERE r.pk > ? AND r.deleted = 0 ORDER BY r.pk LIMIT ?",
            (last, BACKFILL_BATCH),
        ).fetchall()
        if not found:
            return done
        batch = []
        for pk, json in found:
            try:
                entry = fulltext_entry(orjson.loads(json))
            except orjson.JSONDecodeError:
                continue
            if entry is not None:
                batch.append(row(pk, entry))
        conn.executemany(f"INSERT INTO {INSERT_TARGET} VALUES (?, ?, ?)", batch)
        done += len(batch)
        last = found[-1][0]
