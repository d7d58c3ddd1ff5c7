"""Index extraction: the search index entries of one resource, for every parameter of its type.

On every write the server turns a resource into small NamedTuple entries (types.py) that the
storage backends store as rows or embedded fields. Each parameter's expression is compiled
once per resource type (fhirpath_compile: a fast evaluator for the forms the R4 definitions
use, fhirpathpy for the rest), then each value found is converted by parameter type and FHIR
datatype (CodeableConcept -> one token per coding, HumanName -> one string per part, Period ->
one date range...). Conversion recognises values by their declared type, or by their shape
when the type is unknown (fallback results, extensions).

Extraction never raises on odd data: a malformed value gives no entry, an unknown resource
type gives only the Resource-level parameters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from itertools import product
from typing import Any

import orjson

from fhir_server.search.fast_dates import date_period as parse_date_period
from fhir_server.search.fhirpath_compile import (
    Evaluator,
    UnsupportedExpression,
    compile_expression,
    compile_fast,
    first_keys,
)
from fhir_server.search.fhirpath_split import split_union
from fhir_server.search.fulltext import CONTENT_PARAM, fulltext_entry
from fhir_server.search.registry import SearchParamRegistry
from fhir_server.search.text import normalise
from fhir_server.search.types import (
    DATE_MAX,
    DATE_MIN,
    CompositeEntry,
    DateEntry,
    IndexEntry,
    NumberEntry,
    QuantityEntry,
    ReferenceEntry,
    SearchParam,
    StringEntry,
    TokenEntry,
    UriEntry,
)

Canonicalize = Callable[[float, "str | None", "str | None", dict], list[tuple[float, str]]]
Converter = Callable[[str, Any, "str | None", dict, list], None]

# Displays and names repeat across resources (every CGM reading has the same LOINC display):
# caching the shared normaliser saves most of its Unicode work at ingest.
normalize_string = lru_cache(maxsize=16384)(normalise)

_UNKNOWN_TYPE = "?"
CURRENCY_SYSTEM = "urn:iso:std:iso:4217"
_LOCAL_REFERENCE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_ABSOLUTE_REFERENCE = re.compile(
    r"^(?P<base>[a-z][a-z0-9+.\-]*://.+?)/(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})"
    r"(?:/_history/[^/]+)?$"
)
_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
_ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")
_QUANTITY_TYPES = frozenset(
    ("Quantity", "Age", "Duration", "SimpleQuantity", "Count", "Distance", "MoneyQuantity")
)
_STRING_PRIMITIVES = frozenset(
    ("string", "markdown", "code", "id", "uri", "url", "canonical", "oid", "uuid", "System.String")
)
_DATE_PRIMITIVES = frozenset(("date", "dateTime", "instant"))
# Element types whose JSON value is not an object (the R4 model's primitive type names)
_PRIMITIVE_TYPES = frozenset(
    (
        "base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id",
        "instant", "integer", "markdown", "oid", "positiveInt", "string", "time",
        "unsignedInt", "uri", "url", "uuid", "xhtml", "System.String", "System.Boolean",
        "System.Integer", "System.Decimal", "System.Date", "System.DateTime", "System.Time",
    )
)  # fmt: skip


class _CompiledParam:
    """One parameter of one resource type, ready to run: evaluator + converter."""

    __slots__ = ("code", "kind", "evaluate", "convert", "components", "first_keys", "required")

    def __init__(
        self,
        code: str,
        kind: str,
        evaluate: Evaluator,
        convert: Converter | None,
        components: tuple | None = None,
    ) -> None:
        self.code = code
        self.kind = kind
        self.evaluate = evaluate
        self.convert = convert
        self.components = components  # composite: ((component code, expression, converter),..)
        self.first_keys = first_keys(evaluate)
        # composites: alternatives (one per branch of the base expression), each a tuple of key
        # sets that must all meet the resource's keys for that branch to give anything
        self.required: tuple[tuple[frozenset[str], ...], ...] | None = None


class IndexExtractor:
    """Extracts index entries; compiles each resource type's parameters on first use.

    `canonicalize(value, system, code, resource)` gives the canonical forms of a quantity
    (e.g. UCUM base units) as (value, unit) pairs; without it quantities have no canonical form.
    `local_bases` are this server's base URLs: an absolute reference under one of them is also
    indexed as a local Type/id reference.
    With `share_rows` (for a backend whose search reads `registry.pid_codes`), a parameter
    that is a union of others (`combo-code`) gets entries only for the branches no other
    parameter covers (see `shared_rows`).
    With `fulltext`, each resource also gets its FullTextEntry (`_text`, `_content`).
    """

    def __init__(
        self,
        registry: SearchParamRegistry,
        canonicalize: Canonicalize | None = None,
        local_bases: Iterable[str] = (),
        share_rows: bool = False,
        fulltext: bool = False,
    ) -> None:
        self.registry = registry
        self.share_rows = share_rows
        self.fulltext = fulltext
        self.canonicalize = canonicalize
        self.local_bases = tuple(base.rstrip("/") for base in local_bases)
        self._compiled: dict[str, list[_CompiledParam]] = {}
        # with share_rows: every parameter from its whole expression, for `extract(only=)`
        self._compiled_whole: dict[str, list[_CompiledParam]] = {}
        self._known_types = frozenset(registry.types())
        self._registry_version = registry.version
        self._component_evaluators: dict[tuple[str, str | None], Evaluator] = {}
        # (id of a compiled list, top-level keys) -> (that list, its applicable parameters);
        # the list is held so that its id cannot be reused while the entry lives
        self._applicable: dict[tuple[int, frozenset[str]], tuple[list, list]] = {}
        self._references: dict[str, tuple[str | None, str | None, str | None] | None] = {}
        # (kind, type, JSON of an element) -> its entries, across resources (_SHARED_KINDS)
        self._converted: dict[tuple, list] = {}
        self._converters: dict[str, Converter] = {
            "token": _convert_token,
            "string": _convert_string,
            "date": _convert_date,
            "number": _convert_number,
            "quantity": self._convert_quantity,
            "reference": self._convert_reference,
            "uri": _convert_uri,
        }

    def invalidate(self) -> None:
        """Forget compiled parameters; done automatically when the registry changes (`add`)."""
        self._compiled.clear()
        self._compiled_whole.clear()
        self._component_evaluators.clear()
        self._applicable.clear()
        self._converted.clear()
        self._known_types = frozenset(self.registry.types())
        self._registry_version = self.registry.version

    def extract(self, resource: dict, only: frozenset[str] | None = None) -> list[IndexEntry]:
        """Every index entry of `resource`, without duplicates within a parameter; with
        `only`, the entries of those parameter codes alone, each from its whole expression
        even with `share_rows` (matching one resource against a few clauses in memory,
        without extracting the other ~50 parameters)."""
        if not isinstance(resource, dict):
            return []
        resource_type = resource.get("resourceType")
        if not isinstance(resource_type, str):
            return []
        if self._registry_version != self.registry.version:
            self.invalidate()  # a custom SearchParameter was added since the last compile
        share = self.share_rows and only is None
        cache = self._compiled if share or not self.share_rows else self._compiled_whole
        compiled = cache.get(resource_type)
        if compiled is None:
            if resource_type not in self._known_types:
                # one shared compilation for every unknown type, so that junk type names
                # cannot grow the cache
                resource_type = None
                compiled = cache.get(_UNKNOWN_TYPE)
            if compiled is None:
                compiled = self._compile_type(resource_type or _UNKNOWN_TYPE, share, cache)
        if only is not None:
            compiled = [param for param in compiled if param.code in only]
            applicable = _applicable(compiled, set(resource))
        else:
            applicable = self._applicable_for_keys(compiled, frozenset(resource))
        entries: list[IndexEntry] = []
        memo: dict = {}  # the same element feeds several parameters (code, combo-code, ...)
        for param in applicable:
            try:
                items = param.evaluate(resource, resource_type, resource)
                if not items:
                    continue
                found: list = []
                if param.components is not None:
                    self._composite_entries(param, items, resource, memo, found)
                else:
                    _convert_items(
                        param.convert,
                        param.kind,
                        param.code,
                        items,
                        resource,
                        memo,
                        found,
                        self._converted,
                    )
            except Exception:  # odd data must not break a write; this parameter gives nothing
                continue
            if len(found) > 1:
                found = list(dict.fromkeys(found))
            entries.extend(found)
        if self.fulltext and (only is None or CONTENT_PARAM in only):
            text = fulltext_entry(resource)
            if text is not None:
                entries.append(text)
        return entries

    def _applicable_for_keys(
        self, compiled: list[_CompiledParam], present: frozenset[str]
    ) -> list[_CompiledParam]:
        # resources of one kind arrive with the same top-level keys (every CGM reading of an
        # import): which parameters can give anything is decided once per key set
        key = (id(compiled), present)
        known = self._applicable.get(key)
        if known is not None:
            return known[1]
        if len(self._applicable) >= _APPLICABLE_LIMIT:
            self._applicable.clear()  # junk key sets cannot grow it without bound
        applicable = _applicable(compiled, present)
        self._applicable[key] = (compiled, applicable)
        return applicable

    # -- compilation --------------------------------------------------------------------------

    def _compile_type(
        self, resource_type: str, share: bool, cache: dict[str, list[_CompiledParam]]
    ) -> list[_CompiledParam]:
        known = resource_type != _UNKNOWN_TYPE
        params = self.registry.for_type(resource_type if known else "Resource")
        compiled: list[_CompiledParam] = []
        for param in params.values():
            if not param.expression or param.type == "special":
                continue
            expression = param.expression
            shared = (
                self.registry.shared_rows(resource_type, param.code)
                if known and share
                else None
            )
            if shared is not None:
                if shared.remainder is None:
                    continue  # every branch is indexed under another parameter
                expression = shared.remainder
            evaluate = compile_expression(expression, resource_type if known else None)
            if param.type == "composite":
                components = self._compile_components(param, resource_type)
                if components is None:
                    continue
                composite = _CompiledParam(param.code, param.type, evaluate, None, components)
                if known:
                    composite.required = self._composite_requirements(
                        expression, components, resource_type
                    )
                compiled.append(composite)
            else:
                convert = self._converters.get(param.type)
                if convert is not None:
                    compiled.append(_CompiledParam(param.code, param.type, evaluate, convert))
        cache[resource_type] = compiled
        return compiled

    def _composite_requirements(
        self, expression: str, components: tuple, resource_type: str
    ) -> tuple[tuple[frozenset[str], ...], ...] | None:
        """What a composite needs in the resource, per branch of its base expression: on the
        resource itself (`Observation`), a key for every component; on an element
        (`Observation.component`), that element's key. None when it cannot be told."""
        alternatives = []
        for branch in split_union(expression):
            if branch in (resource_type, "Resource"):
                needed = []
                for _, _, component_expression, _ in components:
                    evaluator = self._component_evaluator(component_expression, resource_type)
                    keys = first_keys(evaluator)
                    if keys is None:
                        return None
                    needed.append(keys)
                alternatives.append(tuple(needed))
            else:
                try:
                    keys = first_keys(compile_fast(branch, resource_type))
                except UnsupportedExpression:
                    return None
                if keys is None:
                    return None
                alternatives.append((keys,))
        return tuple(alternatives)

    def _compile_components(self, param: SearchParam, resource_type: str) -> tuple | None:
        parts = []
        for component in param.components:
            definition = self.registry.by_url(component.definition, resource_type)
            if definition is None or definition.type not in self._converters:
                return None  # a composite we cannot build completely is not indexed
            parts.append(
                (
                    definition.code,
                    definition.type,
                    component.expression,
                    self._converters[definition.type],
                )
            )
        return tuple(parts)

    def _component_evaluator(self, expression: str, context_type: str | None) -> Evaluator:
        # components are relative to the composite's element, whose type differs per branch
        # (`Observation | Observation.component`): compile once per (expression, element type)
        key = (expression, context_type)
        evaluator = self._component_evaluators.get(key)
        if evaluator is None:
            evaluator = compile_expression(expression, context_type)
            self._component_evaluators[key] = evaluator
        return evaluator

    def _composite_entries(
        self, param: _CompiledParam, items: list, resource: dict, memo: dict, found: list
    ) -> None:
        components = param.components or ()
        for element, element_type in items:
            # evaluate every component before converting any: most composites of a resource
            # miss a part (code-value-concept on a Quantity Observation) and cost nothing more
            raw_parts = []
            for code, kind, expression, convert in components:
                evaluator = self._component_evaluator(expression, element_type)
                values = evaluator(element, element_type, resource)
                if not values:
                    break
                raw_parts.append((code, kind, convert, values))
            else:
                per_component: list[list] = []
                for code, kind, convert, values in raw_parts:
                    part_entries: list = []
                    _convert_items(
                        convert, kind, code, values, resource, memo, part_entries, self._converted
                    )
                    if not part_entries:
                        break
                    per_component.append(list(dict.fromkeys(part_entries)))
                else:
                    for combination in product(*per_component):
                        found.append(CompositeEntry(param.code, tuple(combination)))

    # -- converters needing configuration ------------------------------------------------------

    def _convert_quantity(
        self, code: str, value: Any, value_type: str | None, resource: dict, out: list
    ) -> None:
        if type(value) is not dict:
            return
        kind = value_type if value_type is not None else _shape_of(value)
        if kind == "Range":
            for bound in ("low", "high"):
                if isinstance(value.get(bound), dict):
                    self._quantity(code, value[bound], resource, out)
            return
        if kind == "Money":
            amount = _finite_number(value.get("value"))
            currency = value.get("currency")
            if amount is not None:
                currency = currency if isinstance(currency, str) else None
                out.append(
                    QuantityEntry(code, amount, CURRENCY_SYSTEM, currency, currency, None, None)
                )
            return
        if kind in _QUANTITY_TYPES or kind is None or "." in kind:
            self._quantity(code, value, resource, out)

    def _quantity(self, code: str, quantity: dict, resource: dict, out: list) -> None:
        amount = _finite_number(quantity.get("value"))
        if amount is None:
            return
        system = _text_or_none(quantity.get("system"))
        unit_code = _text_or_none(quantity.get("code"))
        unit = _text_or_none(quantity.get("unit"))
        canonical: list = []
        if self.canonicalize is not None:
            try:
                canonical = list(self.canonicalize(amount, system, unit_code, resource) or ())
            except Exception:  # a converter bug must not reject the resource
                canonical = []
        added = False
        for pair in canonical:
            try:
                canonical_value, canonical_unit = float(pair[0]), str(pair[1])
            except (TypeError, ValueError, IndexError):
                continue
            if math.isfinite(canonical_value):
                out.append(
                    QuantityEntry(
                        code, amount, system, unit_code, unit, canonical_value, canonical_unit
                    )
                )
                added = True
        if not added:
            out.append(QuantityEntry(code, amount, system, unit_code, unit, None, None))

    def _convert_reference(
        self, code: str, value: Any, value_type: str | None, resource: dict, out: list
    ) -> None:
        if isinstance(value, str):  # canonical / uri elements of reference parameters
            entry = self._reference_from_string(code, value)
            if entry is not None:
                out.append(entry)
            return
        if type(value) is not dict:
            return
        text = value.get("reference")
        identifier = value.get("identifier")
        identifier_system = identifier_value = None
        if isinstance(identifier, dict):
            identifier_system = _text_or_none(identifier.get("system"))
            identifier_value = _text_or_none(identifier.get("value"))
        target_type = target_id = url = None
        if isinstance(text, str) and text:
            if text.startswith("#"):
                return  # contained resources are not indexed as references
            entry = self._reference_from_string(code, text)
            if entry is None:
                return
            _, target_type, target_id, url, _, _ = entry
        elif identifier_value is None:
            return  # display-only reference: nothing to search on
        declared = value.get("type")
        if target_type is None and isinstance(declared, str) and declared:
            target_type = declared.rsplit("/", 1)[-1]
        out.append(
            ReferenceEntry(code, target_type, target_id, url, identifier_system, identifier_value)
        )

    def _reference_from_string(self, code: str, text: str) -> ReferenceEntry | None:
        # every reading of a patient names the same subject and device: parse each text once
        try:
            parts = self._references[text]
        except KeyError:
            parts = self._parse_reference(text)
            if len(self._references) >= _REFERENCE_CACHE_LIMIT:
                self._references.clear()
            self._references[text] = parts
        if parts is None:
            return None
        return ReferenceEntry(code, parts[0], parts[1], parts[2], None, None)

    def _parse_reference(self, text: str) -> tuple[str | None, str | None, str | None] | None:
        """(target type, local id, url) of a reference string; None when not indexed."""
        text = text.strip()
        if not text or text.startswith("#"):
            return None
        local = _LOCAL_REFERENCE.match(text)
        if local:
            return local.group(1), local.group(2), None
        absolute = _ABSOLUTE_REFERENCE.match(text)
        if absolute:
            # the id only means "our resource" when the base is ours; a foreign Patient/1 must
            # not match a search for the local Patient/1
            is_local = absolute.group("base") in self.local_bases
            return absolute.group("type"), absolute.group("id") if is_local else None, text
        return None, None, text


_APPLICABLE_LIMIT = 4096
_REFERENCE_CACHE_LIMIT = 65536


def _applicable(compiled: list[_CompiledParam], present: set | frozenset) -> list[_CompiledParam]:
    """The parameters of `compiled` that can give entries for a resource with these keys."""
    found = []
    for param in compiled:
        keys = param.first_keys
        if keys is not None and keys.isdisjoint(present):
            continue  # the resource has none of the elements this parameter reads
        required = param.required
        if required is not None and not any(
            all(not keys.isdisjoint(present) for keys in alternative) for alternative in required
        ):
            continue  # a composite whose parts cannot all be there
        found.append(param)
    return found


# -- converters without configuration ---------------------------------------------------------


def _convert_items(
    convert: Converter,
    kind: str,
    code: str,
    items: list,
    resource: dict,
    memo: dict,
    out: list,
    shared: dict | None = None,
) -> None:
    """Convert each (value, type) with `convert`, reusing the entries already made for the same
    element by another parameter of the same kind during this extraction (re-labelled), or,
    with `shared`, for an element of the same JSON in an earlier resource."""
    for value, value_type in items:
        if type(value) is not dict:
            if value_type is not None and value_type not in _PRIMITIVE_TYPES:
                continue  # a primitive where the model says complex type (`"code": "x"`)
            convert(code, value, value_type, resource, out)  # cheap: no memo
            continue
        key = (id(value), kind)  # one dict sits at one place in the resource: one type
        cached = memo.get(key)
        if cached is not None:
            made = cached[1]
        else:
            made = _converted(convert, kind, code, value, value_type, resource, shared)
            memo[key] = (value, made)  # holding `value` keeps its id from being reused
        if made and made[0][0] != code:
            out.extend([tuple.__new__(type(entry), (code, *entry[1:])) for entry in made])
        else:
            out.extend(made)


# Kinds whose entries depend on the element's JSON alone (a quantity's canonical forms also
# depend on the resource's code): every reading of an import repeats its code, category,
# subject and device, converted once.
_SHARED_KINDS = frozenset({"token", "reference"})
_SHARED_LIMIT = 16384


def _converted(
    convert: Converter,
    kind: str,
    code: str,
    value: dict,
    value_type: str | None,
    resource: dict,
    shared: dict | None,
) -> list:
    """The entries of one element, from `shared` when an element of the same JSON was
    converted before (never changed afterwards: callers copy or re-label them)."""
    content = None
    if shared is not None and kind in _SHARED_KINDS:
        try:
            content = (kind, value_type, orjson.dumps(value))
        except TypeError:  # a value orjson cannot write exactly (Decimal): not shared
            content = None
        else:
            made = shared.get(content)
            if made is not None:
                return made
    made = []
    convert(code, value, value_type, resource, made)
    if content is not None and shared is not None:
        if len(shared) >= _SHARED_LIMIT:
            shared.clear()
        shared[content] = made
    return made


def _convert_token(code: str, value: Any, value_type: str | None, resource: dict, out: list):
    kind = value_type if value_type is not None else _shape_of(value)
    if type(value) is dict:
        if kind == "CodeableConcept":
            _codeable_concept_tokens(code, value, out)
        elif kind == "Coding":
            _coding_token(code, value, None, out)
        elif kind == "Identifier":
            value_text = _text_or_none(value.get("value"))
            system = _text_or_none(value.get("system"))
            type_concept = value.get("type")
            type_text = None
            if isinstance(type_concept, dict):
                type_text = _normalized_or_none(type_concept.get("text"))
            if value_text is not None or system is not None:
                out.append(TokenEntry(code, system, value_text, type_text))
        elif kind == "ContactPoint":
            # R4 search token table: a ContactPoint matches on its value only
            value_text = _text_or_none(value.get("value"))
            if value_text is not None:
                out.append(TokenEntry(code, None, value_text, None))
        return
    if value is True or value is False:
        out.append(TokenEntry(code, None, "true" if value else "false", None))
    elif isinstance(value, str):
        if value:
            out.append(TokenEntry(code, None, value, None))
    elif isinstance(value, int | float) and math.isfinite(value):
        out.append(TokenEntry(code, None, str(value), None))


def _codeable_concept_tokens(code: str, concept: dict, out: list) -> None:
    concept_text = _normalized_or_none(concept.get("text"))
    codings = concept.get("coding")
    displays: set[str] = set()
    if isinstance(codings, list):
        for coding in codings:
            if isinstance(coding, dict):
                entry = _coding_token(code, coding, concept_text, out)
                if entry is not None and entry.text:
                    displays.add(entry.text)
    if concept_text and concept_text not in displays:
        # CodeableConcept.text alone still answers :text searches
        out.append(TokenEntry(code, None, None, concept_text))


def _coding_token(code: str, coding: dict, fallback_text: str | None, out: list):
    system = _text_or_none(coding.get("system"))
    value = _text_or_none(coding.get("code"))
    display = _normalized_or_none(coding.get("display"))
    if value is None and system is None and display is None:
        return None
    entry = TokenEntry(code, system, value, display if display is not None else fallback_text)
    out.append(entry)
    return entry


def _convert_string(code: str, value: Any, value_type: str | None, resource: dict, out: list):
    if isinstance(value, str):
        _string_entry(code, value, out)
        return
    if type(value) is not dict:
        return
    kind = value_type if value_type is not None else _shape_of(value)
    parts = _NAME_PARTS if kind == "HumanName" else _ADDRESS_PARTS if kind == "Address" else ()
    for part in parts:
        part_value = value.get(part)
        if isinstance(part_value, list):
            for element in part_value:
                if isinstance(element, str):
                    _string_entry(code, element, out)
        elif isinstance(part_value, str):
            _string_entry(code, part_value, out)


def _string_entry(code: str, text: str, out: list) -> None:
    normalized = normalize_string(text)
    if normalized:
        out.append(StringEntry(code, normalized, text))


def _convert_date(code: str, value: Any, value_type: str | None, resource: dict, out: list):
    if isinstance(value, str):
        period = parse_date_period(value)
        if period is not None:
            out.append(DateEntry(code, period[0], period[1]))
        return
    if type(value) is not dict:
        text = _fhirpath_date_text(value)
        if text is not None:
            _convert_date(code, text, None, resource, out)
        return
    kind = value_type if value_type is not None else _shape_of(value)
    if kind == "Period":
        bounds = _period_bounds(value)
        if bounds is not None:
            out.append(DateEntry(code, bounds[0], bounds[1]))
    elif kind == "Timing":
        # R4: a Timing matches on its outer limits: first event to last event (and bounds)
        lows: list[float] = []
        highs: list[float] = []
        events = value.get("event")
        if isinstance(events, list):
            for event in events:
                period = parse_date_period(event) if isinstance(event, str) else None
                if period is not None:
                    lows.append(period[0])
                    highs.append(period[1])
        repeat = value.get("repeat")
        if isinstance(repeat, dict) and isinstance(repeat.get("boundsPeriod"), dict):
            bounds = _period_bounds(repeat["boundsPeriod"])
            if bounds is not None:
                lows.append(bounds[0])
                highs.append(bounds[1])
        if lows:
            out.append(DateEntry(code, min(lows), max(highs)))


def _period_bounds(period: dict) -> tuple[float, float] | None:
    start, end = period.get("start"), period.get("end")
    if start is None and end is None:
        return None
    low, high = DATE_MIN, DATE_MAX
    if start is not None:
        parsed = parse_date_period(start)
        if parsed is None:
            return None
        low = parsed[0]
    if end is not None:
        parsed = parse_date_period(end)
        if parsed is None:
            return None
        high = parsed[1]
    if low > high:
        return None
    return low, high


def _fhirpath_date_text(value: Any) -> str | None:
    """fhirpathpy may hand back its own date objects from the fallback; they print as FHIR."""
    if value is None or isinstance(value, bool | int | float | list):
        return None
    text = str(value)
    return text[1:] if text.startswith("@") else text


def _convert_number(code: str, value: Any, value_type: str | None, resource: dict, out: list):
    number = _finite_number(value)
    if number is not None:
        out.append(NumberEntry(code, number))
    elif type(value) is dict:
        number = _finite_number(value.get("value"))  # a Quantity used as a number
        if number is not None:
            out.append(NumberEntry(code, number))


def _convert_uri(code: str, value: Any, value_type: str | None, resource: dict, out: list):
    if isinstance(value, str) and value:
        out.append(UriEntry(code, value))


# -- helpers ----------------------------------------------------------------------------------


def _shape_of(value: Any) -> str | None:
    """Guess a complex datatype from its keys (fallback results and untyped extensions)."""
    if type(value) is not dict:
        return None
    if "coding" in value:
        return "CodeableConcept"
    if "reference" in value:
        return "Reference"
    if "family" in value or "given" in value:
        return "HumanName"
    if "line" in value or "city" in value or "postalCode" in value or "country" in value:
        return "Address"
    if "start" in value or "end" in value:
        return "Period"
    if "event" in value or "repeat" in value:
        return "Timing"
    if "low" in value or "high" in value:
        return "Range"
    if "currency" in value:
        return "Money"
    if "value" in value:
        raw = value["value"]
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return "Quantity"
        if value.get("system") in _CONTACT_SYSTEMS:
            return "ContactPoint"
        return "Identifier"
    if "code" in value or "system" in value or "display" in value:
        return "Coding"
    if "identifier" in value:
        return "Reference"
    if "text" in value:
        return "CodeableConcept"
    return None


_CONTACT_SYSTEMS = frozenset(("phone", "fax", "email", "pager", "url", "sms", "other"))


def _finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _normalized_or_none(value: Any) -> str | None:
    if isinstance(value, str):
        normalized = normalize_string(value)
        return normalized or None
    return None
