"""The search parameter registry: which parameters each resource type has, from data.

Parameters come from the official R4 SearchParameter definitions vendored (unmodified, gzipped)
in `data/` plus custom SearchParameter resources added at run time (`add`), so a new search
parameter is data, not code. Many R4 definitions serve several resource types with one union
expression (`AllergyIntolerance.patient | CarePlan.subject.where(resolve() is Patient) | ...`);
the registry splits those per base type so that each `SearchParam` carries only the branches
of its own type, which is what the index extractor compiles.

`default()` parses the vendored file once per process (cached) but returns a fresh registry
each call, so that `add` on one app's registry never leaks into another (no global state).
"""

from __future__ import annotations

import gzip
import json
import re
from functools import cache
from importlib import resources
from typing import Any, get_args

from antlr4 import CommonTokenStream, InputStream, Token
from antlr4.error.ErrorListener import ErrorListener
from fhirpathpy.models import models as _fhirpath_models
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

from fhir_server.model.resource_types import ADDITIONAL_RESOURCE_TYPES
from fhir_server.search.fhirpath_split import root_name, split_union
from fhir_server.search.shared_rows import SharedRows, shared_rows
from fhir_server.search.types import Component, ParamType, SearchParam

DEFINITIONS_FILE = "search-parameters-r4-4.0.1.json.gz"
PARAM_TYPES: frozenset[str] = frozenset(get_args(ParamType))
RESOURCE_LEVEL_BASES = ("Resource", "DomainResource")

# Every R4 resource type, from the R4 model fhirpathpy ships (type -> parent type).
_TYPE_PARENTS: dict[str, str] = _fhirpath_models["r4"]["type2Parent"]
R4_RESOURCE_TYPES: frozenset[str] = frozenset(
    name
    for name, parent in _TYPE_PARENTS.items()
    if parent in RESOURCE_LEVEL_BASES and name != "DomainResource"
)
# Bundle, Binary and Parameters derive from Resource directly: no DomainResource params (_text).
_NOT_DOMAIN_RESOURCES = frozenset(
    name for name, parent in _TYPE_PARENTS.items() if parent == "Resource"
)
_CODE_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_TYPE_NAME_PATTERN = re.compile(r"^[A-Z][A-Za-z0-9]*$")


class SearchParamRegistry:
    """Search parameters per resource type, including the Resource-level ones."""

    def __init__(self, params: list[SearchParam] | None = None) -> None:
        self._by_type: dict[str, dict[str, SearchParam]] = {}
        self._by_url: dict[str, dict[str, SearchParam]] = {}
        self._merged: dict[str, dict[str, SearchParam]] = {}
        self._extra_types: set[str] = set()
        self._shared: dict[tuple[str, str], SharedRows | None] = {}
        # bumped on every change, so that an IndexExtractor recompiles after `add`
        self.version = 0
        for param in params or ():
            self._put(param)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def default(cls) -> SearchParamRegistry:
        """A new registry holding every official R4 search parameter (parsed once per process)."""
        return cls(list(_official_params()))

    @classmethod
    def from_bundle(cls, bundle: dict) -> SearchParamRegistry:
        """A registry built from a Bundle of SearchParameter resources (official layout)."""
        registry = cls()
        for entry in bundle.get("entry", ()):
            resource = entry.get("resource") or {}
            if resource.get("resourceType") == "SearchParameter":
                for param in params_from_definition(resource, strict=False):
                    registry._put(param)
        return registry

    def add(self, search_parameter_resource: dict) -> list[SearchParam]:
        """Load a custom SearchParameter resource; return the SearchParam made per base type.

        A custom parameter with the code of an existing one for the same type replaces it (a
        profile may refine a base parameter). Raises ValueError naming what is wrong.
        """
        params = params_from_definition(search_parameter_resource, strict=True)
        for param in params:
            self._put(param)
            if param.resource_type not in RESOURCE_LEVEL_BASES:
                self._extra_types.add(param.resource_type)
        return params

    def _put(self, param: SearchParam) -> None:
        self._by_type.setdefault(param.resource_type, {})[param.code] = param
        if param.url:
            self._by_url.setdefault(param.url, {})[param.resource_type] = param
        self._merged.clear()  # a Resource-level change affects every type
        self._shared.clear()
        self.version += 1

    # -- queries ------------------------------------------------------------------------------

    def for_type(self, resource_type: str) -> dict[str, SearchParam]:
        """Every parameter of `resource_type` by code, Resource-level ones included.

        The returned dict is shared and cached: do not modify it.
        """
        merged = self._merged.get(resource_type)
        if merged is None:
            merged = dict(self._by_type.get("Resource", {}))
            if resource_type not in _NOT_DOMAIN_RESOURCES:
                merged.update(self._by_type.get("DomainResource", {}))
            if resource_type not in RESOURCE_LEVEL_BASES:
                merged.update(self._by_type.get(resource_type, {}))
            self._merged[resource_type] = merged
        return merged

    def get(self, resource_type: str, code: str) -> SearchParam | None:
        return self.for_type(resource_type).get(code)

    def by_url(self, url: str, resource_type: str | None = None) -> SearchParam | None:
        """The parameter defined at canonical `url` (for composite components). A multi-type
        definition (e.g. clinical-code) gives the entry for `resource_type` when given, else the
        first one."""
        per_type = self._by_url.get(url)
        if not per_type:
            return None
        if resource_type is not None and resource_type in per_type:
            return per_type[resource_type]
        return next(iter(per_type.values()))

    def shared_rows(self, resource_type: str, code: str) -> SharedRows | None:
        """Which other parameters' index rows `code` reuses (see `shared_rows`)."""
        key = (resource_type, code)
        if key not in self._shared:
            params = self.for_type(resource_type)
            param = params.get(code)
            self._shared[key] = (
                None if param is None else shared_rows(param, params, _official_set())
            )
        return self._shared[key]

    def pid_codes(self, resource_type: str, code: str) -> tuple[str, ...]:
        """The parameter codes whose index rows answer a search on `code`."""
        shared = self.shared_rows(resource_type, code)
        return (code,) if shared is None else (code, *shared.bases)

    def owner_codes(self, resource_type: str) -> tuple[str, ...]:
        """`patient`, plus `subject` when this type's `patient` is its `subject` restricted
        to patients (Observation, Condition, Encounter...): `subject=Patient/X` then
        selects exactly the resources whose `patient` is X."""
        patient = self.get(resource_type, "patient")
        subject = self.get(resource_type, "subject")
        if patient is None or subject is None or subject.expression != f"{resource_type}.subject":
            return ("patient",)
        if patient.expression in (
            f"{resource_type}.subject.where(resolve() is Patient)",
            f"{resource_type}.subject",
        ):
            return ("patient", "subject")
        return ("patient",)

    def types(self) -> list[str]:
        """Every resource type the server accepts: all R4 types plus bases of custom params."""
        return sorted(R4_RESOURCE_TYPES | self._extra_types)

    def own_params(self, resource_type: str) -> dict[str, SearchParam]:
        """The parameters defined for exactly this base (no Resource-level ones)."""
        return dict(self._by_type.get(resource_type, {}))


@cache
def _official_set() -> frozenset[SearchParam]:
    return frozenset(_official_params())


def official_params() -> tuple[SearchParam, ...]:
    """The R4 core search parameters (one entry per base type of each definition)."""
    return _official_params()


@cache
def _official_params() -> tuple[SearchParam, ...]:
    raw = resources.files("fhir_server.search").joinpath("data", DEFINITIONS_FILE).read_bytes()
    bundle = json.loads(gzip.decompress(raw))
    params: list[SearchParam] = []
    for entry in bundle["entry"]:
        params.extend(params_from_definition(entry["resource"], strict=False))
    return tuple(params)


def params_from_definition(definition: dict, *, strict: bool) -> list[SearchParam]:
    """One SearchParam per base type of a SearchParameter resource.

    With `strict` (custom parameters), anything unusable raises ValueError; the official
    definitions are trusted and loaded leniently (a base without its own branch is skipped).
    """
    if strict:
        _validate(definition)
    code = definition["code"]
    param_type = definition["type"]
    expression = definition.get("expression")
    bases = list(definition["base"])
    components = tuple(
        Component(definition=c["definition"], expression=c["expression"])
        for c in definition.get("component", ())
    )
    common: dict[str, Any] = {
        "code": code,
        "type": param_type,
        "url": definition.get("url", "") or "",
        "description": definition.get("description", "") or "",
        "target": tuple(definition.get("target", ())),
        "components": components,
        "modifiers": tuple(definition.get("modifier", ())),
        "comparators": tuple(definition.get("comparator", ())),
    }
    extra = {
        key: definition[key]
        for key in ("multipleOr", "multipleAnd", "chain", "xpathUsage", "name", "id")
        if key in definition
    }
    if len(bases) > 1:
        common.pop("description")
    if not expression or len(bases) == 1:
        return [
            SearchParam(resource_type=base, expression=expression, extra=dict(extra), **common)
            if len(bases) == 1
            else SearchParam(
                resource_type=base,
                expression=expression,
                extra=dict(extra),
                description=description_for(definition, base),
                **common,
            )
            for base in bases
        ]
    per_base = expressions_per_base(expression, bases)
    params = []
    for base in bases:
        own = per_base.get(base)
        if own is None:
            if strict:
                raise ValueError(
                    f"SearchParameter '{code}': expression has no branch for base '{base}' "
                    f"(each branch of a multi-base expression must start with its type)"
                )
            continue
        params.append(
            SearchParam(
                resource_type=base,
                expression=own,
                extra=dict(extra),
                description=description_for(definition, base),
                **common,
            )
        )
    return params


def description_for(definition: dict, base: str) -> str:
    """The part of a multi-type description about `base`: the R4 definitions list one line
    per type (`* [Observation](observation.html): The subject ...`)."""
    description = definition.get("description", "") or ""
    match = re.search(r"^\* \[" + re.escape(base) + r"\]\([^)]*\): *(.*)$", description, re.M)
    return match.group(1).strip() if match else description


def expressions_per_base(expression: str, bases: list[str]) -> dict[str, str]:
    """Split `A.x | B.y.where(...) | A.z` into {'A': 'A.x | A.z', 'B': 'B.y.where(...)'}.

    A branch rooted at Resource/DomainResource applies to every base."""
    grouped: dict[str, list[str]] = {}
    wanted = set(bases)
    for branch in split_union(expression):
        root = root_name(branch)
        targets = bases if root in RESOURCE_LEVEL_BASES else [root] if root in wanted else []
        for base in targets:
            grouped.setdefault(base, []).append(branch)
    return {base: " | ".join(branches) for base, branches in grouped.items()}


def _validate(definition: Any) -> None:
    if not isinstance(definition, dict):
        raise ValueError("a SearchParameter must be a JSON object")
    kind = definition.get("resourceType", "SearchParameter")
    if kind != "SearchParameter":
        raise ValueError(f"expected resourceType 'SearchParameter', got {kind!r}")
    code = definition.get("code")
    if not isinstance(code, str) or not _CODE_PATTERN.match(code):
        raise ValueError(
            f"SearchParameter.code must be a name like 'glucose-context' "
            f"(letters, digits, '_', '-', '.'), got {code!r}"
        )
    param_type = definition.get("type")
    if param_type not in PARAM_TYPES:
        raise ValueError(
            f"SearchParameter '{code}': type must be one of {sorted(PARAM_TYPES)}, "
            f"got {param_type!r}"
        )
    bases = definition.get("base")
    if not isinstance(bases, list) or not bases:
        raise ValueError(f"SearchParameter '{code}': base must be a non-empty list of types")
    for base in bases:
        if not isinstance(base, str) or not _TYPE_NAME_PATTERN.match(base):
            raise ValueError(f"SearchParameter '{code}': base {base!r} is not a type name")
        if base not in R4_RESOURCE_TYPES and base not in RESOURCE_LEVEL_BASES and (
            base not in ADDITIONAL_RESOURCE_TYPES
        ):
            raise ValueError(f"SearchParameter '{code}': base {base!r} is not an R4 resource type")
    expression = definition.get("expression")
    has_expression = isinstance(expression, str) and bool(expression.strip())
    if param_type != "special" and not has_expression:
        raise ValueError(f"SearchParameter '{code}': expression (FHIRPath) is required")
    if isinstance(expression, str) and expression.strip():
        try:
            check_fhirpath_syntax(expression)
        except SyntaxError as error:
            raise ValueError(
                f"SearchParameter '{code}': expression is not valid FHIRPath: {expression!r} "
                f"({error})"
            ) from None
    if param_type == "composite":
        components = definition.get("component")
        if not isinstance(components, list) or len(components) < 2:
            raise ValueError(f"SearchParameter '{code}': a composite needs at least two components")
        for component in components:
            if not (
                isinstance(component, dict)
                and isinstance(component.get("definition"), str)
                and isinstance(component.get("expression"), str)
            ):
                raise ValueError(
                    f"SearchParameter '{code}': each component needs a definition (canonical "
                    f"URL) and an expression"
                )
    for key in ("target", "modifier", "comparator"):
        value = definition.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"SearchParameter '{code}': {key} must be a list of strings")
    url = definition.get("url", "")
    if not isinstance(url, str):
        raise ValueError(f"SearchParameter '{code}': url must be a string")


class _RaisingErrorListener(ErrorListener):
    def syntaxError(self, recognizer, offendingSymbol, line, column, msg, e):  # noqa: N802,N803
        raise SyntaxError(f"column {column}: {msg}")


def check_fhirpath_syntax(expression: str) -> None:
    """Raise SyntaxError unless `expression` is one complete FHIRPath expression.

    fhirpathpy's own parse() silently recovers from syntax errors, so the FHIRPath grammar it
    ships is run here with a listener that raises, and must consume the whole text."""
    listener = _RaisingErrorListener()
    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    tokens = CommonTokenStream(lexer)
    parser = FHIRPathParser(tokens)
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    parser.expression()
    if tokens.LA(1) != Token.EOF:
        raise SyntaxError(f"unexpected text after the expression: {tokens.LT(1).text!r}")
