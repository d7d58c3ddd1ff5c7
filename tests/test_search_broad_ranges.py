"""Broad date and `_lastUpdated` ranges paged in index order, and `_id` lists as one lookup.

An unsorted type-level search on a date range is read latest first, on a `_lastUpdated`
range oldest first (search/implied_order.py), so that a page reads N+1 index rows instead
of counting the range to choose a driver. Every page, with and without `_total=accurate`,
sorted or not, must give exactly the resources an independent computation over the raw
data gives, in its order, on SQLite and on the MongoDB backend (mongomock: an in-memory
imitation, no MongoDB server runs on CI; the real server too when MONGODB_URI is set).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest

from fhir_server.limits import Limits
from fhir_server.search.limits import SearchLimitError
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage.base import Storage
from tests.conftest import RunningServer
from tests.storage_backends import BACKENDS

BASE = 1_717_200_000.0  # 2024-06-01T00:00:00Z
READINGS = 400
INSTANTS = 120  # distinct effective instants: many ties for the keyset to break
STAMPS = 90  # distinct lastUpdated stamps


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def reading(rid: str, effective: float, code: str) -> dict:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "effectiveDateTime": iso(effective),
        "valueQuantity": {"value": 100, "unit": "mg/dL"},
    }


class Raw:
    """What was stored, for the independent computation: id -> (effective, lastUpdated,
    insertion rank, code)."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[float, float, int, str]] = {}

    def put(self, service: FhirService, resource: dict, stamp: float) -> None:
        resource = {**resource, "meta": {"versionId": "1", "lastUpdated": iso(stamp)}}
        with service.storage.transaction() as tx:
            tx.put("Observation", resource["id"], 1, stamp, orjson.dumps(resource),
                   service.extractor.extract(resource), "PUT")
        effective = datetime.fromisoformat(resource["effectiveDateTime"]).timestamp()
        code = resource["code"]["coding"][0]["code"]
        self.rows[resource["id"]] = (effective, stamp, len(self.rows), code)


@pytest.fixture(params=sorted(BACKENDS), scope="module")
def loaded(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> tuple[FhirService, Raw]:
    """One store per backend for the module (the insert test adds to it, and to `raw`)."""
    tmp_path = tmp_path_factory.mktemp("broad")
    storage: Storage = BACKENDS[request.param](tmp_path)
    url = f"sqlite:///{tmp_path / 'contract.db'}" if request.param == "sqlite" else "mongomock://"
    service = FhirService(storage, Settings(db_url=url))
    rng = random.Random(29)
    raw = Raw()
    for n in range(READINGS):
        # inserted in an order unrelated to the dates, as a bulk load of many patients is
        effective = BASE + rng.randrange(INSTANTS) * 600.0
        stamp = BASE + 10**6 + rng.randrange(STAMPS) * 60.0
        raw.put(service, reading(f"r{n}", effective, "99504-3" if n % 4 else "2339-0"), stamp)
    yield service, raw
    storage.close()


def walk(service: FhirService, items: list[tuple[str, str]], count: int,
         between_pages=None) -> tuple[list[str], list[int | None]]:
    """Every id of the search, page after page through the cursors, and each page's total."""
    query = service.search.parse("Observation", [*items, ("_count", str(count))], strict=True)
    ids: list[str] = []
    totals: list[int | None] = []
    cursor = None
    while True:
        page = service.storage.search(query, count, cursor)
        ids += [stored.id for stored in page.matches]
        totals.append(page.total)
        cursor = page.next_cursor
        if cursor is None:
            return ids, totals
        if between_pages:
            between_pages()


CUT = BASE + 80 * 600.0 + 300  # between two instants: no boundary question here
LU_CUT = BASE + 10**6 + 50 * 60.0 + 30


def effective_order(raw: Raw, keep, descending: bool = False) -> list[str]:
    rows = [(rid, row) for rid, row in raw.rows.items() if keep(row)]
    sign = -1 if descending else 1
    return [rid for rid, row in sorted(rows, key=lambda r: (sign * r[1][0], r[1][2]))]


def stamp_order(raw: Raw, keep, descending: bool = False) -> list[str]:
    rows = [(rid, row) for rid, row in raw.rows.items() if keep(row)]
    sign = -1 if descending else 1
    return [rid for rid, row in sorted(rows, key=lambda r: (sign * r[1][1], r[1][2]))]


@pytest.mark.parametrize("total", [None, "accurate"])
@pytest.mark.parametrize("count", [7, 40])
def test_broad_date_range_pages_in_date_order(loaded, total, count) -> None:
    service, raw = loaded
    extra = [("_total", total)] if total else []
    latest_first = effective_order(raw, lambda row: row[0] >= CUT, descending=True)
    assert len(latest_first) > 3 * count  # several pages
    ids, totals = walk(service, [("date", f"ge{iso(CUT)}"), *extra], count)
    assert ids == latest_first
    if total:
        assert set(totals) == {len(latest_first)}
    # the same with `_sort=-date` said, and the other way round
    assert walk(service, [("date", f"ge{iso(CUT)}"), ("_sort", "-date"), *extra], count)[0] \
        == latest_first
    assert walk(service, [("date", f"ge{iso(CUT)}"), ("_sort", "date"), *extra], count)[0] \
        == effective_order(raw, lambda row: row[0] >= CUT)


@pytest.mark.parametrize("items", [
    [("date", f"lt{iso(CUT)}")],
    [("date", f"ge{iso(BASE + 20 * 600)}"), ("date", f"lt{iso(CUT)}")],
    [("date", f"ge{iso(BASE + 20 * 600)}"), ("code", "http://loinc.org|2339-0")],
])
def test_bounded_and_combined_date_ranges(loaded, items) -> None:
    service, raw = loaded
    low = BASE + 20 * 600 if items[0][1].startswith("ge") else float("-inf")
    high = CUT if any(v.startswith("lt") for _, v in items) else float("inf")
    code = next((v.split("|")[1] for k, v in items if k == "code"), None)
    def keep(row: tuple) -> bool:
        return low <= row[0] < high and (code is None or row[3] == code)

    assert walk(service, items, 9)[0] == effective_order(raw, keep, descending=True)
    assert walk(service, [*items, ("_sort", "date")], 9)[0] == effective_order(raw, keep)


@pytest.mark.parametrize("total", [None, "accurate"])
def test_last_updated_range_pages_in_its_order(loaded, total) -> None:
    service, raw = loaded
    extra = [("_total", total)] if total else []
    expected = stamp_order(raw, lambda row: row[1] > LU_CUT)
    ids, totals = walk(service, [("_lastUpdated", f"gt{iso(LU_CUT)}"), *extra], 11)
    assert ids == expected
    if total:
        assert set(totals) == {len(expected)}
    backwards = walk(service, [("_lastUpdated", f"gt{iso(LU_CUT)}"),
                               ("_sort", "-_lastUpdated"), *extra], 11)[0]
    assert backwards == stamp_order(raw, lambda row: row[1] > LU_CUT, descending=True)
    # a poll with nothing new: an empty page, no next link
    assert walk(service, [("_lastUpdated", f"gt{iso(time.time() + 3600)}")], 11) == ([], [0])


@pytest.mark.parametrize("items", [
    [("date", f"ge{iso(CUT)}")],
    [("date", f"ge{iso(CUT)}"), ("_sort", "date")],
    [("_lastUpdated", f"gt{iso(LU_CUT)}")],
])
def test_paging_while_others_insert_serves_every_existing_match_once(loaded, items) -> None:
    """New matches are inserted between pages, before and after the cursor's position:
    each resource that matched at the first page is served exactly once, nothing twice."""
    service, raw = loaded
    rng = random.Random(str(items))
    existing = {rid for rid, row in raw.rows.items()
                if (row[1] > LU_CUT if items[0][0] == "_lastUpdated" else row[0] >= CUT)}

    def insert() -> None:
        for _ in range(3):
            rid = f"new{len(raw.rows)}"
            effective = BASE + rng.randrange(INSTANTS) * 600.0
            raw.put(service, reading(rid, effective, "99504-3"), time.time())

    ids, _ = walk(service, items, 8, between_pages=insert)
    counts = Counter(ids)
    assert {rid for rid in existing if counts[rid] != 1} == set()
    assert max(counts.values()) == 1


# -- `_id` lists ------------------------------------------------------------------------------

ID_LISTS = {"sqlite": 10_000, "mongomock": 2_000, "mongodb": 10_000}  # mongomock scans lists


@pytest.fixture(params=sorted(BACKENDS))
def patients(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[FhirService, int]:
    storage: Storage = BACKENDS[request.param](tmp_path)
    service = FhirService(storage, Settings(db_url="sqlite:///unused.db"))
    listed = ID_LISTS[request.param]
    with storage.transaction() as tx:
        for n in range(listed):
            body = orjson.dumps({"resourceType": "Patient", "id": f"p{n}"})
            tx.put("Patient", f"p{n}", 1, BASE + n, body, (), "POST")
    yield service, listed
    storage.close()


def test_an_id_list_as_long_as_a_cohort_is_one_lookup(patients) -> None:
    """10,000 ids: the ORed `id=?` terms of the old plan exceeded SQLite's expression depth
    (an error); now one `id IN (...)` lookup, `$in` on MongoDB."""
    service, listed = patients
    wanted = [f"p{n}" for n in range(0, listed, 2)] + [f"unknown{n}" for n in range(listed // 2)]
    random.Random(3).shuffle(wanted)
    query = service.search.parse("Patient", [("_id", ",".join(wanted))], strict=True)
    found, cursor = [], None
    while True:
        page = service.storage.search(query, 1000, cursor)
        found += [stored.id for stored in page.matches]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sorted(found) == sorted(f"p{n}" for n in range(0, listed, 2))
    assert len(found) == len(set(found))
    negated = service.search.parse(
        "Patient", [("_id:not", ",".join(wanted)), ("_count", "0")], strict=True)
    assert service.storage.search(negated, 0, None).total == listed // 2


def test_an_id_list_past_the_limit_is_a_400_naming_it(tmp_path: Path) -> None:
    """Past `max_id_values`, a 400 OperationOutcome (too-costly) names the limit; below it,
    an `_id` list is not held to the 100 values of other parameters (the old bound)."""
    limits = Limits(max_id_values=150)
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'ids.db'}", insecure_dev=True,
                        limits=limits)
    with RunningServer(settings) as running, httpx.Client(base_url=running.url, timeout=60) as http:
        for n in range(3):
            assert http.put(f"/Patient/p{n}", json={"resourceType": "Patient", "id": f"p{n}"}
                            ).status_code == 201
        ids = [f"p{n}" for n in range(150)]
        found = http.post("/Patient/_search", data={"_id": ",".join(ids)})
        assert found.status_code == 200, found.text
        assert sorted(e["resource"]["id"] for e in found.json()["entry"]) == ["p0", "p1", "p2"]
        refused = http.post("/Patient/_search", data={"_id": ",".join([*ids, "p150"])})
        assert refused.status_code == 400
        outcome = refused.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["code"] == "too-costly"
        assert "max_id_values" in outcome["issue"][0]["diagnostics"]
    # the storage layer holds internal callers (cohorts, exports) to the same bound
    (tmp_path / "in-process").mkdir()
    store = BACKENDS["sqlite"](tmp_path / "in-process")
    query = FhirService(store, Settings()).search.parse(
        "Patient", [("_id", ",".join([*ids, "p150"]))], strict=True)
    store.limits = limits  # type: ignore[attr-defined]
    with pytest.raises(SearchLimitError, match="max_id_values"):
        store.search(query, 10, None)
    store.close()
