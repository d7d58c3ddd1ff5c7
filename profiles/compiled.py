"""A StructureDefinition's differential compiled into a tree of element rules.

Each ElementDefinition of the differential is placed in a tree by its id
(`Patient.identifier:INS.value` -> root / identifier / slice INS / value), so the validator
walks the resource once, from the root, and each rule knows its children and its slices.
Everything that can be computed ahead (choice keys, target types, invariants, unit factors)
is computed here, once per profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import fhirpathpy
from fhirpathpy.models import models

from profiles.definitions import PLAUSIBLE_RANGE_URL
from profiles.fhirpath_fast import CHOICE_SUFFIXES, Unsupported, compile_fhirpath
from terminology import ucum

R4_MODEL = models["r4"]


class ProfileDefinitionError(ValueError):
    """A StructureDefinition this validator cannot use (names what is wrong)."""


@dataclass(slots=True)
class Invariant:
    key: str
    severity: str
    human: str
    expression: str
    fast: Any  # compiled closure, or None when only fhirpathpy can evaluate it
    slow: Any = None  # fhirpathpy's compiled function, made on first need

    def evaluate(self, context: Any, root: dict) -> list | None:
        """The FHIRPath result, or None when the expression could not be evaluated."""
        if self.fast is not None:
            try:
                return self.fast(context, root)
            except Unsupported:
                pass  # data the fast path does not handle: let fhirpathpy decide
        try:
            if self.slow is None:
                self.slow = fhirpathpy.compile(self.expression, R4_MODEL)
            return self.slow(context, {"resource": root, "rootResource": root})
        except Exception:  # noqa: BLE001 - a library failure must not fail the write
            return None


@dataclass(slots=True)
class PlausibleRange:
    low: float
    high: float
    unit: str
    molar_mass: float | None
    _factors: dict[str, float | None] = field(default_factory=dict)

    def factor(self, unit: str) -> float | None:
        """value_in_range_unit = value * factor; None when the unit cannot be converted."""
        if unit not in self._factors:
            try:
                self._factors[unit] = ucum.convert(1, unit, self.unit, self.molar_mass)
            except ucum.UnitConversionError:
                self._factors[unit] = None
        return self._factors[unit]


@dataclass(slots=True)
class Slicing:
    discriminators: list[tuple[str, str]]  # (type, path)
    rules: str  # open | closed | openAtEnd


@dataclass(slots=True)
class ElementRule:
    element_id: str
    name: str  # the last path segment: "code", "value[x]"
    slice_name: str | None = None
    min: int = 0
    max: int | None = None  # None: unbounded
    types: tuple[str, ...] = ()
    choice_keys: dict[str, str] = field(default_factory=dict)  # JSON key -> type code
    target_types: frozenset[str] = frozenset()
    fixed: Any = None
    has_fixed: bool = False
    pattern: Any = None
    has_pattern: bool = False
    binding: tuple[str, str] | None = None  # (strength, valueSet url)
    max_length: int | None = None
    min_value: Any = None  # a number, or a Quantity dict (minValueQuantity)
    max_value: Any = None
    invariants: list[Invariant] = field(default_factory=list)
    ranges: list[PlausibleRange] = field(default_factory=list)
    slicing: Slicing | None = None
    slices: dict[str, ElementRule] = field(default_factory=dict)
    children: dict[str, ElementRule] = field(default_factory=dict)
    checks_unit: bool = False  # a Quantity whose unit the validator checks against UCUM
    # Precomputed by _finish, so the hot path reads plain attributes:
    is_choice: bool = False
    base_name: str = ""
    all_choice_keys: frozenset[str] = frozenset()  # every R4 spelling of the choice
    checks_cardinality: bool = False
    checks_values: bool = False  # anything for check_value to do


@dataclass(slots=True)
class CompiledProfile:
    url: str
    name: str
    resource_type: str
    root: ElementRule
    definition: dict


def compile_profile(definition: dict) -> CompiledProfile:
    if definition.get("resourceType") != "StructureDefinition":
        raise ProfileDefinitionError("not a StructureDefinition")
    url, resource_type = definition.get("url"), definition.get("type")
    if not isinstance(url, str) or not isinstance(resource_type, str):
        raise ProfileDefinitionError("a profile needs a url and a type")
    elements = (definition.get("differential") or {}).get("element") or []
    root = ElementRule(resource_type, resource_type)
    for element in elements:
        rule = _place(root, element, resource_type)
        _fill(rule, element)
    _finish(root)
    name = definition.get("name") or url.rsplit("/", 1)[-1]
    return CompiledProfile(url, name, resource_type, root, definition)


def _place(root: ElementRule, element: dict, resource_type: str) -> ElementRule:
    element_id = element.get("id")
    if element_id is None and isinstance(element.get("path"), str):
        # no id (older tooling): the path, with the slice name if the element starts a slice
        slice_name = element.get("sliceName")
        element_id = element["path"] + (f":{slice_name}" if slice_name else "")
    if not isinstance(element_id, str):
        raise ProfileDefinitionError("an ElementDefinition needs an id or a path")
    segments = element_id.split(".")
    if segments[0] != resource_type:
        raise ProfileDefinitionError(f"element {element_id} is not on {resource_type}")
    rule = root
    for depth, segment in enumerate(segments[1:], start=1):
        name, _, slice_name = segment.partition(":")
        child = rule.children.get(name)
        if child is None:
            child = rule.children[name] = ElementRule(".".join(segments[:depth + 1]), name)
        rule = child
        if slice_name:
            if slice_name not in rule.slices:
                rule.slices[slice_name] = ElementRule(
                    ".".join(segments[: depth + 1]), name, slice_name=slice_name
                )
            rule = rule.slices[slice_name]
    return rule


def _fill(rule: ElementRule, element: dict) -> None:
    if "min" in element:
        rule.min = int(element["min"])
    if "max" in element:
        rule.max = None if element["max"] == "*" else int(element["max"])
    types = element.get("type") or []
    if types:
        rule.types = tuple(t["code"] for t in types)
        targets = {
            profile.rsplit("/", 1)[-1]
            for t in types
            for profile in t.get("targetProfile", ())
        }
        rule.target_types = frozenset(targets)
    for key, value in element.items():
        if key.startswith("fixed"):
            rule.fixed, rule.has_fixed = value, True
        elif key.startswith("pattern"):
            rule.pattern, rule.has_pattern = value, True
        elif key.startswith("minValue"):
            rule.min_value = value
        elif key.startswith("maxValue"):
            rule.max_value = value
    if isinstance(element.get("maxLength"), int):
        rule.max_length = element["maxLength"]
    binding = element.get("binding")
    if binding and binding.get("valueSet") and binding.get("strength") in (
        "required",
        "extensible",
    ):
        rule.binding = (binding["strength"], binding["valueSet"].split("|")[0])
    for constraint in element.get("constraint") or ():
        expression = constraint.get("expression")
        if not expression:
            continue
        try:
            fast = compile_fhirpath(expression)
        except Unsupported:
            fast = None
        rule.invariants.append(
            Invariant(
                constraint["key"],
                constraint.get("severity", "error"),
                constraint.get("human", constraint["key"]),
                expression,
                fast,
            )
        )
    for extension in element.get("extension") or ():
        if extension.get("url") == PLAUSIBLE_RANGE_URL:
            rule.ranges.append(_plausible_range(extension, rule.element_id))
    slicing = element.get("slicing")
    if slicing:
        rule.slicing = Slicing(
            [(d["type"], d["path"]) for d in slicing.get("discriminator", ())],
            slicing.get("rules", "open"),
        )


def _plausible_range(extension: dict, where: str) -> PlausibleRange:
    parts = {e.get("url"): e for e in extension.get("extension", ())}
    try:
        low, high = parts["low"]["valueQuantity"], parts["high"]["valueQuantity"]
    except KeyError:
        raise ProfileDefinitionError(f"{where}: plausible-range needs low and high") from None
    if low.get("code") != high.get("code"):
        raise ProfileDefinitionError(f"{where}: plausible-range low and high need one unit")
    molar = parts.get("molarMass", {}).get("valueDecimal")
    return PlausibleRange(float(low["value"]), float(high["value"]), low["code"], molar)


def _finish(rule: ElementRule) -> None:
    rule.is_choice = rule.name.endswith("[x]")
    rule.base_name = rule.name[:-3] if rule.is_choice else rule.name
    if rule.is_choice:
        rule.all_choice_keys = frozenset(rule.base_name + t for t in CHOICE_SUFFIXES)
        if rule.types:
            rule.choice_keys = {rule.base_name + t[0].upper() + t[1:]: t for t in rule.types}
    code_child = rule.children.get("code")
    rule.checks_unit = "Quantity" in rule.types and not (code_child and code_child.binding)
    rule.checks_cardinality = rule.min > 0 or rule.max is not None
    rule.checks_values = bool(
        rule.has_fixed
        or rule.has_pattern
        or rule.target_types
        or rule.binding
        or rule.invariants
        or rule.ranges
        or rule.checks_unit
        or rule.max_length is not None
        or rule.min_value is not None
        or rule.max_value is not None
    )
    for child in rule.children.values():
        _finish(child)
    for piece in rule.slices.values():
        _finish(piece)
