"""The translator's queries use the MongoDB indexes: no collection scan for indexed parameters.

Two checks on the filters the translator builds for the searches below:
- structurally (runs everywhere, mongomock included): every index-entry condition is an
  `$elemMatch` with an equality on the parameter code `p`, the first key of that kind's
  index in RESOURCE_INDEXES, which is what lets MongoDB turn it into an index range scan;
- with `explain()` on a real server (MONGODB_URI): the winning plan scans an index and never
  the collection. mongomock has no query planner (its cursors have no explain()), so that
  test is skipped there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage import open_storage
from fhir_server.storage.mongo_indexes import RESOURCE_INDEXES
from fhir_server.storage.mongo_search import Translator, mongo_sort
from tests import storage_backends
from tests.test_api_crud import glucose

INDEXED_SEARCHES = [
    ("Observation", "code=http://loinc.org|15074-8"),
    ("Observation", "code=15074-8,2339-0"),
    ("Observation", "code:text=glucose"),
    ("Observation", "date=ge2024-03-01"),
    ("Observation", "date=2024-03-05"),
    ("Observation", "value-quantity=gt6|http://unitsofmeasure.org|mmol/L"),
    ("Observation", "value-quantity=lt7||mmol/L"),
    ("Observation", "subject=Patient/p1"),
    ("Observation", "subject:identifier=urn:oid:1.2.250.1.213.1.4.10|123"),
    ("Observation", "code-value-quantity=http://loinc.org|15074-8$gt5"),
    ("Observation", "subject:Patient.name=martin"),
    ("Observation", "_profile=https://diatabase.org/fhir/StructureDefinition/BloodGlucose"),
    ("Patient", "name=mart"),
    ("Patient", "name:exact=Martin"),
    ("Patient", "identifier=urn:oid:1.2.250.1.213.1.4.10|123"),
    ("Patient", "birthdate=lt1970"),
    ("Patient", "_has:Observation:subject:code=15074-8"),
]


def index_prefixes() -> dict[str, list[list[str]]]:
    """kind -> the field lists (without the `idx.<kind>.` prefix) of its indexes."""
    by_kind: dict[str, list[list[str]]] = {}
    for model in RESOURCE_INDEXES:
        keys = [name for name, _ in model.document["key"].items()]
        if keys[0].startswith("idx.") and keys[0].endswith(".p"):
            kind = keys[0].split(".")[1]
            by_kind.setdefault(kind, []).append([k.split(".")[2] for k in keys])
    return by_kind


def element_matches(condition: Any) -> Iterator[tuple[str, dict]]:
    """Every (`idx.<kind>`, $elemMatch body) in a filter, at any depth."""
    if isinstance(condition, dict):
        for key, value in condition.items():
            if key.startswith("idx.") and isinstance(value, dict):
                body = value.get("$elemMatch") or value.get("$not", {}).get("$elemMatch")
                if body is not None:
                    yield key, body
                    continue
            yield from element_matches(value)
    elif isinstance(condition, list):
        for item in condition:
            yield from element_matches(item)


def mongo_url() -> str:
    if storage_backends.MONGODB_URI:
        return storage_backends.real_mongodb_url("single-writer")
    return storage_backends.mongomock_url()


@pytest.fixture(scope="module")
def service() -> Iterator[FhirService]:
    service = FhirService(open_storage(mongo_url()), Settings())
    service.resources.update(
        "Patient",
        "p1",
        {
            "resourceType": "Patient",
            "id": "p1",
            "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "123"}],
            "name": [{"family": "Martin"}],
            "birthDate": "1960-01-01",
        },
    )
    for value in (5.2, 6.3, 7.4):
        service.resources.create("Observation", glucose(value))
    yield service
    service.storage.close()


def filter_for(service: FhirService, rtype: str, text: str) -> dict:
    items = [tuple(part.split("=", 1)) for part in text.split("&")]
    query = service.search.parse(rtype, items, strict=True)
    return Translator(service.storage).filter(query, rtype)


@pytest.mark.parametrize(("rtype", "text"), INDEXED_SEARCHES)
def test_index_entry_conditions_fit_an_index(service, rtype, text) -> None:
    condition = filter_for(service, rtype, text)
    prefixes = index_prefixes()
    found = list(element_matches(condition))
    assert found or "_id" in str(condition), condition
    for path, body in found:
        kind = path.split(".")[1]
        # An equality on the first key of the kind's index: at worst a scan of that
        # parameter's index range, never of the collection.
        assert isinstance(body.get("p"), str), f"{path} without an equality on p: {body}"
        assert prefixes.get(kind), f"no index on {path}.p"


def plan_stages(plan: Any) -> Iterator[str]:
    if isinstance(plan, dict):
        if "stage" in plan:
            yield plan["stage"]
        for value in plan.values():
            yield from plan_stages(value)
    elif isinstance(plan, list):
        for item in plan:
            yield from plan_stages(item)


@pytest.mark.skipif(
    not storage_backends.MONGODB_URI,
    reason="explain() needs a real MongoDB server (set MONGODB_URI); mongomock has no query "
    "planner and its cursors have no explain()",
)
@pytest.mark.parametrize(("rtype", "text"), INDEXED_SEARCHES)
def test_explain_shows_an_index_scan(service, rtype, text) -> None:
    condition = filter_for(service, rtype, text)
    cursor = service.storage.collection(rtype).find(condition).sort(mongo_sort([], False))
    plan = cursor.explain()["queryPlanner"]
    stages = set(plan_stages(plan["winningPlan"]))
    assert "COLLSCAN" not in stages, (condition, plan["winningPlan"])
    assert stages & {"IXSCAN", "IDHACK", "EXPRESS_IXSCAN", "EXPRESS_IDHACK"}, stages


def test_every_collection_gets_the_indexes(service) -> None:
    names = set(service.storage.collection("Observation").index_information())
    assert {model.document["name"] for model in RESOURCE_INDEXES} <= names
    history = set(service.storage.history_collection.index_information())
    assert {"instance", "system_time", "type_time"} <= history
