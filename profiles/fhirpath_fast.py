"""A compiler of the FHIRPath subset that profile invariants use, into Python closures.

Why: fhirpathpy evaluates an invariant such as `valueQuantity.exists() or
dataAbsentReason.exists()` in 200-500 µs, which alone would cap validation below the
5,000 resources/s the ingest path needs. The expression is parsed once by fhirpathpy's own
ANTLR parser; the supported subset (paths, choice elements, `$this`, `%resource`, literals,
=, !=, <, <=, >, >=, in, contains, |, and, or, xor, implies, integer + - * div mod, and the
functions exists, empty, not, count, first, matches, where, all, toString, length,
startsWith, substring, replace, toInteger) compiles into closures that run in a few µs.
Anything else raises `Unsupported` (at compile time, or at run time for data outside the
subset, such as arithmetic on decimals), and the caller falls back to fhirpathpy, so an
invariant is never decided by a partial implementation. Tests compare both evaluators on
every invariant the shipped profiles use.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from fhirpathpy.models import models
from fhirpathpy.parser import parse

Collection = list[Any]
Env = dict[str, Any]
Compiled = Callable[[Collection, Env], Collection]

# Type names that end a choice element's JSON key (valueQuantity, effectiveDateTime, ...),
# from the R4 model fhirpathpy ships.
CHOICE_SUFFIXES = frozenset(
    suffix for types in models["r4"]["choiceTypePaths"].values() for suffix in types
)


class Unsupported(Exception):
    """The expression uses FHIRPath this compiler does not implement."""


@functools.lru_cache(maxsize=4096)
def _parse(expression: str) -> dict:
    """fhirpathpy's ANTLR parse (~10 ms): once per expression (read only afterwards)."""
    return parse(expression)


FunctionMaker = Callable[[list[Compiled], list], Compiled]


@dataclass(frozen=True)
class Extensions:
    """What a caller adds to the subset for its own expressions (SQL on FHIR views add
    getResourceKey() and their constants): `functions` by (name, arity), each a maker of
    closures like those below, and `variables`, the `%names` read at run time from the
    mapping given to the compiled function."""

    functions: Mapping[tuple[str, int], FunctionMaker] = field(default_factory=dict)
    variables: frozenset[str] = frozenset()


_NO_EXTENSIONS = Extensions()
_extensions: ContextVar[Extensions] = ContextVar("fhirpath_extensions", default=_NO_EXTENSIONS)


def compile_fhirpath(
    expression: str, extensions: Extensions | None = None
) -> Callable[..., Collection]:
    """`fn(context_value, root_resource, variables=None) -> collection`; raises Unsupported."""
    tree = _parse(expression)
    token = _extensions.set(extensions or _NO_EXTENSIONS)
    try:
        body = _compile(tree["children"][0])
    finally:
        _extensions.reset(token)

    def run(
        context: Any, root: Any, variables: Mapping[str, Collection] | None = None
    ) -> Collection:
        # "this": what the arguments of intersect(), union() ... read ($this): the context,
        # or the item that where(), select(), all(), exists() are testing
        env = {"resource": root, "context": context, "this": [context], "vars": variables}
        return body([context], env)

    return run


def context_members(expression: str) -> frozenset[str] | None:
    """The member names `expression` reads from its context, when its result depends on
    those members alone (and the context's resourceType); None when it may read more:
    `$this` or a function applied to the context itself, any `%` constant (`%resource`
    reaches outside the context), or FHIRPath outside the compiled subset.

    Why: the validator memoizes an invariant's verdict keyed by those members' JSON, so
    `valueQuantity.exists() or dataAbsentReason.exists()` is decided once per distinct
    (valueQuantity, dataAbsentReason). Members are read under every spelling `_member` and
    fhirpathpy accept (`value` also matches `valueQuantity`, `_value` its extensions), see
    `member_keys`.
    """
    try:
        compile_fhirpath(expression)
        return frozenset(_read_members(_parse(expression), at_context=True))
    except (Unsupported, _ReadsMore):
        return None


def reads_only_context(expression: str) -> bool:
    """True when the result depends on the context value alone (no %resource and no other
    `%` constant), so that a verdict on one subtree holds for every equal subtree."""
    try:
        return not _external_constants(_parse(expression)) - {"context"}
    except Exception:  # noqa: BLE001 - unparsable: fhirpathpy reports it, never memoized
        return False


def member_keys(names: frozenset[str], keys: Any) -> list[str]:
    """The JSON keys among `keys` that reading the members `names` may look at."""
    out = []
    for key in keys:
        bare = key[1:] if key.startswith("_") else key
        if key == "resourceType" or bare in names or any(
            bare.startswith(name) and bare[len(name) :] in CHOICE_SUFFIXES for name in names
        ):
            out.append(key)
    return out


class _ReadsMore(Exception):
    """The expression reads more of its context than named members."""


def _read_members(node: dict, at_context: bool) -> set[str]:
    kind = node.get("type")
    children = node.get("children", [])
    if kind == "ExternalConstantTerm":
        raise _ReadsMore("a % constant")
    if kind == "InvocationTerm":
        inner = children[0]
        if inner["type"] == "MemberInvocation":
            if not at_context:
                return set()
            name = _identifier(inner["children"][0])
            if name[:1].isupper():
                raise _ReadsMore("a type name (Observation.code) selects the whole context")
            return {name}
        if at_context:
            raise _ReadsMore("$this or a function on the context itself")
        return _read_members(inner, False)
    if kind == "InvocationExpression":
        # the step (member or function, with its arguments) applies to the source's result
        return _read_members(children[0], at_context) | _read_members(children[1], False)
    if kind in ("MemberInvocation", "FunctionInvocation"):
        at_context = False  # function arguments see the function's input, not the context
    names: set[str] = set()
    for child in children:
        names |= _read_members(child, at_context)
    return names


def _external_constants(node: dict) -> set[str]:
    names: set[str] = set()
    if node.get("type") == "ExternalConstant":
        names.add(_identifier(node["children"][0]) if node.get("children") else "")
    for child in node.get("children", []):
        names |= _external_constants(child)
    return names


# -- helpers -------------------------------------------------------------------------------


def _member(items: Collection, name: str) -> Collection:
    out: Collection = []
    for item in items:
        if not isinstance(item, dict):
            continue
        if name in item:
            value = item[name]
        else:
            value = None
            for key in item:
                if key.startswith(name) and key[len(name) :] in CHOICE_SUFFIXES:
                    value = item[key]
                    break
            if value is None:
                continue
        if isinstance(value, list):
            out.extend(v for v in value if v is not None)
        else:
            out.append(value)
    return out


def _truth(items: Collection) -> bool | None:
    """Boolean evaluation of a collection: empty -> None (unknown)."""
    if not items:
        return None
    if len(items) > 1:
        raise Unsupported("a boolean operator on a collection of several items")
    value = items[0]
    return value if isinstance(value, bool) else True


def _wrap(value: bool | None) -> Collection:
    return [] if value is None else [value]


def _singleton(items: Collection) -> Any:
    if len(items) > 1:
        raise Unsupported("a singleton operator on several items")
    return items[0]


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def _text(node: dict) -> str:
    return "".join(node.get("terminalNodeText", [])) or node.get("text", "")


def _identifier(node: dict) -> str:
    name = node["terminalNodeText"][0] if node.get("terminalNodeText") else node["text"]
    return name[1:-1] if name.startswith("`") else name


def _string_literal(raw: str) -> str:
    body = raw[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m[1], m[1]), body)


# -- compilation -----------------------------------------------------------------------------


def _compile(node: dict) -> Compiled:
    kind = node["type"]
    handler = _HANDLERS.get(kind)
    if handler is None:
        raise Unsupported(kind)
    return handler(node)


def _term(node: dict) -> Compiled:
    return _compile(node["children"][0])


def _invocation_term(node: dict) -> Compiled:
    inner = node["children"][0]
    if inner["type"] == "MemberInvocation":
        name = _identifier(inner["children"][0])
        type_name = name[:1].isupper()

        def first_member(items: Collection, env: Env) -> Collection:
            # A path may start with the type name of its context (Observation.code).
            if type_name:
                typed = [i for i in items if isinstance(i, dict) and i.get("resourceType") == name]
                if typed:
                    return typed
            return _member(items, name)

        return first_member
    if inner["type"] == "FunctionInvocation":
        return _function(inner)
    if inner["type"] == "ThisInvocation":
        return lambda items, env: items
    raise Unsupported(inner["type"])


def _invocation_expression(node: dict) -> Compiled:
    source = _compile(node["children"][0])
    step = node["children"][1]
    if step["type"] == "MemberInvocation":
        name = _identifier(step["children"][0])
        return lambda items, env: _member(source(items, env), name)
    if step["type"] == "FunctionInvocation":
        typed = _choice_member(node["children"][0], step)
        if typed is not None:
            return typed
        function = _function(step)
        return lambda items, env: function(source(items, env), env)
    raise Unsupported(step["type"])


def _choice_member(source: dict, step: dict) -> Compiled | None:
    """`value.ofType(Quantity)` (or `.as(...)`) on a member: the choice element's JSON key
    (`valueQuantity`), without a model of types. A member present under its own name is
    not a choice element: its type needs the model, so that value is Unsupported (the
    caller falls back)."""
    functn = step["children"][0]
    name = _identifier(functn["children"][0])
    params = functn["children"][1]["children"] if len(functn["children"]) > 1 else []
    if name not in ("ofType", "as") or len(params) != 1:
        return None
    type_name = _type_argument(params)
    if source["type"] == "InvocationExpression" and source["children"][1]["type"] == (
        "MemberInvocation"
    ):
        parent = _compile(source["children"][0])
        member = _identifier(source["children"][1]["children"][0])
    elif (
        source["type"] == "TermExpression"
        and source["children"][0]["type"] == "InvocationTerm"
        and source["children"][0]["children"][0]["type"] == "MemberInvocation"
    ):
        parent = _this
        member = _identifier(source["children"][0]["children"][0]["children"][0])
    else:
        return None
    key = member + type_name[:1].upper() + type_name[1:]

    def choice_member(items: Collection, env: Env) -> Collection:
        out: Collection = []
        for item in parent(items, env):
            if not isinstance(item, dict):
                continue
            if key in item:
                value = item[key]
                out.extend(value if isinstance(value, list) else [value])
            elif member in item:
                raise Unsupported(f"{member}.ofType({type_name}) on a non-choice element")
        return out

    return choice_member


def _this(items: Collection, env: Env) -> Collection:
    return items


def _indexer(node: dict) -> Compiled:
    source, index = (_compile(child) for child in node["children"])

    def indexed(items: Collection, env: Env) -> Collection:
        position = index(items, env)
        if not position:
            return []
        n = _singleton(position)
        if type(n) is not int:
            raise Unsupported("an index that is not an integer")
        values = source(items, env)
        return values[n : n + 1] if n >= 0 else []

    return indexed


def _literal(node: dict) -> Compiled:
    inner = node["children"][0]
    raw = _text(inner)
    kind = inner["type"]
    if kind == "StringLiteral":
        value: Any = _string_literal(raw)
    elif kind == "NumberLiteral":
        value = float(raw) if "." in raw else int(raw)
    elif kind == "BooleanLiteral":
        value = raw == "true"
    elif kind == "NullLiteral":
        return lambda items, env: []
    else:
        raise Unsupported(kind)
    return _constant([value])


def _constant(values: Collection) -> Compiled:
    """A closure that returns a fixed collection, marked so that operators can fold it."""

    def constant(items: Collection, env: Env) -> Collection:
        return values

    constant.values = values  # type: ignore[attr-defined]
    return constant


def _constant_values(compiled: Compiled) -> Collection | None:
    return getattr(compiled, "values", None)


def _external_constant(node: dict) -> Compiled:
    constant = node["children"][0]
    name = _identifier(constant["children"][0]) if constant.get("children") else ""
    if name in ("resource", "rootResource"):
        return lambda items, env: [env["resource"]]
    if name == "context":
        return lambda items, env: [env["context"]]
    if name in _CONSTANTS:
        return _constant([_CONSTANTS[name]])
    if name in _extensions.get().variables:
        return lambda items, env: env["vars"][name]
    raise Unsupported(f"%{name}")


_CONSTANTS = {"ucum": "http://unitsofmeasure.org", "sct": "http://snomed.info/sct",
              "loinc": "http://loinc.org"}


def _parenthesized(node: dict) -> Compiled:
    return _compile(node["children"][0])  # a folded constant stays one


def _binary(node: dict) -> tuple[Compiled, Compiled, str]:
    left, right = (_compile(child) for child in node["children"])
    return left, right, node["terminalNodeText"][0]


def _equality(node: dict) -> Compiled:
    left, right, op = _binary(node)
    if op not in ("=", "!="):
        raise Unsupported(op)
    negate = op == "!="
    fixed = _constant_values(right)
    if fixed is not None and len(fixed) == 1:
        expected = fixed[0]

        def equality_to_constant(items: Collection, env: Env) -> Collection:
            a = left(items, env)
            if not a:
                return []
            return [(len(a) == 1 and _equal(a[0], expected)) != negate]

        return equality_to_constant

    def equality(items: Collection, env: Env) -> Collection:
        a, b = left(items, env), right(items, env)
        if not a or not b:
            return []
        same = len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
        return [same != negate]

    return equality


def _inequality(node: dict) -> Compiled:
    left, right, op = _binary(node)
    compare = {
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
    }[op]

    def inequality(items: Collection, env: Env) -> Collection:
        a, b = left(items, env), right(items, env)
        if not a or not b:
            return []
        x, y = _singleton(a), _singleton(b)
        numbers = isinstance(x, int | float) and isinstance(y, int | float)
        if isinstance(x, bool) or isinstance(y, bool) or (type(x) is not type(y) and not numbers):
            raise Unsupported("comparison of different types")
        if isinstance(x, str):
            x, y = _temporal_pair(x, y)
        elif not numbers:
            raise Unsupported("comparison of complex values")
        return [compare(x, y)]

    return inequality


_DATE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_TIME = re.compile(r"^\d{2}:\d{2}:\d{2}(\.\d+)?$")


def _temporal_pair(x: str, y: str) -> tuple[Any, Any]:
    """Dates and date-times in a comparable form: date-times with a zone in UTC; values of
    different precisions compared at their common precision, where equal parts make the
    later-precision value neither before nor after (the reference validator's answer for
    `start <= end` with `2023-06-21` and `2023-06-21T06:20:00Z` is false)."""
    if _DATE_TIME.match(x) and _DATE_TIME.match(y):
        from datetime import datetime

        return (datetime.fromisoformat(x.replace("Z", "+00:00")),
                datetime.fromisoformat(y.replace("Z", "+00:00")))
    if (_DATE.match(x) or _DATE_TIME.match(x)) and (_DATE.match(y) or _DATE_TIME.match(y)):
        if len(x) == len(y):
            return x, y
        common = min(len(x), len(y), 10)
        if x[:common] != y[:common]:
            return x[:common], y[:common]
        return _Incomparable(), _Incomparable()
    if _TIME.match(x) and _TIME.match(y):
        return x, y
    raise Unsupported("a comparison of strings that are not dates or times")


class _Incomparable:
    """Neither before, after nor equal: every ordering comparison is false."""

    def __lt__(self, other: object) -> bool:
        return False

    __le__ = __gt__ = __ge__ = __lt__


def _membership(node: dict) -> Compiled:
    left, right, op = _binary(node)
    if op == "contains":
        left, right = right, left
    fixed = _constant_values(right)
    if fixed is not None and all(isinstance(v, str) for v in fixed):
        strings = frozenset(fixed)

        def membership_in_strings(items: Collection, env: Env) -> Collection:
            a = left(items, env)
            if not a:
                return []
            value = _singleton(a)
            return [isinstance(value, str) and value in strings]

        return membership_in_strings

    def membership(items: Collection, env: Env) -> Collection:
        a = left(items, env)
        if not a:
            return []
        value = _singleton(a)
        return [any(_equal(value, b) for b in right(items, env))]

    return membership


def _union_of(values: Collection) -> Collection:
    out: Collection = []
    for value in values:
        if not any(_equal(value, seen) for seen in out):
            out.append(value)
    return out


def _union(node: dict) -> Compiled:
    left, right, _ = _binary(node)
    a, b = _constant_values(left), _constant_values(right)
    if a is not None and b is not None:
        return _constant(_union_of(a + b))  # ('<' | '>') is folded once

    def union(items: Collection, env: Env) -> Collection:
        return _union_of(left(items, env) + right(items, env))

    return union


def _and(node: dict) -> Compiled:
    left, right, _ = _binary(node)

    def conjunction(items: Collection, env: Env) -> Collection:
        a = _truth(left(items, env))
        if a is False:
            return [False]
        b = _truth(right(items, env))
        if b is False:
            return [False]
        return [True] if a and b else []

    return conjunction


def _or(node: dict) -> Compiled:
    left, right, op = _binary(node)

    def disjunction(items: Collection, env: Env) -> Collection:
        a = _truth(left(items, env))
        if op == "or" and a is True:
            return [True]
        b = _truth(right(items, env))
        if op == "xor":
            return [] if a is None or b is None else [a != b]
        if b is True:
            return [True]
        return [False] if a is False and b is False else []

    return disjunction


def _implies(node: dict) -> Compiled:
    left, right, _ = _binary(node)

    def implication(items: Collection, env: Env) -> Collection:
        a = _truth(left(items, env))
        if a is False:
            return [True]
        b = _truth(right(items, env))
        if b is True:
            return [True]
        if a is None:
            return []
        return _wrap(b)

    return implication


def _arithmetic(node: dict) -> Compiled:
    left, right, op = _binary(node)
    if op == "&":
        return _concatenation(left, right)
    if op not in ("+", "-", "*", "div", "mod"):
        raise Unsupported(op)  # '/' gives decimals and '&' strings: fhirpathpy handles them

    def arithmetic(items: Collection, env: Env) -> Collection:
        a, b = left(items, env), right(items, env)
        if not a or not b:
            return []
        x, y = _singleton(a), _singleton(b)
        if type(x) is not int or type(y) is not int:
            raise Unsupported("arithmetic on non-integers")
        if op in ("div", "mod") and y == 0:
            return []
        if op == "div":
            return [int(x / y)]  # truncates toward zero, like FHIRPath
        if op == "mod":
            return [x - y * int(x / y)]
        return [x + y if op == "+" else x - y if op == "-" else x * y]

    return arithmetic


def _concatenation(left: Compiled, right: Compiled) -> Compiled:
    def concatenate(items: Collection, env: Env) -> Collection:
        parts = []
        for side in (left(items, env), right(items, env)):
            value = _singleton(side) if side else ""
            if not isinstance(value, str):
                raise Unsupported("& on a non-string")
            parts.append(value)
        return ["".join(parts)]

    return concatenate


def _resource_type_test(node: dict, cast: bool) -> Compiled:
    """`x is T` / `x as T` for resource types (a JSON object's resourceType); other type
    names need the type of a value, which JSON alone does not say: fhirpathpy decides."""
    source = _compile(node["children"][0])
    type_name = _text(node["children"][1]).split(".")[-1]
    return _type_filter(source, type_name, cast)


def _type_filter(source: Compiled, type_name: str, cast: bool) -> Compiled:
    test = _JSON_TYPE_TESTS.get(type_name)
    if test is None:
        if not type_name[:1].isupper() or type_name in _DATATYPE_NAMES:
            raise Unsupported(f"a type test on {type_name}")

        def test(value: Any) -> bool:
            return isinstance(value, dict) and value.get("resourceType") == type_name

    def type_test(items: Collection, env: Env) -> Collection:
        values = source(items, env)
        if not values:
            return []
        if cast:
            return [v for v in values if test(v)]
        return [test(_singleton(values))]

    return type_test


# primitive types that JSON tells apart by itself (a string may be a date, a code, ...)
_JSON_TYPE_TESTS: dict[str, Callable[[Any], bool]] = {
    "boolean": lambda v: isinstance(v, bool),
    "Boolean": lambda v: isinstance(v, bool),
    "decimal": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
}


# complex datatypes: `x is Quantity` cannot be told from the JSON alone
_DATATYPE_NAMES = frozenset(
    name for path in models["r4"]["choiceTypePaths"].values() for name in path
) | {"Resource", "DomainResource"}


# -- functions -------------------------------------------------------------------------------


def _function(node: dict) -> Compiled:
    functn = node["children"][0]
    name = _identifier(functn["children"][0])
    params = functn["children"][1]["children"] if len(functn["children"]) > 1 else []
    args = [_compile(p) for p in params]
    maker = _FUNCTIONS.get((name, len(args))) or _extensions.get().functions.get(
        (name, len(args))
    )
    if maker is None:
        raise Unsupported(f"{name}() with {len(args)} argument(s)")
    return maker(args, params)


def _per_item(criteria: Compiled) -> Callable[[Collection, Env], list[bool | None]]:
    return lambda items, env: [_truth(_on_item(criteria, item, env)) for item in items]


def _on_item(criteria: Compiled, item: Any, env: Env) -> Collection:
    """`criteria` evaluated on one item, which is `$this` meanwhile."""
    outer = env["this"]
    env["this"] = [item]
    try:
        return criteria([item], env)
    finally:
        env["this"] = outer


def _f_exists(args: list[Compiled], params: list) -> Compiled:
    if args:
        test = _per_item(args[0])
        return lambda items, env: [any(r is True for r in test(items, env))]
    return lambda items, env: [bool(items)]


def _f_where(args: list[Compiled], params: list) -> Compiled:
    criteria = args[0]
    return lambda items, env: [i for i in items if _truth(_on_item(criteria, i, env)) is True]


def _f_all(args: list[Compiled], params: list) -> Compiled:
    test = _per_item(args[0])
    return lambda items, env: [all(r is True for r in test(items, env))]


def _f_empty(args: list[Compiled], params: list) -> Compiled:
    return lambda items, env: [not items]


def _f_not(args: list[Compiled], params: list) -> Compiled:
    return lambda items, env: _wrap(None if (t := _truth(items)) is None else not t)


def _f_count(args: list[Compiled], params: list) -> Compiled:
    return lambda items, env: [len(items)]


def _f_first(args: list[Compiled], params: list) -> Compiled:
    return lambda items, env: items[:1]


def _string_argument(params: list) -> str:
    """Regexes and prefixes must be literals, so they compile once."""
    node = params[0]
    if node["type"] != "TermExpression" or node["children"][0]["type"] != "LiteralTerm":
        raise Unsupported("a non-literal string argument")
    literal = node["children"][0]["children"][0]
    if literal["type"] != "StringLiteral":
        raise Unsupported("a non-string argument")
    return _string_literal(_text(literal))


def _f_matches(args: list[Compiled], params: list) -> Compiled:
    pattern = re.compile(_string_argument(params), re.DOTALL)

    def matches(items: Collection, env: Env) -> Collection:
        if not items:
            return []
        value = _singleton(items)
        if not isinstance(value, str):
            raise Unsupported("matches() on a non-string")
        return [pattern.search(value) is not None]

    return matches


def _f_starts_with(args: list[Compiled], params: list) -> Compiled:
    prefix = _string_argument(params)

    def starts_with(items: Collection, env: Env) -> Collection:
        if not items:
            return []
        value = _singleton(items)
        if not isinstance(value, str):
            raise Unsupported("startsWith() on a non-string")
        return [value.startswith(prefix)]

    return starts_with


def _f_to_string(args: list[Compiled], params: list) -> Compiled:
    def to_string(items: Collection, env: Env) -> Collection:
        if not items:
            return []
        value = _singleton(items)
        if isinstance(value, str):
            return [value]
        raise Unsupported("toString() of a non-string")

    return to_string


def _f_length(args: list[Compiled], params: list) -> Compiled:
    def length(items: Collection, env: Env) -> Collection:
        if not items:
            return []
        value = _singleton(items)
        if not isinstance(value, str):
            raise Unsupported("length() of a non-string")
        return [len(value)]

    return length


def _f_substring(args: list[Compiled], params: list) -> Compiled:
    def substring(items: Collection, env: Env) -> Collection:
        if not items:
            return []
        value = _singleton(items)
        bounds = [arg(env["this"], env) for arg in args]
        if not isinstance(value, str) or any(
            len(b) != 1 or type(b[0]) is not int for b in bounds
        ):
            raise Unsupported("substring() outside strings and integer bounds")
        start = bounds[0][0]
        if start < 0 or start >= len(value):
            return []
        if len(bounds) == 1:
            return [value[start:]]
        return [value[start : start + max(bounds[1][0], 0)]]

    return substring


def _f_replace(args: list[Compiled], params: list) -> Compiled:
    pattern, substitution = _string_argument(params[:1]), _string_argument(params[1:])
    if not pattern:
        raise Unsupported("replace() of the empty string")

    def replace(items: Collection, env: Env) -> Collection:
        if not items:
            return []
        value = _singleton(items)
        if not isinstance(value, str):
            raise Unsupported("replace() on a non-string")
        return [value.replace(pattern, substitution)]

    return replace


_INTEGER = re.compile(r"^[+-]?[0-9]+$")


def _f_to_integer(args: list[Compiled], params: list) -> Compiled:
    def to_integer(items: Collection, env: Env) -> Collection:
        if not items:
            return []
        value = _singleton(items)
        if type(value) is int:
            return [value]
        if isinstance(value, str):
            return [int(value)] if _INTEGER.match(value) else []
        raise Unsupported("toInteger() of a non-string")

    return to_integer


def _f_select(args: list[Compiled], params: list) -> Compiled:
    projection = args[0]

    def select(items: Collection, env: Env) -> Collection:
        out: Collection = []
        for item in items:
            out.extend(_on_item(projection, item, env))
        return out

    return select


def _f_contains_text(args: list[Compiled], params: list) -> Compiled:
    part = args[0]

    def contains(items: Collection, env: Env) -> Collection:
        found = part(env["this"], env)
        if not items or not found:
            return []
        value, wanted = _singleton(items), _singleton(found)
        if not isinstance(value, str) or not isinstance(wanted, str):
            raise Unsupported("contains() outside strings")
        return [wanted in value]

    return contains


def _f_trace(args: list[Compiled], params: list) -> Compiled:
    return lambda items, env: items  # logging only


def _is_primitive(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _f_has_value(args: list[Compiled], params: list) -> Compiled:
    return lambda items, env: [len(items) == 1 and _is_primitive(items[0])]


def _children_of(item: Any) -> Collection:
    if not isinstance(item, dict):
        return []
    out: Collection = []
    for key, value in item.items():
        if key == "resourceType" or key.startswith("_"):
            continue
        if isinstance(value, list):
            out.extend(v for v in value if v is not None)
        elif value is not None:
            out.append(value)
    return out


def _f_children(args: list[Compiled], params: list) -> Compiled:
    return lambda items, env: [c for item in items for c in _children_of(item)]


def _f_descendants(args: list[Compiled], params: list) -> Compiled:
    def descendants(items: Collection, env: Env) -> Collection:
        out: Collection = []
        stack = [c for item in items for c in _children_of(item)]
        while stack:
            value = stack.pop()
            out.append(value)
            stack.extend(_children_of(value))
        return out

    return descendants


def _f_intersect(args: list[Compiled], params: list) -> Compiled:
    other = args[0]

    def intersect(items: Collection, env: Env) -> Collection:
        right = other(env["this"], env)
        return _union_of([v for v in items if any(_equal(v, r) for r in right)])

    return intersect


def _f_union(args: list[Compiled], params: list) -> Compiled:
    other = args[0]
    return lambda items, env: _union_of(items + other(env["this"], env))


def _f_combine(args: list[Compiled], params: list) -> Compiled:
    other = args[0]
    return lambda items, env: items + other(env["this"], env)


def _f_exclude(args: list[Compiled], params: list) -> Compiled:
    other = args[0]

    def exclude(items: Collection, env: Env) -> Collection:
        right = other(env["this"], env)
        return [v for v in items if not any(_equal(v, r) for r in right)]

    return exclude


def _f_tail(args: list[Compiled], params: list) -> Compiled:
    return lambda items, env: items[1:]


def _f_distinct(args: list[Compiled], params: list) -> Compiled:
    return lambda items, env: _union_of(items)


def _f_is_distinct(args: list[Compiled], params: list) -> Compiled:
    def is_distinct(items: Collection, env: Env) -> Collection:
        if all(type(v) is str for v in items):  # fullUrls (bdl-7): a set, not n² compares
            return [len(set(items)) == len(items)]
        return [len(_union_of(items)) == len(items)]

    return is_distinct


def _f_iif(args: list[Compiled], params: list) -> Compiled:
    condition, then = args[0], args[1]
    otherwise = args[2] if len(args) > 2 else (lambda items, env: [])

    def iif(items: Collection, env: Env) -> Collection:
        if _truth(condition(items, env)) is True:
            return then(items, env)
        return otherwise(items, env)

    return iif


def _type_argument(params: list) -> str:
    node = params[0]
    if node["type"] != "TermExpression":
        raise Unsupported("a computed type name")
    return _text(node).split(".")[-1]


def _f_type_test(cast: bool) -> Callable[[list[Compiled], list], Compiled]:
    def make(args: list[Compiled], params: list) -> Compiled:
        return _type_filter(lambda items, env: items, _type_argument(params), cast)

    return make


_FUNCTIONS: dict[tuple[str, int], Callable[[list[Compiled], list], Compiled]] = {
    ("select", 1): _f_select,
    ("contains", 1): _f_contains_text,
    ("trace", 1): _f_trace,
    ("trace", 2): _f_trace,
    ("hasValue", 0): _f_has_value,
    ("children", 0): _f_children,
    ("descendants", 0): _f_descendants,
    ("intersect", 1): _f_intersect,
    ("union", 1): _f_union,
    ("combine", 1): _f_combine,
    ("exclude", 1): _f_exclude,
    ("tail", 0): _f_tail,
    ("distinct", 0): _f_distinct,
    ("isDistinct", 0): _f_is_distinct,
    ("iif", 2): _f_iif,
    ("iif", 3): _f_iif,
    ("is", 1): _f_type_test(False),
    ("as", 1): _f_type_test(True),
    ("ofType", 1): _f_type_test(True),
    ("exists", 0): _f_exists,
    ("exists", 1): _f_exists,
    ("where", 1): _f_where,
    ("all", 1): _f_all,
    ("empty", 0): _f_empty,
    ("not", 0): _f_not,
    ("count", 0): _f_count,
    ("first", 0): _f_first,
    ("matches", 1): _f_matches,
    ("startsWith", 1): _f_starts_with,
    ("toString", 0): _f_to_string,
    ("length", 0): _f_length,
    ("substring", 1): _f_substring,
    ("substring", 2): _f_substring,
    ("replace", 2): _f_replace,
    ("toInteger", 0): _f_to_integer,
}

_HANDLERS: dict[str, Callable[[dict], Compiled]] = {
    "TermExpression": _term,
    "InvocationTerm": _invocation_term,
    "InvocationExpression": _invocation_expression,
    "LiteralTerm": _literal,
    "ExternalConstantTerm": _external_constant,
    "ParenthesizedTerm": _parenthesized,
    "IndexerExpression": _indexer,
    "EqualityExpression": _equality,
    "InequalityExpression": _inequality,
    "MembershipExpression": _membership,
    "UnionExpression": _union,
    "AndExpression": _and,
    "OrExpression": _or,
    "ImpliesExpression": _implies,
    "AdditiveExpression": _arithmetic,
    "MultiplicativeExpression": _arithmetic,
    "TypeExpression": lambda node: _resource_type_test(node, node["terminalNodeText"][0] == "as"),
    "PolarityExpression": lambda node: _polarity(node),
}


def _polarity(node: dict) -> Compiled:
    operand = _compile(node["children"][0])
    if node["terminalNodeText"][0] != "-":
        return operand

    def negate(items: Collection, env: Env) -> Collection:
        values = operand(items, env)
        if not values:
            return []
        value = _singleton(values)
        if type(value) is not int:
            raise Unsupported("negation of a non-integer")
        return [-value]

    return negate


# Functions whose result on an empty input is empty (or a constant), whatever their arguments:
# every function compiled here except those that read their arguments anyway.
_READS_ARGUMENTS_ON_EMPTY = frozenset({"union", "combine", "iif"})


def absent_guard(expression: str) -> frozenset[str] | None:
    """Member names such that, when the context holds none of them, the expression's result
    depends on nothing at all (neither the context nor `%resource`): a constant, computed
    once. None when no such names exist (`%resource` or a function read at the top level,
    a type name, FHIRPath outside the compiled subset).

    Why: the core R4 rules put invariants on every resource (`dom-2`..`dom-5` read
    `contained`, `obs-7` reads `value` and `component`) that almost never apply; testing
    that a JSON key is absent costs far less than evaluating them.
    """
    try:
        compile_fhirpath(expression)
        return frozenset(_guard(_parse(expression)["children"][0]))
    except (Unsupported, _ReadsMore):
        return None


def _guard(node: dict) -> set[str]:
    kind = node.get("type")
    children = node.get("children", [])
    if kind == "ExternalConstantTerm":
        constant = children[0]
        name = _identifier(constant["children"][0]) if constant.get("children") else ""
        if name in _CONSTANTS:
            return set()
        raise _ReadsMore("a % constant")
    if kind == "LiteralTerm":
        return set()
    if kind == "InvocationTerm":
        inner = children[0]
        if inner["type"] == "MemberInvocation":
            name = _identifier(inner["children"][0])
            if name[:1].isupper():
                raise _ReadsMore("a type name")
            return {name}
        raise _ReadsMore("$this or a function on the context")
    if kind == "InvocationExpression":
        names = _guard(children[0])
        step = children[1]
        if step["type"] == "FunctionInvocation":
            functn = step["children"][0]
            name = _identifier(functn["children"][0])
            if name in _READS_ARGUMENTS_ON_EMPTY:
                raise _ReadsMore(f"{name}() reads its arguments")
        return names
    if kind == "TypeExpression":
        return _guard(children[0])
    names: set[str] = set()
    for child in children:
        names |= _guard(child)
    return names
