"""Driving sets of the SQLite planner, on real SQLite in-process: `subject=Patient/X` with
a date runs on the (owner, date) index like `patient=X`, where `patient` is `subject`
restricted to patients; an untyped `subject=X` (maybe a Group) does not; clauses above
the driver limit still get a driving set below ten times it. Every form keeps its exact meaning."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qsl

import orjson
import pytest

from fhir_server.model import jsonio
from fhir_server.search.registry import SearchParamRegistry
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage import open_storage


def reading(rid: str, subject: str, day: int) -> dict:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "99504-3"}]},
        "subject": {"reference": subject},
        "effectiveDateTime": f"2024-03-{day:02d}T08:00:00Z",
        "valueQuantity": {"value": 100 + day, "unit": "mg/dL"},
    }


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirService]:
    url = f"sqlite:///{tmp_path_factory.mktemp('owner') / 'db.sqlite'}"
    svc = FhirService(open_storage(url), Settings(db_url=url))
    for day in (1, 2, 3):
        svc.resources.update("Observation", f"pat-{day}", reading(f"pat-{day}", "Patient/x", day))
        svc.resources.update("Observation", f"grp-{day}", reading(f"grp-{day}", "Group/x", day))
        svc.resources.update("Observation", f"oth-{day}", reading(f"oth-{day}", "Patient/y", day))
    yield svc
    svc.storage.close()


def search(service: FhirService, query: str) -> tuple[set[str], list[str]]:
    statements: list[str] = []
    conn = service.storage._reader()
    conn.set_trace_callback(statements.append)
    try:
        bundle = service.search_bundle("Observation", parse_qsl(query), "http://t", True)
    finally:
        conn.set_trace_callback(None)
    bundle = orjson.loads(jsonio.dumps(bundle))
    return {e["resource"]["id"] for e in bundle.get("entry", [])}, statements


@pytest.mark.parametrize(
    ("query", "expected", "by_owner"),
    [
        ("subject=Patient/x&date=ge2024-03-02", {"pat-2", "pat-3"}, True),
        ("subject:Patient=x&date=ge2024-03-02", {"pat-2", "pat-3"}, True),
        ("patient=x&date=ge2024-03-02", {"pat-2", "pat-3"}, True),
        # untyped: a Group x is a subject too, so the owner index (patients only) is not used
        ("subject=x&date=ge2024-03-02", {"pat-2", "pat-3", "grp-2", "grp-3"}, False),
        ("subject=Group/x&date=lt2024-03-02", {"grp-1"}, False),
    ],
)
def test_subject_and_date(
    service: FhirService, query: str, expected: set[str], by_owner: bool
) -> None:
    found, statements = search(service, query)
    assert found == expected
    assert any("WHERE owner=" in sql for sql in statements) is by_owner  # expanded SQL


def test_owner_codes_follow_the_definitions() -> None:
    registry = SearchParamRegistry.default()
    assert registry.owner_codes("Observation") == ("patient", "subject")
    # Task.patient is Task.for: `subject` (Task.focus) names no owner
    assert registry.owner_codes("Task") == ("patient",)
    assert registry.owner_codes("Patient") == ("patient",)


def test_broad_clauses_still_get_a_driving_set(
    service: FhirService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every clause above the driver limit (here 2 rows instead of 20,000), the
    smallest set below ten times the limit still leads, rather than a probe of every
    Observation in pk order; the answer is the same, for one clause or two."""
    from fhir_server.storage import sqlite_search

    monkeypatch.setattr(sqlite_search, "OWNER_WINDOWS", ())  # the general plan, not windows
    query = "subject=Patient/x&value-quantity=gt101"
    expected, _ = search(service, query)
    assert expected == {"pat-2", "pat-3"}
    monkeypatch.setattr(sqlite_search, "DRIVER_LIMIT", 2)
    found, statements = search(service, query)
    assert found == expected
    assert any("r.pk IN (SELECT pk FROM idx_" in sql for sql in statements)
    monkeypatch.setattr(sqlite_search, "BROAD_DRIVER_FACTOR", 1)
    found, statements = search(service, query)
    assert found == expected
    assert not any("r.pk IN (SELECT pk FROM idx_" in sql for sql in statements)
    found, statements = search(service, "subject=Patient/x")
    assert found == {"pat-1", "pat-2", "pat-3"}
    assert not any("r.pk IN (SELECT pk FROM idx_" in sql for sql in statements)
    monkeypatch.setattr(sqlite_search, "BROAD_DRIVER_FACTOR", 10)
    found, statements = search(service, "subject=Patient/x")
    assert found == {"pat-1", "pat-2", "pat-3"}
    assert any("r.pk IN (SELECT pk FROM idx_" in sql for sql in statements)


@pytest.mark.parametrize("windows", [(), (4, 64)])
def test_probes_look_rows_up_by_pk(
    service: FhirService, monkeypatch: pytest.MonkeyPatch, windows: tuple
) -> None:
    """Without statistics SQLite once probed a patient reference through the (ttype, tid)
    index, reading all of the patient's rows for every candidate (2.2 s for 6 matches
    among 145,000 resources): each probe names the pk index, in the general plan and in
    a window of the patient's rows."""
    from fhir_server.storage import sqlite_search

    monkeypatch.setattr(sqlite_search, "OWNER_WINDOWS", windows)
    found, statements = search(service, "subject=Patient/x&value-quantity=gt101")
    assert found == {"pat-2", "pat-3"}
    page = next(sql for sql in statements if "ORDER BY r.pk" in sql)
    assert "FROM idx_reference INDEXED BY idx_reference_pk WHERE pk=" in page
    assert "FROM idx_quantity INDEXED BY idx_quantity_pk WHERE pk=" in page


def test_broad_searches_read_a_type_in_pk_order_without_sorting_it(service: FhirService) -> None:
    """Without a driving clause (none, or `:not`, or each above the driver limits: every
    CGM reading has the code) the page comes from a scan of the type in pk order that stops
    after `_count` matches. SQLite has no statistics here (no ANALYZE); through (type,
    last_updated) it sorted every resource of the type first (0.9 s at 500,000)."""
    conn = service.storage._reader()
    for query in ("_count=2", "code:not=1234-5&_count=2", "_count=2&_sort=-_id"):
        ids, statements = search(service, query)
        assert len(ids) == 2
        paged = [s for s in statements if "ORDER BY r.pk" in s]
        for statement in paged:
            plan = " ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + statement))
            assert "TEMP B-TREE" not in plan and "resources_type_pk" in plan, plan
        assert paged or "_sort" in query
