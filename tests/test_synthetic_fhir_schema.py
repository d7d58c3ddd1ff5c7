"""Every generated resource is valid base FHIR R4 JSON (the server's structural validator,
built on the official JSON Schema)."""

from __future__ import annotations

from collections import Counter

from fhir_server.model.validation import validate_structure
from fhir_server.synthetic import generate


def test_generated_resources_validate_against_the_fhir_r4_schema() -> None:
    seen: Counter[str] = Counter()
    errors = []
    for resource in generate(30, 2, 21):
        seen[resource["resourceType"]] += 1
        errors += [(resource["id"], i.diagnostics) for i in validate_structure(resource)][:1]
    assert set(seen) == {
        "Patient", "Device", "Condition", "MedicationStatement", "Encounter", "Observation"
    }
    assert not errors[:5]


def test_the_schema_catches_a_broken_resource() -> None:
    """The check above can fail: a resource missing a required element is refused."""
    resource = next(r for r in generate(1, 1, 21) if r["resourceType"] == "Observation")
    del resource["code"]
    assert validate_structure(resource)
