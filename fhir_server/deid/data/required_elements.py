"""How `required-elements-r4.json` was made (run again to refresh it).

Input: the StructureDefinitions of the official FHIR R4 package `hl7.fhir.r4.examples`
4.0.1 (CC0-1.0), as a JSON list (gzipped or not) or the unpacked package folder:

    python -m fhir_server.deid.data.required_elements STRUCTUREDEFINITIONS OUT.json

Output: for every resource type, datatype and backbone element, by the name the vendored
JSON Schema gives it (`Device_DeviceName`), the elements its snapshot requires (min >= 1);
a required choice element is written `value[x]`. The engine drops an object whose required
element it removed (and suppresses a resource whose own one it removed): FHIR readers
refuse them, and they would mean something else.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

from fhir_server.deid.elements import elements


def _definitions(source: Path) -> list[dict[str, Any]]:
    if source.is_dir():
        return [
            json.loads(p.read_text()) for p in sorted(source.glob("StructureDefinition-*.json"))
        ]
    raw = source.read_bytes()
    return json.loads(gzip.decompress(raw) if source.suffix == ".gz" else raw)


def required(definitions: list[dict[str, Any]]) -> dict[str, list[str]]:
    found: dict[str, set[str]] = {}
    for sd in definitions:
        if sd.get("derivation") != "specialization" or sd.get("kind") not in (
            "resource",
            "complex-type",
        ):
            continue
        root = sd["type"]
        for element in sd.get("snapshot", {}).get("element", []):
            path = element["path"].split(".")
            if len(path) < 2 or element.get("min", 0) < 1:
                continue
            definition = root
            try:
                for segment in path[1:-1]:
                    definition = elements(definition)[segment].type
            except KeyError:
                continue  # a path the schema does not have (primitive internals)
            found.setdefault(definition, set()).add(path[-1])
    return {name: sorted(names) for name, names in sorted(found.items())}


if __name__ == "__main__":
    out = required(_definitions(Path(sys.argv[1])))
    Path(sys.argv[2]).write_text(json.dumps(out, indent=0, sort_keys=True) + "\n")
