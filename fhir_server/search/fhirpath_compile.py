"""Compile search parameter expressions (FHIRPath) into fast evaluators.

Why compile: `fhirpathpy` costs ~70 µs per expression evaluation and an Observation has ~40
parameters, which would cap ingest far below the thousands of resources per second devices
push. The R4 definitions use a small subset of FHIRPath, so that subset is compiled once into
closures over plain dicts and lists:

- dotted paths over lists (`Patient.name.given`), `[n]`, `first()`;
- choice elements with the R4 model (fhirpathpy ships it): `Observation.effective` looks up
  `effectiveDateTime`, `effectivePeriod`, ...; `as Type`, `.as(Type)`, `.ofType(Type)` narrow them;
- unions `a | b`, parentheses;
- `.where(resolve() is Patient)` (the type read from the reference string, without resolving),
  `.where(field = 'literal')`, `extension('url')`;
- `.exists()`, `.empty()`.

Each result is a `(value, type)` pair, where `type` is the FHIR type name the model gives the
element (`CodeableConcept`, `dateTime`, `Reference`...), a backbone path
(`Observation.component`), or None when unknown; the index extractor converts by type.

Anything else (`Patient.deceased.exists() and Patient.deceased != false`, `%resource...`) falls
back to fhirpathpy with the R4 model and a `resolve()` that returns a stub of the referenced
type, so that `resolve() is Patient` works without a database. Results from the fallback carry
type None (the extractor then recognises values by shape).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import fhirpathpy
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models as _fhirpath_models

from fhir_server.model.resource_types import ADDITIONAL_RESOURCE_TYPES

Item = tuple[Any, str | None]
Evaluator = Callable[[Any, str | None, dict], list[Item]]  # (node, node type, root resource)

_MODEL = _fhirpath_models["r4"]
_PATH_TYPES: dict[str, str] = _MODEL["path2Type"]
_CHOICES: dict[str, list[str]] = _MODEL["choiceTypePaths"]
_ELSEWHERE: dict[str, str] = _MODEL["pathsDefinedElsewhere"]
_PARENTS: dict[str, str] = _MODEL["type2Parent"]
_PRIMITIVE_CHOICE_NAMES = frozenset(
    (
        "Base64Binary", "Boolean", "Canonical", "Code", "Date", "DateTime", "Decimal", "Id",
        "Instant", "Integer", "Markdown", "Oid", "PositiveInt", "String", "Time",
        "UnsignedInt", "Uri", "Url", "Uuid",
    )
)  # fmt: skip
RESOURCE_ROOTS = frozenset(("Resource", "DomainResource"))
_HISTORY_SUFFIX = re.compile(r"/_history/[^/]*$")


class UnsupportedExpression(Exception):
    """The expression uses FHIRPath outside the compiled subset: use the fallback."""


# -- public entry points ----------------------------------------------------------------------


def compile_expression(expression: str, context_type: str | None) -> Evaluator:
    """A fast evaluator for `expression` evaluated on a node of `context_type` (a resource type
    for a parameter's expression, the element's type path for a composite's component).

    Falls back to fhirpathpy when the expression is outside the compiled subset."""
    try:
        return compile_fast(expression, context_type)
    except UnsupportedExpression:
        return compile_fallback(expression)


def compile_fast(expression: str, context_type: str | None) -> Evaluator:
    """The compiled evaluator; raises UnsupportedExpression outside the subset."""
    parser = _Parser(_tokenize(expression), context_type)
    evaluator = parser.parse_boolean(context_type)
    if not parser.at_end():
        raise UnsupportedExpression(f"unexpected {parser.peek()!r} in {expression!r}")
    return evaluator


def compile_fallback(expression: str) -> Evaluator:
    """A fhirpathpy evaluator (slow, complete). Never raises at evaluation time."""
    compiled = fhirpathpy.compile(
        expression,
        model=_MODEL,
        options={"userInvocationTable": {"resolve": {"fn": _resolve_stub, "arity": {0: []}}}},
    )

    def evaluate(node: Any, node_type: str | None, resource: dict) -> list[Item]:
        try:
            values = compiled(node, {"resource": resource, "rootResource": resource})
        except Exception:  # a malformed resource must never break a write
            return []
        return [(value, None) for value in values if value is not None]

    return evaluate


def reference_type(reference: Any) -> str | None:
    """The resource type a Reference points at, read from its string (`Patient/1`,
    `http://x/fhir/Patient/1/_history/2`) or its `type`; None when unknown (`#contained`,
    `urn:uuid:...`)."""
    if not isinstance(reference, dict):
        return None
    text = reference.get("reference")
    if isinstance(text, str) and "/" in text and not text.startswith("#"):
        if "/_history/" in text:
            text = _HISTORY_SUFFIX.sub("", text)
        parts = text.rsplit("/", 2)
        if len(parts) >= 2 and parts[-2][:1].isupper():
            return parts[-2]
    declared = reference.get("type")
    if isinstance(declared, str) and declared:
        return declared.rsplit("/", 1)[-1]
    return None


# -- type model -------------------------------------------------------------------------------


def _type_key(name: str) -> str:
    """Compare type names regardless of the case of the first letter (`DateTime` in a
    component, `dateTime` elsewhere)."""
    return name[:1].lower() + name[1:]


def _choice_type_name(suffix: str) -> str:
    return _type_key(suffix) if suffix in _PRIMITIVE_CHOICE_NAMES else suffix


def _is_type(actual: str | None, wanted: str) -> bool:
    """`actual` is `wanted` or derives from it (Age is a Quantity)."""
    wanted_key = _type_key(wanted)
    while actual:
        if _type_key(actual) == wanted_key:
            return True
        actual = _PARENTS.get(actual)
    return False


def _child(type_path: str | None, name: str) -> tuple[str, Any]:
    """What `name` is on a node of `type_path`: ('choice', [(json key, type)]),
    ('field', child type path or None)."""
    if type_path is None:
        return "field", None
    current: str | None = type_path
    while current:
        full = f"{current}.{name}"
        if full in _CHOICES:
            return "choice", [
                (name + suffix, _choice_type_name(suffix)) for suffix in _CHOICES[full]
            ]
        if full in _PATH_TYPES:
            child_type = _PATH_TYPES[full]
            return "field", (full if child_type in ("BackboneElement", "Element") else child_type)
        if full in _ELSEWHERE:
            return "field", _ELSEWHERE[full]
        if any(key.startswith(full + ".") for key in _backbone_prefixes(current)):
            return "field", full  # a backbone element: its children are listed by full path
        if "." in current:  # inside a backbone: inherited BackboneElement / Element children
            for base in ("BackboneElement", "Element"):
                if f"{base}.{name}" in _PATH_TYPES:
                    return "field", _PATH_TYPES[f"{base}.{name}"]
            return "field", None
        current = _PARENTS.get(current)
    return "field", None


_PREFIX_CACHE: dict[str, list[str]] = {}


def _backbone_prefixes(type_path: str) -> list[str]:
    """All model paths under `type_path` (cached: the model has ~7,700 paths)."""
    cached = _PREFIX_CACHE.get(type_path)
    if cached is None:
        prefix = type_path + "."
        cached = [key for key in _PATH_TYPES if key.startswith(prefix)]
        _PREFIX_CACHE[type_path] = cached
    return cached


def _is_resource_type(name: str) -> bool:
    return (
        name in RESOURCE_ROOTS
        or _PARENTS.get(name) in RESOURCE_ROOTS
        or name in ADDITIONAL_RESOURCE_TYPES
    )


# -- tokenizer --------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:"
    r"(?P<string>'(?:[^'\\]|\\.)*')"
    r"|(?P<number>\d+)"
    r"|(?P<ident>[A-Za-z_][A-Za-z0-9_]*|`[^`]+`)"
    r"|(?P<var>%[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>!=|!~|<=|>=|[.()\[\]|=,<>~+\-*/&])"
    r")"
)


def _tokenize(expression: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    text = expression.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise UnsupportedExpression(f"cannot read {text[position:]!r}")
        kind = match.lastgroup or ""
        value = match.group(kind)
        if kind == "ident" and value.startswith("`"):
            value = value[1:-1]
        elif kind == "string":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        tokens.append((kind, value))
        position = match.end()
    return tokens


# -- parser / compiler ------------------------------------------------------------------------


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], context_type: str | None) -> None:
        self.tokens = tokens
        self.position = 0
        self.context_type = context_type

    def peek(self, offset: int = 0) -> tuple[str, str] | None:
        index = self.position + offset
        return self.tokens[index] if index < len(self.tokens) else None

    def at_end(self) -> bool:
        return self.position >= len(self.tokens)

    def take(self, kind: str, value: str | None = None) -> str:
        token = self.peek()
        if token is None or token[0] != kind or (value is not None and token[1] != value):
            raise UnsupportedExpression(f"expected {value or kind}, got {token!r}")
        self.position += 1
        return token[1]

    def accept(self, kind: str, value: str) -> bool:
        token = self.peek()
        if token == (kind, value):
            self.position += 1
            return True
        return False

    # boolean := equality (('and' | 'or') equality)*  (left to right; 'and' before 'or' is
    # not needed by any R4 definition, so mixing them falls back to fhirpathpy)
    def parse_boolean(self, context_type: str | None) -> Evaluator:
        left = self.parse_equality(context_type)
        operator = None
        while self.peek() in (("ident", "and"), ("ident", "or")):
            token = self.peek()
            assert token is not None
            if operator is not None and token[1] != operator:
                raise UnsupportedExpression("mixed and/or")
            operator = token[1]
            self.position += 1
            right = self.parse_equality(context_type)
            left = _logical(operator, left, right)
        return left

    # equality := union (('=' | '!=') literal)?
    def parse_equality(self, context_type: str | None) -> Evaluator:
        evaluator, _ = self.parse_union(context_type)
        token = self.peek()
        if token not in (("op", "="), ("op", "!=")):
            return evaluator
        self.position += 1
        literal_token = self.peek()
        if literal_token is None:
            raise UnsupportedExpression("missing right operand")
        self.position += 1
        kind, text = literal_token
        literal: Any
        if kind == "string":
            literal = text
        elif kind == "number":
            literal = int(text)
        elif literal_token in (("ident", "true"), ("ident", "false")):
            literal = text == "true"
        else:
            raise UnsupportedExpression("comparison with a non-literal")
        return _equality(evaluator, literal, negate=token[1] == "!=")

    # union := as_expr ('|' as_expr)*
    def parse_union(self, context_type: str | None) -> tuple[Evaluator, str | None]:
        branches = [self.parse_as(context_type)]
        while self.accept("op", "|"):
            branches.append(self.parse_as(context_type))
        if len(branches) == 1:
            return branches[0]
        evaluators = [evaluator for evaluator, _ in branches]
        types = {branch_type for _, branch_type in branches}
        union_type = types.pop() if len(types) == 1 else None

        def union(node: Any, node_type: str | None, resource: dict) -> list[Item]:
            out: list[Item] = []
            for evaluator in evaluators:
                out.extend(evaluator(node, node_type, resource))
            return out

        branch_keys = [first_keys(evaluator) for evaluator in evaluators]
        if all(keys is not None for keys in branch_keys):
            union.first_keys = frozenset().union(*branch_keys)  # type: ignore[attr-defined]
        return union, union_type

    # as_expr := path ('as' Type)?
    def parse_as(self, context_type: str | None) -> tuple[Evaluator, str | None]:
        steps, result_type = self.parse_path(context_type)
        if self.peek() == ("ident", "as"):
            self.position += 1
            wanted = self.take("ident")
            steps, result_type = _narrow(steps, result_type, wanted)
        return _chain(steps), result_type

    # path := primary suffix*
    def parse_path(self, context_type: str | None) -> tuple[list, str | None]:
        steps: list = []
        current_type = context_type
        token = self.peek()
        if token == ("op", "("):
            self.position += 1
            inner, current_type = self.parse_union(context_type)
            self.take("op", ")")
            steps.append(("eval", inner, current_type))
        elif token is not None and token[0] == "ident":
            name = token[1]
            if (
                _is_resource_type(name)
                and self.peek(1) != ("op", "(")
                and (context_type is None or "." not in context_type)
            ):
                self.position += 1
                if context_type is None:
                    steps.append(("root", name))  # unknown input: check the type at run time
                elif name != context_type and name not in RESOURCE_ROOTS:
                    steps.append(("nothing",))  # a branch for another type never matches
                # else: evaluators compiled for a type only ever see resources of that type
                current_type = name if name not in RESOURCE_ROOTS else context_type
            else:
                current_type = self.parse_step(steps, current_type)
        else:
            raise UnsupportedExpression(f"unexpected {token!r}")
        while True:
            if self.accept("op", "."):
                current_type = self.parse_step(steps, current_type)
            elif self.accept("op", "["):
                index = int(self.take("number"))
                self.take("op", "]")
                steps.append(("index", index))
            else:
                return steps, current_type

    def parse_step(self, steps: list, current_type: str | None) -> str | None:
        name = self.take("ident")
        if not self.accept("op", "("):
            kind, detail = _child(current_type, name)
            if kind == "choice":
                steps.append(("choice", detail))
                return None
            steps.append(("field", name, detail))
            return detail
        if name in ("as", "ofType"):
            wanted = self.take("ident")
            self.take("op", ")")
            narrowed, result_type = _narrow(steps, current_type, wanted)
            steps[:] = narrowed
            return result_type
        if name == "where":
            steps.append(self.parse_where())
            self.take("op", ")")
            return current_type
        if name == "extension":
            url = self.take("string")
            self.take("op", ")")
            steps.append(("field", "extension", "Extension"))
            steps.append(("where_eq", "url", url))
            return "Extension"
        if name in ("exists", "empty", "first"):
            self.take("op", ")")
            steps.append((name,))
            return "boolean" if name != "first" else current_type
        raise UnsupportedExpression(f"function {name}()")

    def parse_where(self) -> tuple:
        token = self.peek()
        if token == ("ident", "resolve"):
            self.position += 1
            self.take("op", "(")
            self.take("op", ")")
            self.take("ident", "is")
            return ("where_resolve_is", self.take("ident"))
        if token is not None and token[0] == "ident":
            field_name = self.take("ident")
            self.take("op", "=")
            return ("where_eq", field_name, self.take("string"))
        raise UnsupportedExpression(f"where({token!r} ...)")


def _narrow(steps: list, current_type: str | None, wanted: str) -> tuple[list, str | None]:
    """Apply `as wanted` to the steps so far: restrict a choice lookup at compile time, or
    filter by the (static or run-time) type."""
    steps = list(steps)
    last = steps[-1] if steps else None
    if last is not None and last[0] == "choice":
        keys = [(key, key_type) for key, key_type in last[1] if _is_type(key_type, wanted)]
        steps[-1] = ("choice", keys)
        return steps, _choice_type_name(wanted) if len(keys) == 1 else None
    if current_type is not None and "." not in current_type:
        if _is_type(current_type, wanted):
            return steps, current_type
        steps.append(("nothing",))
        return steps, None
    steps.append(("of_type", wanted))
    return steps, _choice_type_name(wanted)


def _singleton_boolean(items: list[Item]) -> bool | None:
    """FHIRPath singleton evaluation of collections in a boolean context."""
    if len(items) != 1:
        return None  # empty, or several values (an error in FHIRPath: treated as unknown)
    value = items[0][0]
    return value if isinstance(value, bool) else True


def _logical(operator: str, left: Evaluator, right: Evaluator) -> Evaluator:
    """Three-valued `and` / `or` as FHIRPath defines them (empty = unknown)."""

    def evaluate(node: Any, node_type: str | None, resource: dict) -> list[Item]:
        a = _singleton_boolean(left(node, node_type, resource))
        b = _singleton_boolean(right(node, node_type, resource))
        if operator == "and":
            if a is False or b is False:
                return [(False, "boolean")]
            return [(True, "boolean")] if a and b else []
        if a is True or b is True:
            return [(True, "boolean")]
        return [(False, "boolean")] if a is False and b is False else []

    return evaluate


def _equality(evaluator: Evaluator, literal: Any, negate: bool) -> Evaluator:
    """`path = literal` / `path != literal`: empty when the path is empty; values of another
    kind than the literal (a dateTime against `false`) are simply not equal."""
    literal_kind = bool if isinstance(literal, bool) else str if isinstance(literal, str) else int

    def evaluate(node: Any, node_type: str | None, resource: dict) -> list[Item]:
        items = evaluator(node, node_type, resource)
        if len(items) != 1:
            return []
        value = items[0][0]
        if literal_kind is int:
            same_kind = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            same_kind = isinstance(value, literal_kind)
        equal = same_kind and value == literal
        return [(equal != negate, "boolean")]

    return evaluate


def first_keys(evaluator: Evaluator) -> frozenset[str] | None:
    """The JSON keys of the input node that the evaluator's first step reads: when the node has
    none of them the result is empty, so the extractor can skip the parameter cheaply. None
    when unknown (fallback, exists(), ...)."""
    return getattr(evaluator, "first_keys", None)


def _steps_first_keys(steps: list) -> frozenset[str] | None:
    if not steps:
        return None
    step = steps[0]
    if step[0] == "field":
        return frozenset((step[1],))
    if step[0] == "choice":
        return frozenset(key for key, _ in step[1])
    if step[0] == "eval":
        return first_keys(step[1])
    if step[0] == "nothing":
        return frozenset()
    return None


def _chain(steps: list) -> Evaluator:
    """Turn parsed steps into one closure that walks lists of (value, type)."""
    evaluator = _chain_functions(steps)
    keys = _steps_first_keys(steps)
    if keys is not None and not (steps and steps[-1][0] in ("exists", "empty")):
        evaluator.first_keys = keys  # type: ignore[attr-defined]
    return evaluator


def _chain_functions(steps: list) -> Evaluator:
    if len(steps) == 1 and steps[0][0] == "eval":
        return steps[0][1]  # `(A | B)` alone: the group is the evaluator
    if steps and all(step[0] == "field" for step in steps):
        return _field_chain([step[1] for step in steps], steps[-1][2])
    if (
        len(steps) > 1
        and all(step[0] == "field" for step in steps[:-1])
        and steps[-1][0] in ("where_eq", "where_resolve_is")
    ):
        # `Observation.subject.where(resolve() is Patient)`, `telecom.where(system='phone')`
        return _filtered(_field_chain([step[1] for step in steps[:-1]], steps[-2][2]), steps[-1])
    functions = [_step_function(step) for step in steps]

    def evaluate(node: Any, node_type: str | None, resource: dict) -> list[Item]:
        items: list[Item] = [(node, node_type)]
        for function in functions:
            items = function(items, resource)
            if not items:
                break
        return items

    if functions and functions[-1] in (_EXISTS, _EMPTY):
        # exists()/empty() must still run on an empty list
        def evaluate_with_tail(node: Any, node_type: str | None, resource: dict) -> list[Item]:
            items: list[Item] = [(node, node_type)]
            for function in functions[:-1]:
                items = function(items, resource)
            return functions[-1](items, resource)

        return evaluate_with_tail
    return evaluate


def _EXISTS(items: list[Item], resource: dict) -> list[Item]:  # noqa: N802
    return [(bool(items), "boolean")]


def _EMPTY(items: list[Item], resource: dict) -> list[Item]:  # noqa: N802
    return [(not items, "boolean")]


def _step_function(step: tuple) -> Callable[[list[Item], dict], list[Item]]:
    kind = step[0]
    if kind == "root":
        name = step[1]
        if name in RESOURCE_ROOTS:
            return lambda items, resource: [
                item for item in items if isinstance(item[0], dict) and "resourceType" in item[0]
            ]
        return lambda items, resource: [
            item
            for item in items
            if isinstance(item[0], dict) and item[0].get("resourceType") == name
        ]
    if kind == "field":
        return _field_step(step[1], step[2])
    if kind == "choice":
        return _choice_step(step[1])
    if kind == "eval":
        inner: Evaluator = step[1]

        def evaluate_group(items: list[Item], resource: dict) -> list[Item]:
            out: list[Item] = []
            for value, value_type in items:
                out.extend(inner(value, value_type, resource))
            return out

        return evaluate_group
    if kind == "index":
        index = step[1]
        return lambda items, resource: items[index : index + 1]
    if kind == "first":
        return lambda items, resource: items[:1]
    if kind == "exists":
        return _EXISTS
    if kind == "empty":
        return _EMPTY
    if kind == "nothing":
        return lambda items, resource: []
    if kind == "of_type":
        wanted = step[1]
        return lambda items, resource: [item for item in items if _is_type(item[1], wanted)]
    if kind == "where_eq":
        field_name, literal = step[1], step[2]
        return lambda items, resource: [
            item
            for item in items
            if isinstance(item[0], dict) and item[0].get(field_name) == literal
        ]
    if kind == "where_resolve_is":
        wanted = step[1]
        return lambda items, resource: [item for item in items if reference_type(item[0]) == wanted]
    raise UnsupportedExpression(f"step {kind}")  # pragma: no cover (parser makes known steps)


def _field_chain(names: list[str], result_type: str | None) -> Evaluator:
    """The common case, a plain dotted path (`Observation.code`, `Patient.name.family`): one
    tight loop without per-step (value, type) pairs, since only the last type matters."""
    *inner, last = names
    if not inner:

        def evaluate_one(node: Any, node_type: str | None, resource: dict) -> list[Item]:
            if type(node) is not dict:
                return []
            child = node.get(last)
            if child is None:
                return []
            if type(child) is list:
                return [(element, result_type) for element in child if element is not None]
            return [(child, result_type)]

        return evaluate_one

    def evaluate(node: Any, node_type: str | None, resource: dict) -> list[Item]:
        current = [node]
        for name in inner:
            following: list = []
            for value in current:
                if type(value) is dict:
                    child = value.get(name)
                    if child is None:
                        continue
                    if type(child) is list:
                        following.extend(child)
                    else:
                        following.append(child)
            if not following:
                return []
            current = following
        out: list[Item] = []
        for value in current:
            if type(value) is dict:
                child = value.get(last)
                if child is None:
                    continue
                if type(child) is list:
                    out.extend((element, result_type) for element in child if element is not None)
                else:
                    out.append((child, result_type))
        return out

    return evaluate


def _filtered(evaluator: Evaluator, where: tuple) -> Evaluator:
    """A field chain whose results are filtered by a trailing where()."""
    if where[0] == "where_resolve_is":
        wanted = where[1]

        def evaluate_resolve(node: Any, node_type: str | None, resource: dict) -> list[Item]:
            return [
                item
                for item in evaluator(node, node_type, resource)
                if reference_type(item[0]) == wanted
            ]

        return evaluate_resolve
    field_name, literal = where[1], where[2]

    def evaluate_equal(node: Any, node_type: str | None, resource: dict) -> list[Item]:
        return [
            item
            for item in evaluator(node, node_type, resource)
            if type(item[0]) is dict and item[0].get(field_name) == literal
        ]

    return evaluate_equal


def _field_step(name: str, child_type: str | None) -> Callable[[list[Item], dict], list[Item]]:
    def step(items: list[Item], resource: dict) -> list[Item]:
        out: list[Item] = []
        for value, _ in items:
            if type(value) is dict:
                child = value.get(name)
                if child is None:
                    continue
                if type(child) is list:
                    out.extend((element, child_type) for element in child if element is not None)
                else:
                    out.append((child, child_type))
        return out

    return step


def _choice_step(keys: list[tuple[str, str]]) -> Callable[[list[Item], dict], list[Item]]:
    def step(items: list[Item], resource: dict) -> list[Item]:
        out: list[Item] = []
        for value, _ in items:
            if type(value) is dict:
                for key, key_type in keys:
                    child = value.get(key)
                    if child is None:
                        continue
                    if type(child) is list:
                        out.extend((element, key_type) for element in child)
                    else:
                        out.append((child, key_type))
        return out

    return step


def _resolve_stub(values: list) -> list:
    """fhirpathpy `resolve()`: a stub resource of the referenced type, enough for `is Type`."""
    out = []
    for value in values:
        target_type = reference_type(value)
        if target_type:
            out.append(ResourceNode.create_node({"resourceType": target_type}))
    return out
