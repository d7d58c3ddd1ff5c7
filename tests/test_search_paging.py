"""Paging under concurrent writes, over HTTP: 5,000 Observations are paged through (default
order, `_sort=date`, `_sort=-_lastUpdated`) while another client keeps inserting matching
Observations; every resource that existed before paging started appears exactly once
(keyset cursors: no offset to shift), and the cursor is useless for another search."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import orjson
import pytest

from fhir_server.settings import Settings
from fhir_server.storage.base import instant
from tests.conftest import RunningServer, database_url

EXISTING = 5_000
CODE = "http://loinc.org|99504-3"


def reading(rid: str, minute: int, value: float) -> dict:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "99504-3"}]},
        "subject": {"reference": "Patient/pg"},
        # 1,000 distinct instants for 5,000 readings: many ties for the keyset to break.
        "effectiveDateTime": f"2024-05-{1 + minute // 1440:02d}T"
        f"{minute // 60 % 24:02d}:{minute % 60:02d}:00Z",
        "valueQuantity": {"value": value, "unit": "mg/dL"},
    }


@pytest.fixture(scope="module")
def paging_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = Settings(
        db_url=database_url(tmp_path_factory.mktemp("paging")), insecure_dev=True
    )
    with RunningServer(settings) as running:
        # Written in-process through the storage layer (with the server's own extractor):
        # 5,000 creations over HTTP would take most of the test budget.
        service = running.app.state.fhir
        rng = random.Random(7)
        with service.storage.transaction() as tx:
            for i in range(EXISTING):
                resource = reading(f"old{i}", rng.randrange(1000), 100 + i % 50)
                now = time.time()
                resource["meta"] = {"versionId": "1", "lastUpdated": instant(now)}
                entries = service.extractor.extract(resource)
                tx.put(
                    "Observation", resource["id"], 1, now, orjson.dumps(resource), entries, "PUT"
                )
        yield running


class Inserted:
    """What the writer has inserted so far, and a way to wait for more."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._grew = threading.Condition()

    def add(self, rid: str) -> None:
        with self._grew:
            self.ids.append(rid)
            self._grew.notify_all()

    def wait_for_more_than(self, count: int) -> None:
        with self._grew:
            assert self._grew.wait_for(lambda: len(self.ids) > count, timeout=120)


def page_through(url: str, query: str, inserted: Inserted) -> list[str]:
    """Every page is fetched after at least one more insert than the one before: the pages
    really interleave with the writes, however the threads are scheduled."""
    ids: list[str] = []
    with httpx.Client(timeout=60) as http:
        link: str | None = f"{url}/Observation?{query}"
        while link:
            inserted.wait_for_more_than(len(inserted.ids))
            bundle = http.get(link).json()
            assert bundle["resourceType"] == "Bundle", bundle
            ids += [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
            link = next((x["url"] for x in bundle["link"] if x["relation"] == "next"), None)
    return ids


@pytest.mark.parametrize(
    "query",
    [
        f"code={CODE}&_count=250",
        f"code={CODE}&_sort=date&_count=250",
        f"code={CODE}&_sort=-_lastUpdated&_count=250",
        f"code={CODE}&_sort=-date,_id&_count=400",
    ],
)
def test_every_existing_resource_once_while_another_client_inserts(paging_server, query):
    url = paging_server.url
    done = threading.Event()
    inserted = Inserted()
    failures: list[str] = []

    def writer() -> None:
        rng = random.Random(query)
        with httpx.Client(base_url=url, timeout=60) as http:
            while not done.is_set():
                rid = f"new{len(inserted.ids)}-{rng.randrange(10**9)}"
                resource = reading(rid, rng.randrange(1000), 200)
                response = http.put(f"/Observation/{rid}", json=resource)
                if response.status_code != 201:
                    failures.append(response.text)
                    return
                inserted.add(rid)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        ids = page_through(url, query, inserted)
    finally:
        done.set()
        thread.join(timeout=60)
    assert failures == []
    counts = Counter(ids)
    existing = {f"old{i}" for i in range(EXISTING)}
    assert {rid for rid in existing if counts[rid] != 1} == set()
    assert max(counts.values()) == 1  # nothing, new or old, is served twice


def test_sorted_pages_are_in_order(paging_server):
    ids_dates = []
    with httpx.Client(timeout=60) as http:
        link = f"{paging_server.url}/Observation?code={CODE}&_sort=-date&_count=1000"
        while link:
            bundle = http.get(link).json()
            ids_dates += [e["resource"]["effectiveDateTime"] for e in bundle["entry"]]
            link = next((x["url"] for x in bundle["link"] if x["relation"] == "next"), None)
    assert ids_dates == sorted(ids_dates, reverse=True)
    assert len(ids_dates) >= EXISTING


def test_cursor_of_one_search_is_refused_by_another(paging_server):
    with httpx.Client(timeout=60) as http:
        bundle = http.get(
            f"{paging_server.url}/Observation?code={CODE}&_sort=date&_count=10"
        ).json()
        next_url = next(x["url"] for x in bundle["link"] if x["relation"] == "next")
        cursor = httpx.URL(next_url).params["_cursor"]
        other = http.get(
            f"{paging_server.url}/Observation", params={"code": CODE, "_cursor": cursor}
        )
        assert other.status_code == 400
        assert other.json()["resourceType"] == "OperationOutcome"
        tampered = http.get(
            f"{paging_server.url}/Observation",
            params={"code": CODE, "_sort": "date", "_cursor": cursor[:-3] + "AAA"},
        )
        assert tampered.status_code == 400
