"""Which patients an audited page of resources concerns (fhir_server/audit/patients.py)."""

from __future__ import annotations

import orjson

from fhir_server.audit.patients import patients_of, patients_of_all
from fhir_server.storage.base import StoredResource


def stored(resource: dict | None, resource_type: str, rid: str) -> StoredResource:
    json = orjson.dumps(resource) if resource is not None else None
    return StoredResource(resource_type, rid, 1, 0.0, resource is None, json)


PAGE = [
    stored({"resourceType": "Patient", "id": "p1"}, "Patient", "p1"),
    stored(
        {"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p2"}},
        "Observation",
        "o1",
    ),
    stored(
        {
            "resourceType": "Observation",
            "id": "o2",
            "subject": {"reference": "https://fhir.example.org/Patient/p3/_history/2"},
            "performer": [{"reference": "Practitioner/d1"}],
        },
        "Observation",
        "o2",
    ),
    # a reference to a patient from a type outside the Patient compartment names nobody
    stored(
        {"resourceType": "Library", "id": "l1", "relatedArtifact": [{"resource": "Patient/p4"}]},
        "Library",
        "l1",
    ),
    # the end of one resource and the start of the next never make a reference together
    stored(
        {"resourceType": "Observation", "id": "o3", "note": [{"text": "x"}]}, "Observation", "o3"
    ),
    stored(
        {"resourceType": "Observation", "id": "o4", "code": {"text": "Patient/p5"}},
        "Observation",
        "o4",
    ),
    stored(None, "Observation", "gone"),  # a deletion in a history page
]


def test_a_page_names_the_same_patients_as_its_resources_one_by_one() -> None:
    one_by_one: set[str] = set()
    for resource in PAGE:
        one_by_one |= patients_of(resource.resource_type, resource.id, resource.json)
    assert one_by_one == {"p1", "p2", "p3"}
    assert patients_of_all(PAGE) == one_by_one
    assert patients_of_all([]) == set()
