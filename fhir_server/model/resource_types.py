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
    """The official FHIR R4 JSON Schema (fhir.schema.json), loaded once."""
    data = resources.files("fhir_server.model").joinpath("data/fhir.schema.json.gz").read_bytes()
    return json.loads(gzip.decompress(data))


@cache
def resource_types() -> frozenset[str]:
    return frozenset(fhir_schema()["discriminator"]["mapping"])


def is_resource_type(name: str) -> bool:
    return name in resource_types()


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.match(value) is not None
