"""The R4 resource types, taken from the vendored official JSON Schema."""

from __future__ import annotations

import gzip
import json
import re
from functools import cache
from importlib import resources
from typing import Any

ID_PATTERN = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


@cache
def fhir_schema() -> dict[str, Any]:
    """The official FHIR R4 JSON Schema (fhir.schema.json), loaded once.

    The published schema was generated for 4.0.0, so its FHIRVersion enums stop there; R4's
    technical correction 4.0.1 (what this server speaks) is added in memory, the file itself
    stays unmodified.
    """
    data = resources.files("fhir_server.model").joinpath("data/fhir.schema.json.gz").read_bytes()
    schema = json.loads(gzip.decompress(data))
    _allow_fhir_401(schema)
    _allow_id_extensions(schema)
    return schema


def _allow_id_extensions(schema: dict[str, Any]) -> None:
    """A resource's `id` may carry extensions (`_id`), as every primitive may: the schema
    generator left `_id` out for resources, the reference validator accepts it."""
    for definition in schema.get("definitions", {}).values():
        properties = definition.get("properties") if isinstance(definition, dict) else None
        if properties and "resourceType" in properties and "id" in properties:
            properties.setdefault("_id", {"$ref": "#/definitions/Element"})


def _allow_fhir_401(node: Any) -> None:
    if isinstance(node, dict):
        enum = node.get("enum")
        if isinstance(enum, list) and "4.0.0" in enum and "4.0.1" not in enum:
            enum.append("4.0.1")
        for value in node.values():
            _allow_fhir_401(value)
    elif isinstance(node, list):
        for value in node:
            _allow_fhir_401(value)


@cache
def resource_types() -> frozenset[str]:
    return frozenset(fhir_schema()["discriminator"]["mapping"])


# Resource types beyond R4's that the server stores and validates like its own: the SQL on
# FHIR v2 ViewDefinition (a structure of the SQL on FHIR guide, not an R4 resource; checked
# against model/data/ViewDefinition.schema.json, its FHIRPath by fhir_server/analytics).
ADDITIONAL_RESOURCE_TYPES = frozenset({"ViewDefinition"})


def is_resource_type(name: str) -> bool:
    return name in resource_types() or name in ADDITIONAL_RESOURCE_TYPES


@cache
def additional_schema(resource_type: str) -> dict[str, Any]:
    """The JSON Schema of one of ADDITIONAL_RESOURCE_TYPES."""
    path = resources.files("fhir_server.model").joinpath(f"data/{resource_type}.schema.json")
    return json.loads(path.read_text())


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.match(value) is not None
