"""The R4 element model the de-identification rules are compiled against.

Every element of every R4 type, with its FHIR type, read from the vendored official JSON
Schema (`fhir_server/model/data/fhir.schema.json.gz`): the rules say what happens to a
*type* of element (every `string`, every `Identifier`), and the engine needs to know, for
each key it meets in a resource, which type that element is.

The schema names most types by `$ref`; choice elements (`valueString`, `valueDateTime`)
are written inline with the primitive's pattern, so their type is read from the name's
suffix. Codes with a fixed list (`enum`: required bindings to R4 code systems) are marked
`enumerated`: they cannot carry anything but one of those codes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from fhir_server.model.resource_types import fhir_schema, resource_types

PRIMITIVES = frozenset(
    {
        "base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id",
        "instant", "integer", "markdown", "oid", "positiveInt", "string", "time",
        "unsignedInt", "uri", "url", "uuid", "xhtml",
    }
)  # fmt: skip
# Primitive types that can carry text, an identifier, a date or a URI: every element of
# these types must be covered by a de-identification rule (numbers and booleans cannot
# hold a name; an enumerated code holds one of its list).
CARRIERS = PRIMITIVES - {"boolean", "decimal", "integer", "positiveInt", "unsignedInt"}
RESOURCE = "Resource"  # an element holding a whole resource (contained, Bundle entries)
# R4 types that are Quantity with constraints: a rule on `Quantity.x` applies to them too.
QUANTITY_TYPES = frozenset({"Quantity", "Age", "Count", "Distance", "Duration"})
_REF = "#/definitions/"
_SUFFIX = re.compile(r"[a-z][a-z0-9]*([A-Z][A-Za-z0-9]*)$")
# Inline properties whose name gives no type: the pattern of the primitive they copy.
_PATTERNS = {
    "^[ \\r\\n\\t\\S]+$": "string",
    "^\\S*$": "uri",
    "^[^\\s]+(\\s[^\\s]+)*$": "code",
    "^[A-Za-z0-9\\-\\.]{1,64}$": "id",
}


@dataclass(frozen=True)
class Element:
    name: str
    type: str  # a primitive, a complex type or backbone definition, or RESOURCE
    is_list: bool
    enumerated: bool = False  # a code with a fixed list of values

    @property
    def is_primitive(self) -> bool:
        return self.type in PRIMITIVES

    @property
    def carries(self) -> bool:
        """Whether its values could hold text, an identifier, a date or a URI."""
        return self.type in CARRIERS and not self.enumerated


def is_datatype(name: str) -> bool:
    """A complex datatype (Coding, Quantity...), not a resource nor a backbone element."""
    definitions = fhir_schema()["definitions"]
    return (
        name in definitions
        and "properties" in definitions[name]
        and name not in resource_types()
        and "_" not in name
    )


@cache
def elements(definition: str) -> dict[str, Element]:
    """The elements of a resource type, datatype or backbone definition (`Observation`,
    `Coding`, `Observation_Component`), by JSON name."""
    properties = fhir_schema()["definitions"][definition].get("properties", {})
    found = {}
    is_resource = definition in resource_types()
    for name, spec in properties.items():
        if name == "resourceType" and is_resource:  # not ExampleScenario.instance's
            continue
        is_list = spec.get("type") == "array"
        item = spec.get("items", spec) if is_list else spec
        found[name] = Element(name, _type_of(name, item), is_list, "enum" in item)
    # R4's open type (`*`: Extension.value[x], Parameters.parameter.value[x], ...) includes
    # Meta, which the JSON schema leaves out of every such choice: `valueMeta` is valid R4.
    for name in [n for n in found if n.endswith("Dosage")]:
        base = name.removesuffix("Dosage")
        if f"{base}Base64Binary" in found and f"{base}Meta" not in found:
            found[f"{base}Meta"] = Element(f"{base}Meta", "Meta", False)
    return found


def _type_of(name: str, spec: dict) -> str:
    ref = spec.get("$ref")
    if ref is not None:
        target = ref.removeprefix(_REF)
        return RESOURCE if target == "ResourceList" else target
    if "enum" in spec or "const" in spec:
        return "code"
    suffix = _SUFFIX.match(name)
    if suffix is not None:
        candidate = suffix.group(1)[0].lower() + suffix.group(1)[1:]
        if candidate in PRIMITIVES:
            return candidate
    if spec.get("type") == "boolean":
        return "boolean"
    if spec.get("type") == "number":
        return "decimal"
    return _PATTERNS.get(spec.get("pattern", ""), "string")
