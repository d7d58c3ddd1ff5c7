"""Searches through a real FHIR client library (fhirpy): search(), include(), revinclude(),
sort(), limit(), fetch(), fetch_all() and count(), against a real server holding the
conformance data set (tests/data/search)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fhirpy import SyncFHIRClient

from fhir_server.settings import Settings
from tests.conftest import RunningServer, database_url

DATA = Path(__file__).parent / "data" / "search" / "conformance_resources.json"


@pytest.fixture(scope="module")
def fhir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncFHIRClient]:
    settings = Settings(
        db_url=database_url(tmp_path_factory.mktemp("fhirpy")), insecure_dev=True
    )
    with RunningServer(settings) as running, httpx.Client(base_url=running.url, timeout=60) as http:
        for resource in json.loads(DATA.read_text("utf-8")):
            response = http.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
            assert response.status_code in (200, 201)
        yield SyncFHIRClient(running.url)


def ids(resources) -> list[str]:
    return [r.id for r in resources]


def test_search_with_prefixes_and_modifiers(fhir):
    assert ids(fhir.resources("Patient").search(name="dup").fetch()) == ["p1", "p4"]
    observations = fhir.resources("Observation").search(date__ge="2024-03-15", status="final")
    # latest first (an unsorted date range, search/implied_order.py)
    assert ids(observations.fetch()) == ["o9", "o4", "o10", "o3"]
    assert ids(fhir.resources("Patient").search(gender__not="female").fetch()) == [
        "p3",
        "p4",
        "p5",
    ]


def test_sort_and_limit_and_fetch_all(fhir):
    search = fhir.resources("Observation").search(code="2339-0,99504-3").sort("-date").limit(2)
    assert ids(search.fetch()) == ["o9", "o5"]
    assert ids(search.fetch_all()) == ["o9", "o5", "o4", "o1", "o7"]
    assert search.count() == 5
    assert ids(fhir.resources("Patient").sort("gender", "-birthdate").fetch()) == [
        "p2",
        "p1",
        "p4",
        "p3",
        "p5",
    ]


def test_include_and_revinclude(fhir):
    bundle = (
        fhir.resources("Observation")
        .search(code="99504-3")
        .include("Observation", "patient")
        .fetch_raw()
    )
    modes = [(e["resource"]["id"], e["search"]["mode"]) for e in bundle.entry]
    assert modes == [("o4", "match"), ("o5", "match"), ("p2", "include")]
    patients = fhir.resources("Patient").search(_id="p2").revinclude("Condition", "subject")
    raw = patients.fetch_raw()
    assert [e["resource"]["id"] for e in raw.entry] == ["p2", "c2"]


def test_chained_and_has_searches(fhir):
    chained = fhir.resources("Observation").search(**{"patient.organization.name": "clinique"})
    assert ids(chained.fetch()) == ["o4", "o5"]
    # fhirpy turns `__` into `.`: _has keys are passed as they are spelt in the URL.
    reverse = fhir.resources("Patient").search(**{"_has:Observation:patient:code": "4548-4"})
    assert ids(reverse.fetch()) == ["p1", "p3"]
