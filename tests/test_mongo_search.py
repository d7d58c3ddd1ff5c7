"""The MongoDB search translator gives the SQLite backend's answers, search by search.

The same data (one Synthea patient bundle and the official R4 examples from tests/data/fhir)
is loaded into a SQLite store and a MongoDB store; every search below must give the same
matches in the same order, the same totals, the same included resources, and page through
the same way. The MongoDB store runs on mongomock (an in-memory imitation of MongoDB: no
server can run on the CI machines), or on the real server when MONGODB_URI is set.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from fhir_server.ingest.loader import Loader
from fhir_server.model import jsonio
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage import open_storage
from fhir_server.storage.cursor import CursorError
from tests import storage_backends

DATA = Path(__file__).parent / "data" / "fhir"
SYNTHEA = DATA / "synthea" / "Louis_Maggio_2e275d4b-855a-4eb2-9021-5410aa8acd4f.json"
PATIENT = "bae2bf00-eca1-47fb-bb43-272f8de1449c"
ENCOUNTER = "6f8a78a4-8b09-48b4-89b0-898a2e7df6c4"


def mongo_url() -> str:
    if storage_backends.MONGODB_URI:
        supports = storage_backends.real_mongodb_supports_transactions()
        return storage_backends.real_mongodb_url(None if supports else "single-writer")
    return storage_backends.mongomock_url()


def with_fixed_ids(bundle: dict) -> dict:
    """The transaction bundle with PUTs to its own uuids, so both stores get the same ids."""
    entries = []
    for entry in bundle["entry"]:
        resource = entry["resource"]
        rid = entry["fullUrl"].removeprefix("urn:uuid:")
        resource = {**resource, "id": rid}
        url = f"{resource['resourceType']}/{rid}"
        entries.append({**entry, "resource": resource, "request": {"method": "PUT", "url": url}})
    return {**bundle, "entry": entries}


LENIENT = Settings(validation="lenient")


def load(service: FhirService) -> None:
    bundle = with_fixed_ids(jsonio.loads(SYNTHEA.read_bytes()))
    service.bundles("").process(bundle, lambda url, items: (200, None))
    examples = (DATA / "r4-examples").glob("*.json")
    # AuditEvents are written by the server alone (fhir_server/audit/): not loadable.
    report = Loader(service).load_files(
        sorted(p for p in examples if not p.name.startswith("AuditEvent-"))
    )
    assert not report.failed, report.failed


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FhirService, ...]]:
    folder = tmp_path_factory.mktemp("search")
    # lenient: the official example MedicationRequest-medrx0301 breaks an R4 rule (its
    # dispenseRequest.performer is a Practitioner) and the search tests want it stored
    sqlite = FhirService(open_storage(f"sqlite:///{folder / 'ref.db'}"), LENIENT)
    mongo = FhirService(open_storage(mongo_url()), LENIENT)
    for service in (sqlite, mongo):
        load(service)
    yield sqlite, mongo
    sqlite.storage.close()
    mongo.storage.close()


def answer(service: FhirService, rtype: str | None, items: list[tuple[str, str]]) -> dict:
    """Matches, totals and includes of every page, following next links to the end."""
    query = service.search.parse(rtype, items, strict=True)
    count = query.result.count
    pages = []
    cursor = None
    while True:
        page = service.storage.search(query, count, cursor)
        pages.append(
            (
                [(m.resource_type, m.id) for m in page.matches],
                page.total,
                sorted((r.resource_type, r.id) for r in page.included),
            )
        )
        if not page.next_cursor or len(pages) > 50:
            break
        cursor = page.next_cursor
    return {"pages": pages}


SEARCHES: list[tuple[str | None, str]] = [
    ("Patient", "gender=male"),
    ("Patient", "name=lou"),
    ("Patient", "name:exact=Louis"),
    ("Patient", "name:contains=aggi"),
    ("Patient", "birthdate=ge1970&birthdate=lt1980"),
    ("Patient", "birthdate=1976-01-16"),
    (
        "Patient",
        "identifier=http://hospital.smarthealthit.org|2e275d4b-855a-4eb2-9021-5410aa8acd4f",
    ),
    ("Patient", "_id=example,pat1"),
    ("Patient", "_id:not=example"),
    ("Observation", "code=http://loinc.org|8302-2"),
    ("Observation", "code=8302-2,29463-7"),
    ("Observation", "code=|8302-2"),
    ("Observation", "code=http://loinc.org|"),
    ("Observation", "code:text=body"),
    ("Observation", "code:not=http://loinc.org|8302-2&subject=Patient/" + PATIENT),
    ("Observation", "value-quantity=gt100"),
    ("Observation", "value-quantity=lt80||kg"),
    ("Observation", "value-quantity=ap180|http://unitsofmeasure.org|cm"),
    ("Observation", "value-quantity=ne180"),
    ("Observation", "value-quantity:missing=true&_count=500"),
    ("Observation", "date=ge2015&date=lt2018"),
    ("Observation", "date=sa2019"),
    ("Observation", "date=eb2014"),
    ("Observation", "date=2013-03-08"),
    ("Observation", "date=ne2013"),
    ("Observation", "subject=Patient/" + PATIENT + "&_count=7"),
    ("Observation", "subject=" + PATIENT + "&_sort=-date,code&_count=9"),
    ("Observation", "subject:Patient.name=louis&_count=100"),
    ("Observation", "patient.gender=male&code=8302-2"),
    ("Observation", "encounter.class=EMER"),
    ("Observation", "code-value-quantity=http://loinc.org|8302-2$gt150"),
    ("Observation", "combo-code-value-quantity=http://loinc.org|29463-7$lt90"),
    ("Observation", "component-code-value-quantity=http://loinc.org|8480-6$gt100"),
    ("Observation", "status=final&_sort=value-quantity&_count=10"),
    ("Observation", "_sort=-value-quantity,_id&_count=15"),
    ("Observation", "_sort=code,-date&_count=20"),
    ("Observation", "_count=0"),
    ("Observation", "_summary=count&code=8302-2"),
    ("Observation", "_total=accurate&_count=5"),
    ("Observation", "code=8302-2&_include=Observation:subject&_include=Observation:encounter"),
    ("Observation", "code=8302-2&_include=Observation:*"),
    ("Encounter", "_revinclude=Observation:encounter&_id=" + ENCOUNTER),
    ("Encounter", "_sort=-date&_count=4"),
    ("Encounter", "class=EMER&_revinclude=Condition:encounter&_include:iterate=Condition:subject"),
    ("Patient", "_has:Observation:patient:code=8302-2"),
    ("Patient", "_has:Observation:subject:value-quantity=gt1000"),
    ("Patient", "_has:Encounter:patient:_has:Observation:encounter:code=8302-2"),
    ("Condition", "clinical-status=active&_sort=-onset-date"),
    ("Condition", "code=http://snomed.info/sct|128613002"),
    ("MedicationRequest", "code=563026&_include=MedicationRequest:requester"),
    ("Immunization", "vaccine-code=140&date=ge2015"),
    ("Claim", "patient=" + PATIENT + "&_sort=created&_count=6"),
    ("Practitioner", "_sort=-_id"),
    ("Organization", "name=hospital&_sort=name"),
    ("Observation", "_lastUpdated=gt2000-01-01&_count=200&_total=accurate"),
    ("Observation", "_lastUpdated=lt2000-01-01"),
    (None, "_type=Patient,Practitioner&_sort=_id&_count=3"),
    (None, "_type=Patient,Organization,Practitioner&_count=4"),
    (None, "_id=example,f001,pat1&_sort=-_id"),
    (None, "_type=Patient,Observation&_lastUpdated=gt2000-01-01&_sort=-_id&_count=9"),
    (None, "_type=Condition,Encounter&_sort=_id&_count=6&_total=accurate"),
    ("Patient", "_id=" + PATIENT + "&_revinclude=*"),
    ("Patient", "_id=example&_revinclude=*"),
    ("Organization", "_revinclude=*&_count=3"),
    ("Encounter", "_id=" + ENCOUNTER + "&_revinclude=*&_include=*"),
    (None, "_type=Patient,Practitioner&_id=example&_revinclude=*"),
    (None, "_type=Patient,Practitioner&_sort=-name&_count=2"),
    (None, "_type=Observation,Condition&_sort=code,_id&_count=25"),
    (None, "_type=Observation,Encounter&_sort=-date&_count=30&_total=accurate"),
    (None, "_type=Patient,Condition&_summary=count"),
    (None, "_type=Patient,Observation&_lastUpdated:missing=false&_count=40"),
]


def items_of(text: str) -> list[tuple[str, str]]:
    return [tuple(part.split("=", 1)) for part in text.split("&")]  # type: ignore[misc]


@pytest.mark.parametrize(("rtype", "text"), SEARCHES, ids=[f"{t}?{q}" for t, q in SEARCHES])
def test_same_answer_as_sqlite(services, rtype, text) -> None:
    sqlite, mongo = services
    expected = answer(sqlite, rtype, items_of(text))
    assert answer(mongo, rtype, items_of(text)) == expected


def everything(service: FhirService, patient: str, items: list[tuple[str, str]]) -> list:
    """The match ids of every page of `Patient/{patient}/$everything`, following next links."""
    pages = []
    cursor: list[tuple[str, str]] = []
    while len(pages) <= 50:
        bundle = service.search.everything("Patient", patient, items + cursor, "", strict=True)
        pages.append([e["fullUrl"] for e in bundle["entry"]])  # "/Type/id" (base "")
        link = next((x["url"] for x in bundle["link"] if x["relation"] == "next"), None)
        if link is None:
            break
        cursor = [("_cursor", parse_qs(urlsplit(link).query)["_cursor"][0])]
    return pages


@pytest.mark.parametrize(
    "text",
    [
        "",
        "_count=7",
        "_type=Observation,Patient&_count=11",
        "_type=Encounter,Condition",
        "_count=0",
    ],
)
def test_everything_matches_sqlite(services, text) -> None:
    """`$everything`: one search over the compartment's types, each with its own links."""
    sqlite, mongo = services
    items = items_of(text) if text else []
    expected = everything(sqlite, PATIENT, items)
    assert everything(mongo, PATIENT, items) == expected
    if text != "_count=0":
        assert sum(len(page) for page in expected) > 10


def test_most_searches_find_something(services) -> None:
    """The comparison above is only meaningful if the searches are not all empty."""
    sqlite, _ = services
    found = [t for r, t in SEARCHES if answer(sqlite, r, items_of(t))["pages"][0][0]]
    assert len(found) >= 0.75 * len(SEARCHES)


def test_paging_back_gives_the_previous_page(services) -> None:
    _, mongo = services
    query = mongo.search.parse("Observation", items_of("_sort=-date,_id&_count=5"), strict=True)
    first = mongo.storage.search(query, 5, None)
    second = mongo.storage.search(query, 5, first.next_cursor)
    assert second.previous_cursor
    back = mongo.storage.search(query, 5, second.previous_cursor)
    assert [m.id for m in back.matches] == [m.id for m in first.matches]
    assert len({m.id for m in first.matches} | {m.id for m in second.matches}) == 10


def test_tampered_cursor_is_refused(services) -> None:
    _, mongo = services
    query = mongo.search.parse("Observation", items_of("_count=5"), strict=True)
    page = mongo.storage.search(query, 5, None)
    assert page.next_cursor
    with pytest.raises(CursorError):
        mongo.storage.search(query, 5, page.next_cursor[:-3] + "AAA")


def test_deleted_resources_are_not_found(services) -> None:
    sqlite, mongo = services
    for service in (sqlite, mongo):
        service.resources.delete("Patient", "pat1")
        query = service.search.parse("Patient", items_of("_id=pat1"), strict=True)
        assert service.storage.search(query, 10, None).matches == []
        assert service.storage.read("Patient", "pat1").deleted


def boundary_observation(rid: str, value: float, when: str) -> dict:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
        "effectiveDateTime": when,
        "valueQuantity": {
            "value": value,
            "unit": "mg/dL",
            "system": "http://unitsofmeasure.org",
            "code": "mg/dL",
        },
    }


BOUNDARY_DATA = [
    ("b1", 100, "2024-01-01T00:00:00Z"),
    ("b2", 100.4, "2023-12-31T23:59:59Z"),
    ("b3", 99.5, "2024-01-01"),
    ("b4", 150, "2024"),
    ("b5", 99.4999, "2024-06-30T12:00:00+02:00"),
]
# Quantities in other units, or with only a unit text (no UCUM code, so no canonical form:
# they are compared on their own value and unit text).
UNIT_QUANTITIES = [
    ("u1", {"value": 100, "unit": "mg/dL"}),
    (
        "u2",
        {"value": 5.55, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
    ),
    ("u3", {"value": 1, "unit": "g/L", "system": "http://unitsofmeasure.org", "code": "g/L"}),
    ("u4", {"value": 100, "unit": "mg/dl", "system": "http://example.org/units", "code": "mgdl"}),
]
BOUNDARY_SEARCHES = (
    [
        f"value-quantity={prefix}{number}"
        for prefix in ("", "gt", "ge", "lt", "le", "ne", "sa", "eb", "ap")
        for number in ("100", "100.0", "99.5")
    ]
    + [
        f"date={prefix}{when}"
        for prefix in ("", "gt", "ge", "lt", "le", "ne", "sa", "eb", "ap")
        for when in ("2024", "2024-01-01", "2024-01-01T00:00:00Z", "2023-12-31T23:59:59Z")
    ]
    + [
        f"value-quantity={prefix}{number}{unit}"
        for prefix in ("", "gt", "le", "ne", "ap")
        for number in ("100", "5.55")
        for unit in (
            "||mg/dL",
            "|http://unitsofmeasure.org|mg/dL",
            "|http://unitsofmeasure.org|mmol/L",
            "||mgdl",
            "|http://example.org/units|mgdl",
            "|http://unitsofmeasure.org|",
        )
    ]
)


@pytest.fixture(scope="module")
def boundary_services(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("boundary")
    stores = (
        FhirService(open_storage(f"sqlite:///{folder / 'ref.db'}"), LENIENT),
        FhirService(open_storage(mongo_url()), LENIENT),
    )
    for service in stores:
        for rid, value, when in BOUNDARY_DATA:
            service.resources.update("Observation", rid, boundary_observation(rid, value, when))
        for rid, quantity in UNIT_QUANTITIES:
            resource = {**boundary_observation(rid, 0, "2024-02-01"), "valueQuantity": quantity}
            service.resources.update("Observation", rid, resource)
    yield stores
    for service in stores:
        service.storage.close()


@pytest.mark.parametrize("text", BOUNDARY_SEARCHES)
def test_prefixes_at_the_boundaries_match_sqlite(boundary_services, text) -> None:
    """Values and dates exactly on a searched bound: strict and non-strict comparisons."""
    sqlite, mongo = boundary_services
    assert answer(mongo, "Observation", items_of(text)) == answer(
        sqlite, "Observation", items_of(text)
    )


# -- random searches (fixed seed) ------------------------------------------------------------

RANDOM_PARTS = {
    "Observation": [
        ("code", ["8302-2", "http://loinc.org|29463-7", "72514-3,4548-4", "http://loinc.org|"]),
        ("date", ["{p}2013", "{p}2016-05", "{p}2019-03-08T19:28:31+00:00", "{p}2021"]),
        ("value-quantity", ["{p}80", "{p}5.6", "{p}170|http://unitsofmeasure.org|cm"]),
        ("subject", [f"Patient/{PATIENT}", "Patient/example", PATIENT]),
        ("status", ["final", "amended"]),
        ("category", ["vital-signs", "laboratory"]),
        ("code:missing", ["false"]),
        ("encounter:missing", ["true", "false"]),
    ],
    "Condition": [
        ("clinical-status", ["active", "resolved"]),
        ("onset-date", ["{p}2000", "{p}2015-01-01"]),
        ("subject", [f"Patient/{PATIENT}"]),
    ],
    "Encounter": [
        ("date", ["{p}2010", "{p}2018-06-01"]),
        ("class", ["AMB", "EMER"]),
        ("type", ["http://snomed.info/sct|185345009"]),
    ],
}
SORTS = {
    "Observation": ["", "date", "-date", "code,-value-quantity", "-_id", "value-quantity,date"],
    "Condition": ["", "onset-date", "-code"],
    "Encounter": ["", "-date", "class,date"],
}
PREFIXES = ("", "gt", "ge", "lt", "le", "ne", "sa", "eb")


def random_searches(count: int, seed: int = 7) -> list[tuple[str, str]]:
    import random

    rng = random.Random(seed)
    searches = []
    for _ in range(count):
        rtype = rng.choice(sorted(RANDOM_PARTS))
        parts = rng.sample(RANDOM_PARTS[rtype], k=rng.randint(1, 3))
        items = [
            f"{name}={rng.choice(values).format(p=rng.choice(PREFIXES))}" for name, values in parts
        ]
        sort = rng.choice(SORTS[rtype])
        if sort:
            items.append(f"_sort={sort}")
        items.append(f"_count={rng.choice([2, 5, 50])}")
        searches.append((rtype, "&".join(items)))
    return searches


@pytest.mark.parametrize(("rtype", "text"), random_searches(60))
def test_random_searches_match_sqlite(services, rtype, text) -> None:
    sqlite, mongo = services
    assert answer(mongo, rtype, items_of(text)) == answer(sqlite, rtype, items_of(text))
