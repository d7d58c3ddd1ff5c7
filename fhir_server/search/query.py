"""Parse the query items of a FHIR search into a typed, validated, storage-independent query.

    parse_search("Observation", [("patient.name", "héloïse"), ("date", "ge2024-03"),
                                 ("_count", "100")], registry, strict=False)

gives a SearchQuery whose `clauses` are AND terms (each an OR list of typed values), plus
the result parameters and the parameters that were not understood. Storage backends
compile the clauses into SQL or Mongo filters; nothing here knows about either.

Unknown parameters never raise in lenient mode: they are listed in `unknown` (with a
reason) so that the server can report them in an OperationOutcome entry, because silently
ignoring a clinical filter is a safety bug. Strict mode (Prefer: handling=strict) refuses
them with a SearchError. Malformed values always raise SearchError (a 400).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fhir_server.limits import Limits
from fhir_server.search.errors import SearchError, UnsupportedModifier
from fhir_server.search.escaping import split_escaped
from fhir_server.search.fulltext import FULLTEXT_PARAMS, parse_text_value
from fhir_server.search.limits import check_search_size
from fhir_server.search.lookup import ANY_RESOURCE, ParamLookup, component_params
from fhir_server.search.result_params import (
    RESULT_PARAMETERS,
    Include,
    ResultParams,
    ResultParamsBuilder,
    SortKey,
)
from fhir_server.search.types import SearchParam
from fhir_server.search.values import (
    CompositeValue,
    MissingValue,
    Value,
    is_resource_type_name,
    parse_bool,
    parse_date,
    parse_identifier_reference,
    parse_number,
    parse_of_type,
    parse_quantity,
    parse_reference,
    parse_string,
    parse_token,
    parse_uri,
)

__all__ = [
    "ChainClause",
    "Clause",
    "Criterion",
    "HasClause",
    "Include",
    "ParamLookup",
    "ResultParams",
    "SearchError",
    "SearchQuery",
    "SortKey",
    "UnknownParam",
    "UnsupportedModifier",
    "criterion_key",
    "leaf_clause",
    "parse_search",
    "parse_system_search",
]

# Modifiers each parameter type accepts, besides :missing (every type) and, for references,
# :[ResourceType]. Token :below/:above/:in/:not-in are parsed here and evaluated by storage
# through a TokenExpander (expansion.py).
MODIFIERS_BY_TYPE: dict[str, frozenset[str]] = {
    "string": frozenset({"exact", "contains", "text"}),
    "token": frozenset({"text", "not", "below", "above", "in", "not-in", "of-type"}),
    "reference": frozenset({"identifier"}),
    "uri": frozenset({"below", "above"}),
}
SUPPORTED_TYPES = frozenset(
    {"number", "date", "string", "token", "reference", "composite", "quantity", "uri"}
)


@dataclass(frozen=True, slots=True)
class Clause:
    """One AND term on a parameter of the searched type: matches if any value matches."""

    param: SearchParam
    modifier: str | None
    values: tuple[Value, ...]

    @property
    def key(self) -> str:
        return self.param.code + (f":{self.modifier}" if self.modifier else "")


@dataclass(frozen=True, slots=True)
class ChainClause:
    """`subject:Patient.name=x`: resources whose reference `param` points to a resource
    (of one of `target_types`) that matches `inner`.

    `target_type` is the type named in the URL (None when not named); `target_types` are
    the types the chain applies to: the named one, or every declared target of `param`
    that has the inner parameter. `inner` was parsed against the first of them (its
    parameter codes and values mean the same on all of them: the parser checks that)."""

    param: SearchParam
    target_type: str | None
    inner: Clause | ChainClause | HasClause
    target_types: tuple[str, ...]

    @property
    def key(self) -> str:
        head = self.param.code + (f":{self.target_type}" if self.target_type else "")
        return f"{head}.{self.inner.key}"


@dataclass(frozen=True, slots=True)
class HasClause:
    """`_has:Observation:patient:code=x`: resources referred to, through `ref_param` of
    `resource_type`, by at least one resource matching `inner` (which may nest _has)."""

    resource_type: str
    ref_param: SearchParam
    inner: Clause | ChainClause | HasClause

    @property
    def key(self) -> str:
        return f"_has:{self.resource_type}:{self.ref_param.code}:{self.inner.key}"


@dataclass(frozen=True, slots=True)
class CompartmentClause:
    """Membership of a compartment (`GET /Patient/123/Observation`, `$everything`): the
    resource matches when ANY of `alternatives` (or `by_type[its type]`) does (one
    reference clause per parameter the CompartmentDefinition lists, plus `_id` for the
    compartment's own resource). It comes
    from the URL path, not from the query, so it stays out of the self link's items.

    `compartment_id` None is membership of any compartment of the type (the type-level
    `Patient/$everything`): every resource of the compartment type itself, and of the other
    types those that refer to one through a listed parameter."""

    compartment_type: str
    compartment_id: str | None
    alternatives: tuple[Clause, ...]
    # For a search over several types (`$everything`): the alternatives of each type.
    by_type: dict[str, tuple[Clause, ...]] | None = None
    # Per type, clauses ANDed with the membership (`$everything`'s care dates, start/end).
    within: dict[str, tuple[Clause, ...]] | None = None

    def extra(self, resource_type: str) -> tuple[Clause, ...]:
        return self.within.get(resource_type, ()) if self.within else ()

    def everyone(self, resource_type: str) -> bool:
        """Every resource of `resource_type` is a member (no clause to check)."""
        return self.compartment_id is None and resource_type == self.compartment_type

    @property
    def key(self) -> str:
        return f"{self.compartment_type}/{self.compartment_id or '*'}"


@dataclass(frozen=True, slots=True)
class AnyOf:
    """What a request may see of a type (search/visibility.py): matches when all criteria of
    ANY alternative do; no alternative matches nothing. Added by the server, never from the
    URL, so it stays out of the self link's items."""

    alternatives: tuple[tuple[Clause | CompartmentClause, ...], ...]

    @property
    def key(self) -> str:
        return "_access"


Criterion = Clause | ChainClause | HasClause | CompartmentClause | AnyOf


@dataclass(frozen=True, slots=True)
class UnknownParam:
    name: str
    value: str
    reason: str


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A parsed search. `clauses` are ANDed; `resource_type` is None for a system-level
    search, whose `resource_types` are the _type list (empty: every type)."""

    resource_type: str | None
    clauses: tuple[Criterion, ...]
    result: ResultParams
    unknown: tuple[UnknownParam, ...] = ()
    warnings: tuple[str, ...] = ()
    resource_types: tuple[str, ...] = ()
    # What the request may see (search/visibility.py Restriction): the storage backends AND
    # its criterion for each type a system search reads, chain targets, `_has` sources and
    # included resources. A type-level search also carries its own type's among `clauses`.
    restriction: Any = None
    # Insertion order when unsorted, never the order a range implies (implied_order.py):
    # for a de-identified view, whose order must not follow the stored (unshifted) dates.
    insertion_order: bool = False

    def self_link_items(self) -> list[tuple[str, str]]:
        """What was understood, canonically: filters sorted by name then value, values
        re-escaped, `eq` prefixes dropped; then result parameters in a fixed order. Unknown
        parameters and the paging cursor are left out."""
        items: list[tuple[str, str]] = []
        if self.resource_type is None and self.resource_types:
            items.append(("_type", ",".join(self.resource_types)))
        items.extend(
            sorted(
                (clause.key, ",".join(value.to_param() for value in leaf_clause(clause).values))
                for clause in self.clauses
                if not isinstance(clause, CompartmentClause | AnyOf)
            )
        )
        items.extend(self.result.self_link_items())
        return items


def criterion_key(criterion: Criterion) -> str:
    """The parameter name as it would appear in a URL, e.g. `subject:Patient.name:exact`."""
    return criterion.key


def leaf_clause(criterion: Criterion) -> Clause:
    """The innermost Clause of a chain or _has: the one carrying the values."""
    while not isinstance(criterion, Clause):
        criterion = criterion.inner
    return criterion


class _UnsupportedParameter(SearchError):
    """A parameter the registry knows but this server cannot evaluate (type `special`)."""


def parse_search(
    resource_type: str,
    items: Sequence[tuple[str, str]],
    registry: ParamLookup,
    strict: bool = False,
    limits: Limits | None = None,
) -> SearchQuery:
    """Parse a type-level search (`GET [base]/[type]?...` or `POST [type]/_search`).

    `items` are the decoded query (or form) items in order; repeated names are ANDed.
    Raises SearchError for malformed input, and in strict mode for unknown parameters;
    SearchLimitError past `limits` (the defaults when None).
    """
    if not is_resource_type_name(resource_type):
        raise SearchError(f"not a resource type: {resource_type!r}")
    check_search_size(items, limits)
    return _parse(resource_type, (resource_type,), items, registry, strict)


def parse_system_search(
    items: Sequence[tuple[str, str]],
    registry: ParamLookup,
    strict: bool = False,
    limits: Limits | None = None,
) -> SearchQuery:
    """Parse a system-level search (`GET [base]?_type=Patient,Observation&...`).

    A filter must be a parameter of every listed type (and mean the same on each); with no
    _type, only the parameters common to all resources (looked up on "Resource") apply.
    """
    check_search_size(items, limits)
    types: list[str] = []
    for key, value in items:
        if key != "_type":
            continue
        for name in value.split(","):
            if not is_resource_type_name(name):
                raise SearchError(f"_type: not a resource type: {name!r}", "_type")
            if name not in types:
                types.append(name)
    query = _parse(None, tuple(types) or (ANY_RESOURCE,), items, registry, strict)
    return SearchQuery(
        None, query.clauses, query.result, query.unknown, query.warnings, tuple(types)
    )


def _parse(
    resource_type: str | None,
    lookup_types: tuple[str, ...],
    items: Iterable[tuple[str, str]],
    registry: ParamLookup,
    strict: bool,
) -> SearchQuery:
    results = ResultParamsBuilder(registry, lookup_types)
    clauses: list[Criterion] = []
    unknown: list[UnknownParam] = []
    for key, value in items:
        name = key.partition(":")[0]
        if name in RESULT_PARAMETERS:
            results.add(key, value)
        elif key == "_type":
            if resource_type is not None:
                unknown.append(UnknownParam(key, value, "_type applies to system-level search"))
        elif value == "":
            unknown.append(UnknownParam(key, value, "empty value: parameter ignored"))
        else:
            parsed = _parse_for_types(lookup_types, key, value, registry)
            if isinstance(parsed, UnknownParam):
                unknown.append(parsed)
            else:
                clauses.append(parsed)
    if strict and unknown:
        first = unknown[0]
        raise SearchError(
            f"unknown or unsupported search parameter {first.name!r}: {first.reason}", first.name
        )
    return SearchQuery(
        resource_type,
        tuple(clauses),
        results.build(),
        tuple(unknown),
        tuple(results.warnings),
        (),
    )


def _parse_for_types(
    types: tuple[str, ...], key: str, value: str, registry: ParamLookup
) -> Criterion | UnknownParam:
    parsed: list[Criterion] = []
    for resource_type in types:
        try:
            criterion = _parse_path(resource_type, key, value, registry, key)
        except _UnsupportedParameter as error:
            return UnknownParam(key, value, error.message)
        if criterion is None:
            where = resource_type if len(types) == 1 else "every type in _type"
            if resource_type == ANY_RESOURCE:
                where = "all resource types (name the types with _type)"
            return UnknownParam(key, value, f"not a known search parameter of {where}")
        parsed.append(criterion)
    if any(_shape(criterion) != _shape(parsed[0]) for criterion in parsed[1:]):
        raise SearchError(f"{key} means different things on {', '.join(types)}", key)
    return parsed[0]


def _parse_path(
    resource_type: str, key: str, raw: str, registry: ParamLookup, expression: str
) -> Criterion | None:
    """Parse `key=raw` on `resource_type`; None if the (first) parameter is not known."""
    if key == "_has" or key.startswith("_has:"):
        return _parse_has(resource_type, key, raw, registry, expression)
    head, dot, rest = key.partition(".")
    code, _, modifier = head.partition(":")
    if ":" in modifier:
        raise SearchError(f"malformed parameter name {key!r}", expression)
    param = registry.get(resource_type, code)
    if param is None:
        return None
    if param.code in FULLTEXT_PARAMS and not dot:
        return _parse_fulltext(param, modifier or None, raw, expression)
    if param.type not in SUPPORTED_TYPES or not param.expression:
        # No expression (e.g. _text, _content): nothing was indexed, so it cannot be answered.
        raise _UnsupportedParameter(
            f"{param.type} parameter {code!r} is not supported by this server", expression
        )
    if not dot:
        return _parse_clause(param, modifier or None, raw, registry, expression)
    return _parse_chain(param, modifier or None, rest, raw, registry, expression)


def _parse_chain(
    param: SearchParam,
    type_name: str | None,
    rest: str,
    raw: str,
    registry: ParamLookup,
    expression: str,
) -> ChainClause:
    if param.type != "reference":
        raise SearchError(
            f"cannot chain on {param.code!r}: it is a {param.type} parameter, not a reference",
            expression,
        )
    if not rest:
        raise SearchError(f"nothing after the chain on {param.code!r}", expression)
    if type_name is not None:
        if not is_resource_type_name(type_name):
            raise SearchError(
                f"a chain takes a resource type after ':', not {type_name!r}", expression
            )
        if param.target and type_name not in param.target:
            raise SearchError(f"{param.code!r} cannot refer to a {type_name}", expression)
        candidates: tuple[str, ...] = (type_name,)
    else:
        candidates = param.target
        if not candidates:
            raise SearchError(
                f"{param.code!r} declares no target type: name one,"
                f" e.g. {param.code}:Patient.{rest}",
                expression,
            )
    parsed: list[tuple[str, Criterion]] = []
    for target in candidates:
        try:
            inner = _parse_path(target, rest, raw, registry, expression)
        except _UnsupportedParameter as error:
            raise SearchError(error.message, expression) from None
        if inner is not None:
            parsed.append((target, inner))
    if not parsed:
        inner_code = rest.partition(".")[0].partition(":")[0]
        raise SearchError(
            f"unknown chained parameter {inner_code!r} on {' / '.join(candidates)}", expression
        )
    first_type, first = parsed[0]
    if any(_shape(inner) != _shape(first) for _, inner in parsed[1:]):
        raise SearchError(
            f"{rest!r} means different things on {', '.join(t for t, _ in parsed)}: name the"
            f" type, e.g. {param.code}:{first_type}.{rest}",
            expression,
        )
    return ChainClause(param, type_name, first, tuple(target for target, _ in parsed))


def _parse_has(
    resource_type: str, key: str, raw: str, registry: ParamLookup, expression: str
) -> HasClause:
    parts = key.split(":", 3)
    if len(parts) != 4 or not all(parts[1:]):
        raise SearchError(
            f"_has takes _has:Type:reference-parameter:parameter, got {key!r}", expression
        )
    _, has_type, ref_code, rest = parts
    if not is_resource_type_name(has_type):
        raise SearchError(f"_has: not a resource type: {has_type!r}", expression)
    ref_param = registry.get(has_type, ref_code)
    if ref_param is None:
        raise SearchError(f"_has: {has_type} has no search parameter {ref_code!r}", expression)
    if ref_param.type != "reference":
        raise SearchError(f"_has: {has_type}:{ref_code} is not a reference", expression)
    if resource_type != ANY_RESOURCE and ref_param.target and resource_type not in ref_param.target:
        raise SearchError(
            f"_has: {has_type}:{ref_code} never refers to a {resource_type}", expression
        )
    try:
        inner = _parse_path(has_type, rest, raw, registry, expression)
    except _UnsupportedParameter as error:
        raise SearchError(error.message, expression) from None
    if inner is None:
        inner_code = rest.partition(".")[0].partition(":")[0]
        raise SearchError(f"_has: {has_type} has no search parameter {inner_code!r}", expression)
    return HasClause(has_type, ref_param, inner)


def _check_modifier(param: SearchParam, modifier: str | None, expression: str) -> None:
    if modifier is None or modifier == "missing":
        return
    if param.type == "reference" and is_resource_type_name(modifier):
        if param.target and modifier not in param.target:
            raise SearchError(f"{param.code!r} cannot refer to a {modifier}", expression)
        return
    if modifier not in MODIFIERS_BY_TYPE.get(param.type, ()):
        raise SearchError(
            f"modifier :{modifier} is not allowed on {param.type} parameter {param.code!r}",
            expression,
        )
    if modifier == "of-type" and param.code != "identifier":
        raise SearchError(":of-type applies to identifier parameters only", expression)


def _parse_clause(
    param: SearchParam, modifier: str | None, raw: str, registry: ParamLookup, expression: str
) -> Clause:
    _check_modifier(param, modifier, expression)
    values: list[Value] = []
    texts = split_escaped(raw, ",")  # as many as Limits.max_or_values (check_search_size)
    for text in texts:
        if text == "":
            raise SearchError(f"empty value in the list {raw!r}", expression)
        try:
            values.append(_parse_value(param, modifier, text, registry))
        except SearchError as error:
            raise SearchError(error.message, expression) from None
    return Clause(param, modifier, tuple(values))


def _parse_fulltext(param: SearchParam, modifier: str | None, raw: str, expression: str) -> Clause:
    """`_text` / `_content`: words (see search/fulltext.py), OR between comma-separated
    values; `:missing` is the only modifier."""
    special = dataclasses.replace(param, type="special")
    if modifier == "missing":
        return Clause(special, modifier, (MissingValue(parse_bool(raw)),))
    if modifier is not None:
        raise SearchError(f"{param.code} takes no modifier but :missing", expression)
    texts = split_escaped(raw, ",")  # as many as Limits.max_or_values (check_search_size)
    values = tuple(parse_text_value(text, param.code) for text in texts if text.strip())
    if not values:
        raise SearchError(f"{param.code} needs at least one word", expression)
    # `special` (as R5 types them): answered by the full-text index, never by string rows
    return Clause(special, None, values)


def _parse_value(
    param: SearchParam, modifier: str | None, text: str, registry: ParamLookup
) -> Value:
    kind = param.type
    if modifier == "missing":
        return MissingValue(parse_bool(text))
    if kind == "number":
        return parse_number(text)
    if kind == "date":
        return parse_date(text)
    if kind == "quantity":
        return parse_quantity(text)
    if kind == "string":
        return parse_string(text)
    if kind == "token":
        if modifier == "text":
            return parse_string(text)
        if modifier in ("in", "not-in"):
            return parse_uri(text)
        if modifier == "of-type":
            return parse_of_type(text)
        token = parse_token(text)
        if modifier in ("below", "above") and (token.system is None or token.code is None):
            raise SearchError(f"token :{modifier} takes system|code, got {text!r}")
        return token
    if kind == "reference":
        if modifier == "identifier":
            return parse_identifier_reference(text)
        return parse_reference(text, type_modifier=modifier, targets=param.target)
    if kind == "uri":
        return parse_uri(text)
    if kind == "composite":
        return _parse_composite(param, text, registry)
    raise SearchError(f"{kind} parameter {param.code!r} is not supported by this server")


def _parse_composite(param: SearchParam, text: str, registry: ParamLookup) -> CompositeValue:
    components = component_params(registry, param)
    parts = split_escaped(text, "$")
    if len(parts) != len(components):
        raise SearchError(
            f"composite {param.code!r} takes {len(components)} parts separated by $,"
            f" got {len(parts)}"
        )
    values: list[Value] = []
    for component, part in zip(components, parts, strict=True):
        if part == "":
            raise SearchError(f"empty part in composite value {text!r}")
        if component.type == "composite":
            raise SearchError(f"composite {param.code!r} nests another composite")
        values.append(_parse_value(component, None, part, registry))
    return CompositeValue(tuple(values))


def _shape(criterion: Criterion) -> tuple:
    """What a criterion means independently of which resource type's entry it came from."""
    if isinstance(criterion, Clause):
        return (
            "clause",
            criterion.param.code,
            criterion.param.type,
            criterion.modifier,
            criterion.values,
        )
    if isinstance(criterion, ChainClause):
        return (
            "chain",
            criterion.param.code,
            criterion.target_type,
            criterion.target_types,
            _shape(criterion.inner),
        )
    return ("has", criterion.resource_type, criterion.ref_param.code, _shape(criterion.inner))
