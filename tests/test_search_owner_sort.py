"""Resources sorted by a date (`patient=X&_sort=-date`, an app's "latest readings", or
`_sort=-date` across patients): pages come from a window of the (owner, date) or (date)
index instead of sorting all of the patient's (or the type's) rows; in the default order,
every page comes from a window of the patient's reference rows instead of all of them.
Every page, in order, must be exactly what the general plan gives: instants, days, months
and periods of every width, equal dates, resources without a date, other patients and a
Group subject, extra criteria that skip most of the window."""

from __future__ import annotations

import random
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest

from fhir_server.model import jsonio
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage import open_storage, sqlite_search

LOINC = "http://loinc.org"


def effective(rng: random.Random) -> dict:
    day = rng.randint(1, 28)
    hour = rng.randint(0, 23)
    form = rng.random()
    if form < 0.5:
        return {"effectiveDateTime": f"2024-03-{day:02d}T{hour:02d}:{rng.choice([0, 30]):02d}:00Z"}
    if form < 0.65:
        return {"effectiveDateTime": f"2024-03-{day:02d}"}
    if form < 0.7:
        return {"effectiveDateTime": "2024-03"}
    if form < 0.9:
        end = min(28, day + rng.randint(0, 5))
        return {"effectivePeriod": {"start": f"2024-03-{day:02d}", "end": f"2024-03-{end:02d}"}}
    return {}  # no date: sorts last


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirService]:
    url = f"sqlite:///{tmp_path_factory.mktemp('owner-sort') / 'db.sqlite'}"
    svc = FhirService(open_storage(url), Settings(db_url=url))
    rng = random.Random(7)
    for n in range(240):
        subject = rng.choice(["Patient/a"] * 6 + ["Patient/b", "Group/a"])
        code = "99504-3" if rng.random() < 0.8 else "4548-4"
        svc.resources.update("Observation", f"o{n}", {
            "resourceType": "Observation", "id": f"o{n}", "status": "final",
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "subject": {"reference": subject}, **effective(rng),
        })
    yield svc
    svc.storage.close()


def walk(service: FhirService, query: str) -> list[list[str]]:
    """Every page of a search, following `next`."""
    pages, items = [], parse_qsl(query)
    while len(pages) < 1000:  # a page repeated for ever fails instead of hanging
        bundle = orjson.loads(jsonio.dumps(
            service.search_bundle("Observation", items, "http://t", True)))
        pages.append([e["resource"]["id"] for e in bundle.get("entry", [])])
        following = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not following:
            return pages
        items = parse_qsl(urlsplit(following[0]).query)
    raise AssertionError(f"{query}: more than 1,000 pages")


@pytest.mark.parametrize("count", [1, 3, 7, 20])
@pytest.mark.parametrize(
    "query",
    [
        "patient=a&_sort=-date",
        "patient=a&_sort=date",
        "subject=Patient/a&_sort=-date",
        "patient=a&code=4548-4&_sort=-date",  # most of the window fails the code
        "patient=a&code=99504-3&_sort=date",
        "patient=b&_sort=-date",
        "patient=a&date=ge2024-03-10&_sort=-date",
        # no patient: windows of the date index over every patient (and the Group)
        "_sort=-date",
        "_sort=date",
        "code=4548-4&_sort=-date",  # one window, then the general plan
        "date=ge2024-03-10&_sort=date",
        # the default order (pk): windows of the patient's reference rows, every page
        "patient=a",
        "subject=Patient/a",
        "patient=a&code=4548-4",
        "patient=b&code=99504-3",
        "subject=Group/a",
    ],
)
def test_pages_equal_the_general_plan(
    service: FhirService, monkeypatch: pytest.MonkeyPatch, query: str, count: int
) -> None:
    windowed = walk(service, f"{query}&_count={count}")
    monkeypatch.setattr(sqlite_search, "OWNER_WINDOWS", ())
    general = walk(service, f"{query}&_count={count}")
    assert windowed == general
    assert sum(len(page) for page in general) > 0


@pytest.mark.parametrize(
    ("query", "window"),
    [
        ("patient=a&_sort=-date&_count=3", "owner="),
        ("_sort=-date&_count=3", "FROM idx_date WHERE pid="),
        ("patient=a&_count=3", "ttype='Patient' AND pk>"),
    ],
)
def test_windows_answer_the_first_and_next_pages(
    service: FhirService, query: str, window: str
) -> None:
    items = parse_qsl(query)
    for _ in range(3):  # the first page, then two `next` pages
        statements: list[str] = []
        conn = service.storage._reader()
        conn.set_trace_callback(statements.append)
        try:
            bundle = orjson.loads(jsonio.dumps(
                service.search_bundle("Observation", items, "http://t", True)))
        finally:
            conn.set_trace_callback(None)
        assert any(window in s and "ORDER BY" in s for s in statements)
        assert not any("count(*)" in s for s in statements)  # no planner probes
        following = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        items = parse_qsl(urlsplit(following[0]).query)


def test_a_long_period_outside_the_window_still_comes_first(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window (recent `low`s, back to the widest period stored: 10 days here) holds the
    page rows only when they reach its bound: here the two code-Y readings in it are older
    than a code-Y period that starts before it."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    service = FhirService(open_storage(url), Settings(db_url=url))

    def put(rid: str, code: str, when: dict) -> None:
        service.resources.update("Observation", rid, {
            "resourceType": "Observation", "id": rid, "status": "final",
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "subject": {"reference": "Patient/c"}, **when,
        })

    for day in range(20, 28):  # eight recent code-X readings set the window's bound
        put(f"c-x{day}", "x", {"effectiveDateTime": f"2024-04-{day}T12:00:00Z"})
    put("c-z", "z", {"effectivePeriod": {"start": "2024-04-01", "end": "2024-04-10"}})
    put("c-y12", "y", {"effectiveDateTime": "2024-04-12T12:00:00Z"})
    put("c-y11", "y", {"effectiveDateTime": "2024-04-11T12:00:00Z"})
    put("c-y-long", "y", {"effectivePeriod": {"start": "2024-04-05", "end": "2024-04-14"}})
    query = f"patient=c&code={LOINC}|y&_sort=-date&_count=1"
    assert walk(service, query) == [["c-y-long"], ["c-y12"], ["c-y11"]]
    monkeypatch.setattr(sqlite_search, "OWNER_WINDOWS", ())
    assert walk(service, query) == [["c-y-long"], ["c-y12"], ["c-y11"]]
    service.storage.close()
