"""PATCH documents, in the three formats clients send, applied to a resource.

- JSON Patch (RFC 6902, `application/json-patch+json`): the `jsonpatch` library.
- JSON Merge Patch (RFC 7396, `application/merge-patch+json`, and a JSON object sent as
  plain `application/json`, which is what fhirpy's `patch()` sends): `json-merge-patch`.
- FHIRPath Patch (a `Parameters` resource, hl7.org/fhir/R4/fhirpatch.html): paths are
  selected with fhirpathpy on the R4 model; each selected node carries its concrete
  location (`Patient.name[0].given[1]`), which is walked to change the JSON in place. The
  R4 JSON Schema says which elements repeat and what type a new value has.

Only the document is interpreted here: the caller validates the patched resource and
stores it, so that a patch whose result is invalid changes nothing.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import fhirpathpy
import json_merge_patch
import jsonpatch
from fhirpathpy.models import models

from fhir_server.model.outcome import FhirError, error
from fhir_server.model.resource_types import fhir_schema

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
FHIRPATH_PATCH = "application/fhir+json"  # a Parameters resource
MEDIA_TYPES = (JSON_PATCH, MERGE_PATCH, "application/fhir+json", "application/json")
OPERATION_TYPES = ("add", "insert", "delete", "replace", "move")

# One step of a node's location: `name` or `name[3]`.
_STEP = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?$")


@dataclass(frozen=True, slots=True)
class Patch:
    """A patch document and its format: "json-patch", "merge-patch" or "fhirpath-patch"."""

    kind: str
    document: Any

    @classmethod
    def from_body(cls, content_type: str, body: Any) -> Patch:
        """Tell the format from the media type, then from the body for the generic JSON
        types (`application/json` carries both JSON Patch arrays and merge objects)."""
        content_type = content_type.split(";")[0].strip().lower()
        if content_type == JSON_PATCH:
            if not isinstance(body, list):
                raise error(400, "structure", "A JSON Patch body must be an array of operations")
            return cls("json-patch", body)
        if content_type == MERGE_PATCH:
            if not isinstance(body, dict):
                raise error(400, "structure", "A JSON Merge Patch body must be a JSON object")
            return cls("merge-patch", body)
        if isinstance(body, list):
            return cls("json-patch", body)
        if isinstance(body, dict) and body.get("resourceType") == "Parameters":
            return cls("fhirpath-patch", body)
        if isinstance(body, dict) and content_type != "application/fhir+json":
            return cls("merge-patch", body)
        raise error(
            400,
            "structure",
            "A PATCH body is a JSON Patch array, a FHIRPath Patch (a Parameters resource) or "
            f"a JSON Merge Patch object (as {MERGE_PATCH} or application/json)",
        )

    def apply(self, resource: dict[str, Any]) -> Any:
        """The patched copy of `resource` (which is left as it is)."""
        if self.kind == "json-patch":
            return _json_patch(resource, self.document)
        if self.kind == "merge-patch":
            return json_merge_patch.merge(copy.deepcopy(resource), self.document)
        return FhirPathPatch(self.document).apply(copy.deepcopy(resource))


def _json_patch(resource: dict[str, Any], operations: list[Any]) -> Any:
    try:
        return jsonpatch.JsonPatch(operations).apply(resource)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise error(422, "processing", f"The JSON Patch cannot be applied: {exc}") from None
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise error(400, "structure", f"The JSON Patch is malformed: {exc}") from None


# -- FHIRPath Patch ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Location:
    """Where a selected node sits: `container[key]`, or `container[key][index]`."""

    container: dict[str, Any]
    key: str
    index: int | None
    definition: dict[str, Any] | None  # schema definition of the node's type
    container_definition: dict[str, Any] | None

    @property
    def value(self) -> Any:
        value = self.container[self.key]
        return value if self.index is None else value[self.index]


@dataclass(frozen=True, slots=True)
class _Operation:
    number: int
    type: str
    path: str
    parts: dict[str, dict[str, Any]]

    def fail(self, message: str, status: int = 422) -> FhirError:
        return error(
            status,
            "processing" if status == 422 else "invalid",
            f"FHIRPath Patch operation {self.number} ({self.type} {self.path}): {message}",
            f"Parameters.parameter[{self.number}]",
        )

    def text(self, name: str) -> str:
        part = self.parts.get(name)
        value = _part_value(part) if part is not None else None
        if not isinstance(value, str) or not value:
            raise self.fail(f"the '{name}' part is required (a string)", 400)
        return value

    def integer(self, name: str) -> int:
        part = self.parts.get(name)
        value = part.get("valueInteger") if part is not None else None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise self.fail(f"the '{name}' part is required (a non-negative integer)", 400)
        return value


class FhirPathPatch:
    """A Parameters resource of `operation` parameters, applied in order."""

    def __init__(self, parameters: dict[str, Any]) -> None:
        self.operations = [_parse_operation(i, p) for i, p in enumerate(_parameters(parameters))]

    def apply(self, resource: dict[str, Any]) -> dict[str, Any]:
        for operation in self.operations:
            _APPLY[operation.type](resource, operation)
        return resource


def _parameters(parameters: dict[str, Any]) -> list[Any]:
    found = parameters.get("parameter")
    if not isinstance(found, list) or not found:
        raise error(400, "required", "A FHIRPath Patch needs at least one operation parameter")
    return found


def _parse_operation(number: int, parameter: Any) -> _Operation:
    where = f"Parameters.parameter[{number}]"
    if not isinstance(parameter, dict) or parameter.get("name") != "operation":
        raise error(400, "invalid", f"{where}: every parameter must be named 'operation'", where)
    parts: dict[str, dict[str, Any]] = {}
    for part in parameter.get("part") or []:
        if isinstance(part, dict) and isinstance(part.get("name"), str):
            if part["name"] in parts:
                raise error(400, "invalid", f"{where}: part '{part['name']}' appears twice", where)
            parts[part["name"]] = part
    kind = parts.get("type", {}).get("valueCode")
    if kind not in OPERATION_TYPES:
        raise error(
            400, "invalid", f"{where}: type must be one of {', '.join(OPERATION_TYPES)}", where
        )
    path = _part_value(parts.get("path") or {})
    if not isinstance(path, str) or not path:
        raise error(400, "required", f"{where}: the 'path' part is required", where)
    return _Operation(number, kind, path, parts)


def _part_value(part: dict[str, Any]) -> Any:
    values = [v for k, v in part.items() if k.startswith("value")]
    return values[0] if len(values) == 1 else None


def _select(resource: dict[str, Any], op: _Operation) -> list[Any]:
    try:
        return fhirpathpy.evaluate(
            resource, op.path, model=models["r4"], options={"returnRawData": True}
        )
    except Exception as exc:  # the parser and evaluator raise many kinds
        raise op.fail(
            f"the path is not a FHIRPath expression this server can evaluate ({exc})", 400
        ) from None


def _locate(resource: dict[str, Any], node: Any, op: _Operation) -> _Location | None:
    """The location of a selected node (None for the resource itself)."""
    if getattr(node, "data", None) is resource:
        return None
    where = getattr(node, "propName", None)
    if not isinstance(where, str):
        raise op.fail("the path selects a computed value, not an element of the resource")
    steps = where.split(".")[1:]
    container: Any = resource
    definition = _definition(resource["resourceType"])
    location = None
    for step in steps:
        matched = _STEP.match(step)
        if matched is None or not isinstance(container, dict):
            raise op.fail(f"cannot follow {where}")
        name, index = matched.group(1), matched.group(2)
        key = _key(container, name)
        if key is None:
            raise op.fail(f"cannot follow {where}")
        value = container[key]
        position = int(index) if index is not None else None
        if isinstance(value, list):
            if position is None:
                if len(value) != 1:
                    raise op.fail(f"{where} is ambiguous")
                position = 0
            if position >= len(value):
                raise op.fail(f"cannot follow {where}")
        prop = (definition or {}).get("properties", {}).get(key, {})
        node_value = value if position is None else value[position]
        location = _Location(
            container, key, position, _type_definition(prop, node_value), definition
        )
        definition = location.definition
        container = node_value
    return location


def _key(container: dict[str, Any], name: str) -> str | None:
    """The JSON key of element `name`, a choice element's (`value` -> `valueQuantity`) too."""
    if name in container:
        return name
    for key in container:
        if key.startswith(name) and len(key) > len(name) and key[len(name)].isupper():
            return key
    return None


def _single(resource: dict[str, Any], op: _Operation, allow_none: bool = False) -> Any:
    nodes = _select(resource, op)
    if len(nodes) > 1:
        raise op.fail(f"the path selects {len(nodes)} elements; it must select one")
    if not nodes:
        if allow_none:
            return None
        raise op.fail("the path selects nothing")
    return nodes[0]


def _collection(
    resource: dict[str, Any], op: _Operation
) -> tuple[dict[str, Any], str, dict[str, Any] | None]:
    """The list a path names (insert, move): its container, its key (absent from the
    container while the list is empty) and the container's schema definition."""
    nodes = _select(resource, op)
    if nodes:
        locations = [_locate(resource, node, op) for node in nodes]
        first = locations[0]
        same = all(
            loc is not None and loc.container is first.container and loc.key == first.key  # type: ignore[union-attr]
            for loc in locations
        )
        if first is None or first.index is None or not same:
            raise op.fail("the path must select the items of one list")
        return first.container, first.key, first.container_definition
    parent, dot, name = op.path.rpartition(".")
    if not dot or not _STEP.match(name):
        raise op.fail("the path selects nothing")
    holder = _single(resource, _Operation(op.number, op.type, parent, op.parts))
    location = _locate(resource, holder, op)
    container = resource if location is None else location.value
    if not isinstance(container, dict):
        raise op.fail("the path does not name a list")
    return container, name, _element_definition(resource, location)


def _element_definition(resource: dict[str, Any], location: _Location | None) -> dict | None:
    return _definition(resource["resourceType"]) if location is None else location.definition


def _add(resource: dict[str, Any], op: _Operation) -> None:
    node = _single(resource, op)
    location = _locate(resource, node, op)
    target = resource if location is None else location.value
    if not isinstance(target, dict):
        raise op.fail("add needs a path to an element that has children")
    definition = _element_definition(resource, location)
    name = op.text("name")
    prop_key, prop = _property(definition, name, op.parts.get("value") or {})
    value = _new_value(op, prop)
    if _repeats(prop):
        target.setdefault(prop_key, []).append(value)
    elif _key(target, name) is not None:
        raise op.fail(f"{name} already has a value: use replace")
    else:
        target[prop_key] = value


def _insert(resource: dict[str, Any], op: _Operation) -> None:
    container, key, definition = _collection(resource, op)
    items = container.get(key, [])
    index = op.integer("index")
    if not isinstance(items, list) or index > len(items):
        raise op.fail(f"index {index} is past the end of the list ({len(items)} items)")
    _, prop = _property(definition, key, op.parts.get("value") or {})
    items.insert(index, _new_value(op, prop))
    container[key] = items


def _delete(resource: dict[str, Any], op: _Operation) -> None:
    node = _single(resource, op, allow_none=True)
    if node is None:
        return  # R4: "delete ... (if found)"
    location = _locate(resource, node, op)
    if location is None:
        raise op.fail("the resource itself cannot be deleted by a patch")
    container, key = location.container, location.key
    twin = f"_{key}"
    if location.index is None:
        container.pop(key)
        container.pop(twin, None)
        return
    del container[key][location.index]
    if isinstance(container.get(twin), list) and location.index < len(container[twin]):
        del container[twin][location.index]
    if not container[key]:
        container.pop(key)
        container.pop(twin, None)


def _replace(resource: dict[str, Any], op: _Operation) -> None:
    node = _single(resource, op)
    location = _locate(resource, node, op)
    if location is None:
        raise op.fail("the resource itself cannot be replaced by a patch")
    _, prop = _property(location.container_definition, location.key, op.parts.get("value") or {})
    value = _new_value(op, prop)
    if location.index is None:
        location.container[location.key] = value
    else:
        location.container[location.key][location.index] = value


def _move(resource: dict[str, Any], op: _Operation) -> None:
    container, key, _ = _collection(resource, op)
    items = container.get(key, [])
    source, destination = op.integer("source"), op.integer("destination")
    if source >= len(items) or destination >= len(items):
        raise op.fail(f"source and destination must be below the list's length ({len(items)})")
    items.insert(destination, items.pop(source))


_APPLY = {"add": _add, "insert": _insert, "delete": _delete, "replace": _replace, "move": _move}


# -- values and the R4 JSON Schema ---------------------------------------------------------


@cache
def _definitions() -> dict[str, Any]:
    return fhir_schema()["definitions"]


def _definition(name: str) -> dict[str, Any] | None:
    return _definitions().get(name)


def _type_definition(prop: dict[str, Any], value: Any) -> dict[str, Any] | None:
    target = prop.get("items", prop)
    ref = target.get("$ref", "")
    name = ref.rsplit("/", 1)[-1]
    if name == "ResourceList" and isinstance(value, dict):
        name = str(value.get("resourceType"))  # a contained resource
    return _definition(name) if name else None


def _property(
    definition: dict[str, Any] | None, name: str, value_part: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The JSON key and schema of child `name`; a choice element (`value`) takes its type
    from the value part (`valueQuantity` -> `valueQuantity`)."""
    properties = (definition or {}).get("properties", {})
    if name in properties:
        return name, properties[name]
    for key in value_part:
        if key.startswith("value") and len(key) > 5:
            choice = name + key[5:]
            if choice in properties:
                return choice, properties[choice]
    return name, {}


def _repeats(prop: dict[str, Any]) -> bool:
    return prop.get("type") == "array"


def _new_value(op: _Operation, prop: dict[str, Any]) -> Any:
    part = op.parts.get("value")
    if part is None:
        raise op.fail("the 'value' part is required", 400)
    return _value(part, _type_definition(prop, None), op)


def _value(part: dict[str, Any], definition: dict[str, Any] | None, op: _Operation) -> Any:
    """A value part's content: its `value[x]`, or for an anonymous type (a backbone
    element) an object built from its sub-parts, one per child element."""
    value = _part_value(part)
    if value is not None:
        return copy.deepcopy(value)
    parts = part.get("part")
    if not isinstance(parts, list) or not parts:
        raise op.fail("a value part needs a value[x] or parts", 400)
    built: dict[str, Any] = {}
    properties = (definition or {}).get("properties", {})
    for child in parts:
        if not isinstance(child, dict) or not isinstance(child.get("name"), str):
            raise op.fail("every part of a value needs a name", 400)
        key, prop = _property(definition, child["name"], child)
        item = _value(child, _type_definition(prop, None), op)
        if _repeats(properties.get(key, {})):
            built.setdefault(key, []).append(item)
        elif key in built:
            raise op.fail(f"{key} appears twice in a value but does not repeat", 400)
        else:
            built[key] = item
    return built
