"""`_lastUpdated` ranges and sorts (and `_id` sorts) read their index: a poll for what
changed since the last one (`_lastUpdated=gt<then>`, often nothing) used to scan every
resource of the type in pk order (2 s at 10 M), and `_sort=-_lastUpdated` sorted the whole
type (4.6 s). The matches and their order must be exactly those of the plain conditions:
an instant stored to the millisecond is the period [t, t + 1 ms)."""

from __future__ import annotations

import sqlite3

import pytest

from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage.sqlite import SqliteStorage
from fhir_server.storage.sqlite_search import date_condition

BASE = 1_700_000_000.0  # 2023-11-14T22:13:20Z
COUNT = 1200


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> FhirService:
    path = tmp_path_factory.mktemp("last-updated") / "lu.db"
    storage = SqliteStorage(str(path))
    with storage.transaction() as tx:
        for n in range(COUNT):
            # groups of three share an instant (one Bundle's resources); some are 1 ms apart
            stamp = BASE + (n // 3) * 60.0 + (0.001 if n % 7 == 0 else 0.0)
            tx.put("Observation", f"o{n}", 1, stamp, b'{"resourceType":"Observation"}', (), "POST")
        for n in range(50):
            tx.put("Patient", f"p{n}", 1, BASE + n, b'{"resourceType":"Patient"}', (), "POST")
    return FhirService(storage, Settings(db_url=f"sqlite:///{path}"))


def walk(service: FhirService, items: list[tuple[str, str]], count: int = 97) -> list[str]:
    """Every id of the search, page after page through the cursors."""
    query = service.search.parse("Observation", [*items, ("_count", str(count))], strict=True)
    ids, cursor = [], None
    while True:
        page = service.storage.search(query, count, cursor)
        ids += [stored.id for stored in page.matches]
        cursor = page.next_cursor
        if cursor is None:
            return ids


def expected(service: FhirService, value: str) -> list[tuple[float, int, str]]:
    """(last_updated, pk, id) of the matches, by the plain period condition."""
    query = service.search.parse("Observation", [("_lastUpdated", value)], strict=True)
    [clause] = query.clauses
    [date] = clause.values
    sql, args = date_condition(date, "last_updated", "(last_updated+0.001)")
    conn = sqlite3.connect(service.storage.path)
    try:
        return conn.execute(
            f"SELECT last_updated, pk, id FROM resources WHERE type='Observation' AND {sql}", args
        ).fetchall()
    finally:
        conn.close()


VALUES = [
    "gt2023-11-15T00:00:00Z",
    "gt2023-11-14T22:13:20Z",  # exactly the first instant: the period ends 1 ms later
    "ge2023-11-14T22:13:20.001Z",
    "gt2023-11-14T23:30:00.001+01:00",
    "lt2023-11-15T05:00:00Z",
    "le2023-11-14T22:14:20Z",
    "eq2023-11-14T22:14:20Z",
    "eq2023-11-14T22:14:20.001Z",
    "eq2023-11-15",
    "sa2023-11-14T23:00:00Z",
    "eb2023-11-14T23:00:00Z",
    "gt2099-01-01",
    "ge2023",
]


@pytest.mark.parametrize("value", VALUES)
def test_matches_are_those_of_the_period_condition(service: FhirService, value: str) -> None:
    rows = expected(service, value)
    ascending = [rid for _, _, rid in sorted(rows, key=lambda r: (r[0], r[1]))]
    # unsorted, a `_lastUpdated` range is read in its index order (search/implied_order.py)
    assert walk(service, [("_lastUpdated", value)]) == ascending
    assert walk(service, [("_lastUpdated", value), ("_sort", "_lastUpdated")]) == ascending
    descending = [rid for _, _, rid in sorted(rows, key=lambda r: (-r[0], r[1]))]
    assert walk(service, [("_lastUpdated", value), ("_sort", "-_lastUpdated")]) == descending


def test_sorted_walks_without_a_range_see_every_resource_once_in_order(
    service: FhirService,
) -> None:
    conn = sqlite3.connect(service.storage.path)
    rows = conn.execute(
        "SELECT last_updated, pk, id FROM resources WHERE type='Observation'"
    ).fetchall()
    conn.close()
    assert walk(service, [("_sort", "-_lastUpdated")], count=50) == [
        rid for _, _, rid in sorted(rows, key=lambda r: (-r[0], r[1]))
    ]
    assert walk(service, [("_sort", "_lastUpdated,_id")], count=50) == [
        rid for _, _, rid in sorted(rows, key=lambda r: (r[0], r[2]))
    ]
    assert walk(service, [("_sort", "-_id")], count=50) == sorted(
        (rid for _, _, rid in rows), reverse=True
    )


def plans(service: FhirService, items: list[tuple[str, str]]) -> str:
    """The query plans of the SQL a search runs (page queries and probes)."""
    conn = service.storage._reader()
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        query = service.search.parse("Observation", [*items, ("_count", "10")], strict=True)
        service.storage.search(query, 10, None)
    finally:
        conn.set_trace_callback(None)
    details = []
    for sql in statements:
        if sql.startswith("SELECT"):
            details += [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]
    return "\n".join(details)


def test_a_poll_for_changes_reads_the_range_from_the_index(service: FhirService) -> None:
    plan = plans(service, [("_lastUpdated", "gt2099-01-01")])
    assert "resources_type_updated (type=? AND last_updated>?)" in plan
    assert "resources_type_pk" not in plan  # no walk through the type in pk order


@pytest.mark.parametrize(
    ("sort", "index"),
    [
        ("_lastUpdated", "resources_type_updated"),
        ("-_lastUpdated", "resources_type_updated"),
        ("_id", "sqlite_autoindex_resources_1"),
        ("-_id", "sqlite_autoindex_resources_1"),
    ],
)
def test_a_sort_on_a_column_reads_its_index_in_order(
    service: FhirService, sort: str, index: str
) -> None:
    plan = plans(service, [("_sort", sort)])
    assert index in plan
    assert "USE TEMP B-TREE FOR ORDER BY" not in plan  # at most ties are sorted
    page = walk(service, [("_sort", sort)], count=40)  # every page keeps that plan
    assert len(page) == len(set(page)) == COUNT
