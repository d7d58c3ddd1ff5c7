"""How the vendored R4 definitions were made (run again to refresh them).

Input: the official FHIR R4 package `hl7.fhir.r4.examples` 4.0.1 (CC0-1.0; it holds every
conformance resource of the specification: StructureDefinitions, ValueSets, CodeSystems)
and `hl7.fhir.r4.expansions` 4.0.1 (the specification's ValueSet expansions), both as
published on the npm registry, unpacked:

    npm pack hl7.fhir.r4.examples@4.0.1 hl7.fhir.r4.expansions@4.0.1
    mkdir ex exp && tar xzf hl7.fhir.r4.examples-4.0.1.tgz -C ex \
        && tar xzf hl7.fhir.r4.expansions-4.0.1.tgz -C exp
    python -m profiles.r4.vendor ex/package exp/package

Output, gzipped JSON:
- `profiles/r4/structuredefinitions.json.gz`: every StructureDefinition with a snapshot,
  without narrative, differential, mappings and the long prose of each element (kept:
  `short`, `definition`, and everything a validator or a snapshot generator reads);
- `terminology/data/r4-valuesets.json.gz`: for every ValueSet a core binding names, its
  codes `{url: {system: [code, ...]}}`, from the published expansion or, where there is
  none, from its `compose` over the package's complete CodeSystems; a ValueSet that cannot
  be expanded that way (filters, systems outside the package such as SNOMED CT) is
  listed with the systems it draws on (`{"systems": [...]}`), so that a code from one of
  them is reported as not checked rather than wrong;
- `terminology/data/r4-codesystems.json.gz`: the codes of every complete CodeSystem.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STRUCTURE_DEFINITIONS = ROOT / "profiles" / "r4" / "structuredefinitions.json.gz"
VALUE_SETS = ROOT / "terminology" / "data" / "r4-valuesets.json.gz"
CODE_SYSTEMS = ROOT / "terminology" / "data" / "r4-codesystems.json.gz"

DROPPED_ELEMENT_KEYS = {
    "comment", "requirements", "alias", "mapping", "example", "meaningWhenMissing",
    "orderMeaning", "mustSupport",
}
KEPT_EXTENSIONS = {
    "http://hl7.org/fhir/StructureDefinition/elementdefinition-bestpractice",
    "http://hl7.org/fhir/StructureDefinition/structuredefinition-regex",
}
DROPPED_DEFINITION_KEYS = {"text", "differential", "mapping"}


def _write(path: Path, data: object) -> None:
    raw = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    path.write_bytes(gzip.compress(raw, 9, mtime=0))
    print(f"{path.relative_to(ROOT)}: {len(raw)} bytes, {path.stat().st_size} gzipped")


def _strip_extensions(value: dict) -> dict:
    if "extension" in value:
        kept = [e for e in value["extension"] if e.get("url") in KEPT_EXTENSIONS]
        value = {k: v for k, v in value.items() if k != "extension"}
        if kept:
            value["extension"] = kept
    return value


def _element(element: dict) -> dict:
    out = {k: v for k, v in element.items() if k not in DROPPED_ELEMENT_KEYS}
    out = _strip_extensions(out)
    if "constraint" in out:
        out["constraint"] = [
            _strip_extensions({k: v for k, v in c.items() if k != "xpath"})
            for c in out["constraint"]
        ]
    if "binding" in out:
        out["binding"] = {
            k: v for k, v in out["binding"].items() if k in ("strength", "valueSet")
        }
    if "type" in out:
        out["type"] = [_strip_extensions(t) for t in out["type"]]
    return out


def structure_definitions(package: Path) -> list[dict]:
    out = []
    for path in sorted(package.glob("StructureDefinition-*.json")):
        definition = json.loads(path.read_text(encoding="utf-8"))
        if "snapshot" not in definition:
            continue
        slim = {k: v for k, v in definition.items() if k not in DROPPED_DEFINITION_KEYS}
        slim = _strip_extensions(slim)
        slim["snapshot"] = {"element": [_element(e) for e in definition["snapshot"]["element"]]}
        out.append(slim)
    return out


def _concepts(concepts: list[dict]) -> list[str]:
    codes = []
    for concept in concepts:
        codes.append(concept["code"])
        codes.extend(_concepts(concept.get("concept", [])))
    return codes


def code_systems(package: Path) -> dict[str, dict]:
    out = {}
    for path in sorted(package.glob("CodeSystem-*.json")):
        system = json.loads(path.read_text(encoding="utf-8"))
        if system.get("content") == "complete" and system.get("concept"):
            out[system["url"]] = {
                "caseSensitive": system.get("caseSensitive", True),
                "codes": _concepts(system["concept"]),
            }
    return out


def _expand(url: str, sets: dict[str, dict], systems: dict[str, dict], seen: set[str]) -> dict:
    """{system: [codes]} from compose, or {"systems": [...]} when not expandable here."""
    value_set = sets.get(url)
    if value_set is None or url in seen:
        return {"systems": []}
    seen = seen | {url}
    compose = value_set.get("compose") or {}
    codes: dict[str, list[str]] = {}
    drawn_on: set[str] = set()
    complete = True
    for include in compose.get("include", []):
        system = include.get("system")
        for imported in include.get("valueSet", []):
            inner = _expand(imported.split("|")[0], sets, systems, seen)
            if "systems" in inner:
                complete = False
                drawn_on.update(inner["systems"])
            else:
                for s, c in inner.items():
                    codes.setdefault(s, []).extend(c)
        if not system:
            continue
        drawn_on.add(system)
        if include.get("filter") or (system not in systems and not include.get("concept")):
            complete = False
        elif include.get("concept"):
            codes.setdefault(system, []).extend(c["code"] for c in include["concept"])
        else:
            codes.setdefault(system, []).extend(systems[system]["codes"])
    if compose.get("exclude"):
        complete = False
    if not complete:
        return {"systems": sorted(drawn_on)}
    return codes


def value_sets(
    package: Path, expansions: Path, definitions: list[dict], systems: dict[str, dict]
) -> dict[str, dict]:
    bound = {
        element["binding"]["valueSet"].split("|")[0]
        for definition in definitions
        for element in definition["snapshot"]["element"]
        if element.get("binding", {}).get("valueSet")
    }
    sets = {}
    for path in sorted(package.glob("ValueSet-*.json")):
        value_set = json.loads(path.read_text(encoding="utf-8"))
        sets[value_set["url"]] = value_set
    expanded = {}
    for path in sorted(expansions.glob("ValueSet-*")):
        try:
            value_set = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue
        if value_set.get("expansion", {}).get("contains") is not None:
            expanded[value_set["url"]] = value_set["expansion"]
    out = {}
    for url in sorted(bound):
        expansion = expanded.get(url)
        if expansion is not None and not expansion.get("parameter", [{}])[0].get(
            "name", ""
        ).startswith("limitedExpansion"):
            codes: dict[str, list[str]] = {}
            stack = list(expansion["contains"])
            while stack:
                item = stack.pop(0)
                if item.get("code") and not item.get("abstract"):
                    codes.setdefault(item.get("system", ""), []).append(item["code"])
                stack.extend(item.get("contains", []))
            out[url] = codes
        else:
            out[url] = _expand(url, sets, systems, set())
    return out


def main(package: str, expansions: str) -> None:
    package_dir, expansion_dir = Path(package), Path(expansions)
    definitions = structure_definitions(package_dir)
    systems = code_systems(package_dir)
    _write(STRUCTURE_DEFINITIONS, definitions)
    _write(CODE_SYSTEMS, systems)
    _write(VALUE_SETS, value_sets(package_dir, expansion_dir, definitions, systems))


if __name__ == "__main__":
    main(*sys.argv[1:3])
