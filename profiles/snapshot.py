"""A profile's snapshot, generated from its differential and the R4 base definitions.

Other tools (the HL7 validator, HAPI, Firely, fhir.resources) load a profile through its
snapshot: every element of the type, with the profile's changes merged in. The snapshot
starts as the base type's (`Observation`), and each differential element, in order:
- changes the snapshot element with the same id (min, max, type, binding, constraints
  added to the base's, fixed / pattern values, slicing, ...);
- below a datatype the base does not expand (`Observation.code.coding`,
  `Observation.value[x].code`), first inserts that datatype's elements (from its own
  snapshot, paths rewritten), the choice's type being the one the profile keeps;
- a slice (`Observation.code.coding:loinc`) is a copy of the sliced element, named, placed
  after the sliced element's subtree and the slices before it.
Each element keeps `base` (path, min, max of where it comes from in the core definitions).
"""

from __future__ import annotations

import copy

from profiles.core_model import CORE_BASE, core_definitions

FHIR_VERSION = "4.0.1"
_MERGED_LISTS = ("constraint", "condition")


class SnapshotError(ValueError):
    """A differential element this generator cannot place (names it)."""


def with_snapshot(definition: dict, definitions: dict[str, dict] | None = None) -> dict:
    """A copy of `definition` with `fhirVersion` and a generated `snapshot`."""
    definitions = definitions if definitions is not None else core_definitions()
    out = copy.deepcopy(definition)
    out.setdefault("fhirVersion", FHIR_VERSION)
    out["snapshot"] = {"element": generate_snapshot(definition, definitions)}
    return out


def generate_snapshot(definition: dict, definitions: dict[str, dict]) -> list[dict]:
    base = definitions.get(definition.get("baseDefinition", "").split("|")[0])
    if base is None:
        raise SnapshotError(f"the base {definition.get('baseDefinition')} is not known")
    elements = [_from_base(e) for e in base["snapshot"]["element"]]
    for diff in (definition.get("differential") or {}).get("element") or ():
        element_id = diff.get("id") or diff["path"] + (
            f":{diff['sliceName']}" if diff.get("sliceName") else ""
        )
        index = _find(elements, element_id)
        if index is None:
            index = _make_room(elements, element_id, definitions)
        _merge(elements[index], diff)
    return elements


def _from_base(element: dict) -> dict:
    out = copy.deepcopy(element)
    out.setdefault("base", {"path": element["path"], "min": element.get("min", 0),
                            "max": element.get("max", "*")})
    return out


def _find(elements: list[dict], element_id: str) -> int | None:
    for index, element in enumerate(elements):
        if element.get("id") == element_id:
            return index
    return None


def _subtree_end(elements: list[dict], index: int) -> int:
    """The index after the element at `index` and everything below it (its slices too)."""
    element_id = elements[index]["id"]
    end = index + 1
    while end < len(elements) and (
        elements[end]["id"].startswith(element_id + ".")
        or elements[end]["id"].startswith(element_id + ":")
    ):
        end += 1
    return end


def _make_room(elements: list[dict], element_id: str, definitions: dict[str, dict]) -> int:
    """Insert what `element_id` needs (a slice, or its parent's datatype children) and
    return its index."""
    parent_id, _, last = element_id.rpartition(".")
    name, _, slice_name = last.partition(":")
    if slice_name:
        sliced_id = f"{parent_id}.{name}" if parent_id else name
        sliced = _find(elements, sliced_id)
        if sliced is None:
            sliced = _make_room(elements, sliced_id, definitions)
        piece = copy.deepcopy(elements[sliced])
        piece.pop("slicing", None)
        piece["id"], piece["sliceName"] = element_id, slice_name
        at = _subtree_end(elements, sliced)
        elements.insert(at, piece)
        return at
    parent = _find(elements, parent_id)
    if parent is None:
        parent = _make_room(elements, parent_id, definitions)
    _expand(elements, parent, definitions)
    found = _find(elements, element_id)
    if found is None:
        raise SnapshotError(f"{element_id} is not an element of the base definitions")
    return found


def _expand(elements: list[dict], index: int, definitions: dict[str, dict]) -> None:
    """Insert the children of a datatype element (once)."""
    parent = elements[index]
    if index + 1 < len(elements) and elements[index + 1]["id"].startswith(parent["id"] + "."):
        return  # already expanded
    types = parent.get("type") or []
    if len(types) != 1:
        raise SnapshotError(f"{parent['id']} has {len(types)} types: keep one to profile below")
    code = types[0]["code"]
    type_definition = definitions.get(CORE_BASE + code)
    if type_definition is None:
        raise SnapshotError(f"the type {code} of {parent['id']} is not known")
    children = []
    for child in type_definition["snapshot"]["element"][1:]:
        rewritten = _from_base(child)
        rewritten["path"] = parent["path"] + child["path"][len(code):]
        rewritten["id"] = parent["id"] + child["id"][len(code):]
        children.append(rewritten)
    elements[index + 1:index + 1] = children


def _merge(element: dict, diff: dict) -> None:
    for key, value in diff.items():
        if key in ("id", "path"):
            continue
        if key in _MERGED_LISTS:
            existing = element.get(key) or []
            kept = [c for c in existing
                    if not isinstance(c, dict) or c.get("key") not in {
                        v.get("key") for v in value if isinstance(v, dict)}]
            element[key] = kept + copy.deepcopy(value)
        elif key.startswith(("fixed", "pattern")):
            for old in [k for k in element if k.startswith(key[:5])]:
                element.pop(old)
            element[key] = copy.deepcopy(value)
        else:
            element[key] = copy.deepcopy(value)
    if "max" in diff and "base" in element and element["base"].get("max") == "1" and (
        diff["max"] == "*"
    ):
        raise SnapshotError(f"{diff.get('id')}: a profile cannot widen max 1 to *")
