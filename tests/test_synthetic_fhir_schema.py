"""Every generated resource is valid base FHIR R4 JSON (the official JSON Schema)."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import jsonschema_rs
import orjson

from fhir_server.synthetic import generate

SCHEMA = Path(__file__).parent / "data" / "synthetic" / "fhir.schema.json.gz"


def test_generated_resources_validate_against_the_fhir_r4_schema() -> None:
    validator = jsonschema_rs.validator_for(orjson.loads(gzip.decompress(SCHEMA.read_bytes())))
    seen: Counter[str] = Counter()
    errors = []
    for resource in generate(30, 2, 21):
        seen[resource["resourceType"]] += 1
        errors += [(resource["id"], str(e)) for e in validator.iter_errors(resource)][:1]
    assert set(seen) == {"Patient", "Device", "Condition", "MedicationStatement", "Encounter",
                         "Observation"}
    assert not errors[:5]


def test_the_schema_catches_a_broken_resource() -> None:
    """The check above can fail: a resource missing a required element is refused."""
    validator = jsonschema_rs.validator_for(orjson.loads(gzip.decompress(SCHEMA.read_bytes())))
    resource = next(r for r in generate(1, 1, 21) if r["resourceType"] == "Observation")
    del resource["code"]
    assert not validator.is_valid(resource)
