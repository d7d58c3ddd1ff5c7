"""The R4 core StructureDefinitions (vendored, `r4/`) compiled into one model per type.

A resource is checked by walking its JSON: each object is read against the model of its type
(`Observation`, `CodeableConcept`, an inline `Observation.component`), which maps every JSON
key it may hold (`valueQuantity`, `_birthDate`) to the element that key spells. Types refer
to each other by name and are compiled on first use, so the recursive datatypes
(`Identifier.assigner` -> `Reference.identifier` -> `Identifier`) cost nothing until data
uses them. A datatype profile named on an element (`SimpleQuantity` on
`Observation.referenceRange.low`) has its own model with its own invariants.

Why a data-driven walk here, beside the profile validator's rule-driven one (`compiled.py`):
a base type declares every element (Observation: 50, then each datatype's), nearly all
absent from a given resource; reading the keys that are present and looking each one up
costs a fraction of visiting every declared element. The parts are shared with the profile
validator: invariants are `compiled.Invariant` (the compiled FHIRPath of `fhirpath_fast`,
with fhirpathpy for what it does not compile), bindings are checked against the terminology
the server holds.
"""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import orjson

from profiles.compiled import Invariant
from profiles.fhirpath_fast import Unsupported, absent_guard, compile_fhirpath

R4_DIR = Path(__file__).parent / "r4"
CORE_BASE = "http://hl7.org/fhir/StructureDefinition/"
BEST_PRACTICE = "http://hl7.org/fhir/StructureDefinition/elementdefinition-bestpractice"
# Checked by the walk itself, on every element, without FHIRPath (see core_validator):
# ele-1 (no empty element), ext-1 (an extension has a value or extensions, not both),
# txt-1 / txt-2 (xhtml: htmlChecks()), dom-3 (contained resources are referenced).
NATIVE_INVARIANTS = frozenset({"ele-1", "ext-1", "txt-1", "txt-2", "dom-3"})
# Expressions published wrong in R4 4.0.1 and corrected in later releases, as the
# reference validator applies them: que-12 says "more than one" but tests `> 2`.
R4_ERRATA = {"que-12": "enableWhen.count() > 1 implies enableBehavior.exists()"}


@cache
def core_definitions() -> dict[str, dict]:
    """The vendored R4 StructureDefinitions by url (read once)."""
    raw = gzip.decompress((R4_DIR / "structuredefinitions.json.gz").read_bytes())
    return {d["url"]: d for d in orjson.loads(raw)}


@dataclass(slots=True)
class CoreInvariant:
    """An invariant, compiled on first use (a type declares many that data rarely reaches),
    with what makes it cheap: when the context holds none of the members its guard names,
    the result is a constant (computed once)."""

    key: str
    severity: str
    human: str
    expression: str
    model: TypeModel | None = None  # the context's type: how the guard's members are spelled
    compiled: Invariant | None = None
    guard: frozenset[str] | None = None
    guard_keys: frozenset[str] | None = None
    absent_result: Any = None
    absent_known: bool = False

    @property
    def invariant(self) -> Invariant:
        if self.compiled is None:
            try:
                fast = compile_fhirpath(self.expression)
            except Unsupported:
                fast = None
            except Exception:  # noqa: BLE001 - unparsable: fhirpathpy reports it (None)
                fast = None
            if fast is not None:
                self.guard = absent_guard(self.expression)
                if self.guard is not None:
                    # computed now: the model is complete (types refer to each other)
                    keys = self.model.keys if self.model is not None else {}
                    spelled = {k for k, e in keys.items() if e.name in self.guard}
                    self.guard_keys = frozenset(
                        spelled | self.guard | {"_" + g for g in self.guard}
                    )
            self.compiled = Invariant(self.key, self.severity, self.human, self.expression, fast)
        return self.compiled

    def evaluate(self, context: Any, root: dict) -> list | None:
        invariant = self.invariant
        keys = self.guard_keys
        if keys is not None and isinstance(context, dict) and keys.isdisjoint(context):
            if not self.absent_known:
                self.absent_result = invariant.evaluate({}, {})
                self.absent_known = True
            return self.absent_result
        return invariant.evaluate(context, root)


@dataclass(slots=True)
class Element:
    path: str  # Observation.value[x]
    name: str  # value (the base name of the JSON key)
    type_code: str  # the type this JSON key holds: Quantity, string, BackboneElement, Resource
    type_url: str | None  # the StructureDefinition of that type (a profile on it if named)
    min: int
    max: int | None  # None: unbounded
    is_array: bool
    binding: tuple[str, str] | None = None  # (strength, value set url)
    invariants: list[CoreInvariant] = field(default_factory=list)
    targets: frozenset[str] | None = None  # allowed Reference / canonical target types
    fixed: Any = None
    has_fixed: bool = False
    max_length: int | None = None
    inline: TypeModel | None = None  # BackboneElement children, or a contentReference
    content_reference: str | None = None

    @property
    def primitive(self) -> bool:
        return self.type_code[:1].islower()


@dataclass(slots=True)
class TypeModel:
    name: str  # Observation, Quantity, Observation.component
    url: str
    keys: dict[str, Element] = field(default_factory=dict)  # JSON key -> element
    required: list[tuple[Element, tuple[str, ...]]] = field(default_factory=list)
    invariants: list[CoreInvariant] = field(default_factory=list)
    is_resource: bool = False
    type_name: str = ""  # Observation, Quantity; BackboneElement for an inline model


class CoreModels:
    """Every type's model, compiled on first use (thread-safe)."""

    def __init__(self, definitions: dict[str, dict] | None = None) -> None:
        self.definitions = definitions if definitions is not None else core_definitions()
        self._models: dict[str, TypeModel | None] = {}
        # Models being compiled: in _models early (a type's elements refer back to it), but
        # only the compiling thread may see them before they are complete.
        self._compiling: set[str] = set()
        self._lock = threading.RLock()

    def model(self, url_or_type: str) -> TypeModel | None:
        url = url_or_type if "/" in url_or_type else CORE_BASE + url_or_type
        found = self._models.get(url, False)
        if found is not False and url not in self._compiling:
            return found  # type: ignore[return-value]
        with self._lock:  # a model another thread is compiling: wait until it is complete
            if url not in self._models:
                definition = self.definitions.get(url)
                self._models[url] = None if definition is None else self._compile(definition)
            return self._models[url]

    def is_resource_type(self, name: str) -> bool:
        definition = self.definitions.get(CORE_BASE + name)
        return bool(definition and definition.get("kind") == "resource")

    # -- compiling ----------------------------------------------------------------------------

    def _compile(self, definition: dict) -> TypeModel:
        elements = definition["snapshot"]["element"]
        root_path = elements[0]["path"]
        root = TypeModel(
            definition.get("type", root_path),
            definition["url"],
            is_resource=definition.get("kind") == "resource",
            type_name=definition.get("type", root_path),
        )
        self._compiling.add(definition["url"])
        self._models[definition["url"]] = root  # recursion reaches it while compiling
        try:
            self._compile_into(root, definition, elements)
        finally:
            self._compiling.discard(definition["url"])
        return root

    def _compile_into(self, root: TypeModel, definition: dict, elements: list[dict]) -> None:
        models = {elements[0]["path"]: root}
        by_path = {}
        for element in elements[1:]:
            if element.get("sliceName") or ":" in element.get("id", ""):
                continue  # slices of core profiles: the profile validator's job
            path = element["path"]
            by_path[path] = element
            parent_path, _, name = path.rpartition(".")
            parent = models.get(parent_path)
            if parent is None:
                continue  # below a slice or a skipped element
            for compiled in self._elements(element, name):
                if compiled.type_code in ("BackboneElement", "Element") and any(
                    p.startswith(path + ".") for p in (e["path"] for e in elements)
                ):
                    compiled.inline = models.setdefault(
                        path, TypeModel(path, definition["url"], type_name=compiled.type_code)
                    )
                if compiled.inline is None and element.get("constraint"):
                    compiled.invariants = self._element_invariants(element, compiled, models)
                self._add(parent, compiled)
        for model in models.values():
            for element in model.keys.values():
                if element.content_reference:
                    element.inline = models.get(element.content_reference)
        root.invariants = self._invariants(elements[0], root)
        for path, model in models.items():
            if model is not root and path in by_path:
                model.invariants = self._invariants(by_path[path], model)

    def _elements(self, element: dict, name: str) -> list[Element]:
        """One Element per JSON spelling (one per type of a choice)."""
        base_max = element.get("base", {}).get("max", element.get("max", "1"))
        maximum = element.get("max", "1")
        common: dict[str, Any] = {
            "path": element["path"],
            "min": int(element.get("min", 0)),
            "max": None if maximum == "*" else int(maximum),
            "is_array": base_max != "1" and base_max != "0",
        }
        binding = element.get("binding")
        if binding and binding.get("valueSet") and binding.get("strength") in (
            "required", "extensible", "preferred",
        ):
            common["binding"] = (binding["strength"], binding["valueSet"].split("|")[0])
        if isinstance(element.get("maxLength"), int):
            common["max_length"] = element["maxLength"]
        if "contentReference" in element:
            out = Element(name=name, type_code="BackboneElement", type_url=None, **common)
            out.content_reference = element["contentReference"].lstrip("#")
            return [out]
        types = element.get("type") or []
        out = []
        choice = name.endswith("[x]")
        base = name[:-3] if choice else name
        for type_ in types:
            code = type_.get("code", "")
            if code.startswith("http://hl7.org/fhirpath/System."):
                code = "string"  # id / extension url of an element: a plain string
            profiles = type_.get("profile") or []
            targets = type_.get("targetProfile")
            compiled = Element(
                name=base,
                type_code=code,
                type_url=profiles[0] if len(profiles) == 1 else CORE_BASE + code,
                **common,
            )
            if targets:
                compiled.targets = frozenset(t.rsplit("/", 1)[-1] for t in targets)
            for key, value in element.items():
                if key.startswith("fixed"):
                    compiled.fixed, compiled.has_fixed = value, True
            out.append(compiled)
        return out

    def _add(self, model: TypeModel, element: Element) -> None:
        choice = element.path.endswith("[x]")
        key = element.name + (element.type_code[0].upper() + element.type_code[1:] if choice
                              else "")
        model.keys[key] = element
        if element.primitive:
            model.keys["_" + key] = element
        if element.min > 0:
            spellings = [k for k, e in model.keys.items() if e.path == element.path]
            for index, (required, _) in enumerate(model.required):
                if required.path == element.path:
                    model.required[index] = (required, tuple(spellings))
                    break
            else:
                model.required.append((element, tuple(spellings)))

    def _element_invariants(
        self, element: dict, compiled: Element, models: dict[str, TypeModel]
    ) -> list[CoreInvariant]:
        """Constraints stated on an element beyond those of its type (which the type's model
        checks wherever the type is used)."""
        inherited: set[str] = set()
        if compiled.type_url:
            definition = self.definitions.get(compiled.type_url.split("|")[0])
            if definition is not None:
                first = definition["snapshot"]["element"][0]
                inherited = {c.get("key") for c in first.get("constraint") or ()}
        own = {**element, "constraint": [
            c for c in element["constraint"] if c.get("key") not in inherited
        ]}
        target = self.model(compiled.type_url) if compiled.type_url and not compiled.primitive \
            else None
        return self._invariants(own, target or TypeModel(compiled.path, ""))

    def _invariants(
        self, element: dict, model: TypeModel, skip: frozenset[str] = NATIVE_INVARIANTS
    ) -> list[CoreInvariant]:
        out = []
        for constraint in element.get("constraint") or ():
            key, expression = constraint.get("key"), constraint.get("expression")
            if not expression or key in skip:
                continue
            expression = R4_ERRATA.get(key, expression)
            if any(
                e.get("url") == BEST_PRACTICE and e.get("valueBoolean")
                for e in constraint.get("extension", ())
            ):
                continue  # best practice (dom-6: narrative): the reference validator's
                # default is to ignore them too
            out.append(CoreInvariant(key, constraint.get("severity", "error"),
                                     constraint.get("human", key), expression, model))
        return out


@cache
def default_models() -> CoreModels:
    return CoreModels()
