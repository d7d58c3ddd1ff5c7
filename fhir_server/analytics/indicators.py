"""The shipped diabetes indicators: Measures and the ViewDefinitions their SQL reads
(data in data/indicators/), stored at start like the profiles, under their own ids."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def shipped_indicators() -> list[dict[str, Any]]:
    folder = resources.files("fhir_server.analytics").joinpath("data/indicators")
    found = [json.loads(p.read_text()) for p in folder.iterdir() if p.name.endswith(".json")]
    # views first: a Measure's SQL reads them
    return sorted(found, key=lambda r: (r["resourceType"] != "ViewDefinition", r["id"]))
