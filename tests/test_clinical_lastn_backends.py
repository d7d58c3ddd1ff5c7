"""`$lastn` against the search engine on the same data, on SQLite and on the MongoDB backend
(mongomock: no MongoDB server runs in CI; see tests/storage_backends.py): for each code,
the answer is what `code=<it>&_sort=-date&_count=max` gives, for frequent codes (CGM
readings) and rare ones (HbA1c) alike; `_include`, paging, and the code catalogue kept
through updates and deletes.

The old $lastn read every matching Observation of the patient, page after page, to keep
the newest per code (all the readings of a year for one HbA1c); the test counts the
resources the storage hands back: they were every reading, they are now `max` per code.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fhir_server.clinical.indexes import AGGREGATE_ZONE
from fhir_server.clinical.lastn import lastn
from fhir_server.model import jsonio
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from tests.storage_backends import mongomock_store, sqlite_store

LOINC = "http://loinc.org"
LAB = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "laboratory"}]}]
T0 = datetime(2024, 1, 1, tzinfo=UTC)
READINGS = 1500


def observation(patient: str, code: str, when: datetime, value: float, unit: str) -> dict:
    return {
        "resourceType": "Observation", "status": "final", "category": LAB,
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "performer": [{"reference": "Practitioner/lab-1"}],
        "effectiveDateTime": when.isoformat(),
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org",
                          "code": unit},
    }


class CountingStorage:
    """Counts the resources the storage hands back to $lastn."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.handed = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def search(self, query, count, cursor, bodies=True):
        page = self.inner.search(query, count, cursor, bodies)
        self.handed += len(page.matches)
        return page


@pytest.fixture(params=["sqlite", "mongomock"], scope="module")
def service(request, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirService]:
    opener = sqlite_store if request.param == "sqlite" else mongomock_store
    path: Path = tmp_path_factory.mktemp(request.param)
    svc = FhirService(opener(path), Settings(db_url=f"sqlite:///{path / 'x.db'}"))
    resources = svc.resources
    prepared = [resources.prepare_create("Observation", observation(
        "p1", "99504-3", T0 + timedelta(minutes=5 * i), 100 + i % 90, "mg/dL"))
        for i in range(READINGS)]
    prepared += [resources.prepare_create("Observation", observation(
        "p1", "4548-4", T0 + timedelta(days=20 * k, hours=k), 7 + k / 10, "%"))
        for k in range(5)]
    prepared += [resources.prepare_create("Observation", observation(
        "p2", "4548-4", T0 + timedelta(days=3), 9.1, "%"))]
    with resources.storage.transaction() as tx:
        resources.create_prepared_many(tx, prepared)
    resources.update("Practitioner", "lab-1", {"resourceType": "Practitioner", "id": "lab-1"})
    yield svc
    svc.storage.close()


def ids(bundle: dict, mode: str = "match") -> list[str]:
    """The ids of the entries, as a client reads the Bundle (serialised and parsed)."""
    entries = jsonio.loads(jsonio.dumps(bundle))["entry"]
    return [e["resource"]["id"] for e in entries if e["search"]["mode"] == mode]


def sorted_search(svc: FhirService, code: str, count: int) -> list[str]:
    query = svc.search.parse("Observation", [
        ("subject", "Patient/p1"), ("code", f"{LOINC}|{code}"), ("_sort", "-date")], False)
    return [s.id for s in svc.storage.search(query, count, None).matches]


@pytest.mark.parametrize("keep", [1, 3])
def test_lastn_is_a_sorted_search_per_code(service: FhirService, keep: int) -> None:
    counting = CountingStorage(service.search.storage)
    service.search.storage = counting
    try:
        bundle = lastn(service.search, [("patient", "p1"), ("category", "laboratory"),
                                        ("max", str(keep))], "", False, None,
                       service.indexed.clinical)
    finally:
        service.search.storage = counting.inner
    expected = sorted_search(service, "4548-4", keep) + sorted_search(service, "99504-3", keep)
    assert ids(bundle) == expected and bundle["total"] == 2 * keep
    # the rare code is read whole (5), the frequent one newest first: never every reading
    assert counting.handed <= 5 + keep + 1


def test_the_compartment_form_include_and_paging(service: FhirService) -> None:
    items = [("category", "laboratory"), ("max", "2"), ("_include", "Observation:performer"),
             ("_count", "3")]
    first = lastn(service.search, items, "http://x", False, ("Patient", "p1"),
                  service.indexed.clinical)
    assert ids(first) == sorted_search(service, "4548-4", 2) + sorted_search(service, "99504-3", 1)
    assert ids(first, "include") == ["lab-1"]
    following = next(link["url"] for link in first["link"] if link["relation"] == "next")
    assert "_lastn_offset=3" in following
    second = lastn(service.search, [*items, ("_lastn_offset", "3")], "http://x", False,
                   ("Patient", "p1"), service.indexed.clinical)
    assert ids(second) == sorted_search(service, "99504-3", 2)[1:]
    assert not any(link["relation"] == "next" for link in second["link"])


def test_the_catalogue_follows_updates_and_deletes(service: FhirService) -> None:
    catalogue = service.indexed.clinical
    assert catalogue.code_counts("p1") == {(LOINC, "4548-4"): 5, (LOINC, "99504-3"): READINGS}
    made = service.resources.create("Observation", observation(
        "p1", "2339-0", T0, 140, "mg/dL")).stored
    assert catalogue.code_counts("p1")[(LOINC, "2339-0")] == 1
    moved = observation("p1", "15074-8", T0, 7.8, "mmol/L")
    service.resources.update("Observation", made.id, {**moved, "id": made.id})
    counts = catalogue.code_counts("p1")
    assert (LOINC, "2339-0") not in counts and counts[(LOINC, "15074-8")] == 1
    service.resources.delete("Observation", made.id)
    assert (LOINC, "15074-8") not in catalogue.code_counts("p1")
    # a rebuild from the stored Observations gives the same catalogue
    before = catalogue.code_counts("p1")
    service.indexed.rebuild()
    assert catalogue.code_counts("p1") == before


def test_the_daily_aggregates_on_both_backends(service: FhirService) -> None:
    """The patient list's figures as each backend sums them, against the readings sent
    (every 5 minutes from 2024-01-01 00:00 UTC, 100 + i % 90 mg/dL)."""
    aggregates = service.indexed.clinical
    window = aggregates.window("2024-01-01", "2024-01-03", ["p1", "p2"])
    days, last, sums = window["p1"]
    # 1500 readings from 01:00 Paris time on the 1st: 288 on each whole day after it
    sent = [(T0 + timedelta(minutes=5 * i), 100 + i % 90) for i in range(READINGS)]
    paris = [(w.astimezone(AGGREGATE_ZONE).date().isoformat(), v) for w, v in sent]
    inside = [v for d, v in paris if "2024-01-01" <= d <= "2024-01-03"]
    assert days == 3 and last == "2024-01-03"
    assert sums[0] == len(inside) and sums[1] == pytest.approx(sum(inside))
    assert sums[5] == sum(1 for v in inside if 70 <= v <= 180)
    assert "p2" not in window  # an HbA1c, no CGM
    assert aggregates.cgm_patients(["p1", "p2"]) == {"p1"}
