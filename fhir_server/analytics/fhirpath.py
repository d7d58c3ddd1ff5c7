"""FHIRPath for ViewDefinitions: the project's compiled FHIRPath first, fhirpathpy behind it.

A view's paths run once per resource (and per `forEach` item), so a million Observations
make millions of evaluations. fhirpathpy (the reference library here) costs 100-150 µs for
`code.coding.code`; the project's compiler (`profiles.fhirpath_fast`) runs the same path in
1-3 µs (`bench/analytics.py` prints both). So each path is compiled by `fhirpath_fast`, with
the SQL on FHIR functions and the view's constants added through its `Extensions`; a path
outside that subset (date literals, decimal arithmetic, `lowBoundary()`...) is evaluated by
fhirpathpy, and so is any single evaluation that the compiled form gives up on at run time
(`Unsupported`). Both engines get the same functions, so a path means the same in either.

Values come back as JSON values: str, int, float, bool, dict (fhirpathpy's Decimal and date
objects are converted).
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import fhirpathpy
from fhirpathpy.models import models

from fhir_server.search.registry import check_fhirpath_syntax
from profiles.fhirpath_fast import Extensions, Unsupported, compile_fhirpath

Collection = list[Any]
Variables = Mapping[str, Collection]
PathFunction = Callable[[Any, dict, Variables], Collection]

_MODEL = models["r4"]
_REFERENCE_TAIL = re.compile(r"(?:^|/)([A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


class PathError(ValueError):
    """A path that does not parse, or that cannot be evaluated."""


# -- the SQL on FHIR functions, as plain functions of JSON values ----------------------------


def resource_key(items: Collection) -> Collection:
    """getResourceKey(): the resource's logical id (unique within its type's table)."""
    return [i["id"] for i in items if isinstance(i, dict) and "id" in i][:1]


def reference_key(items: Collection, type_name: str | None = None) -> Collection:
    """getReferenceKey([Type]): the id a reference points to, matching getResourceKey() of
    the target; empty when the reference is to another type (or not a literal one)."""
    out: Collection = []
    for item in items:
        reference = item.get("reference") if isinstance(item, dict) else None
        if not isinstance(reference, str):
            continue
        match = _REFERENCE_TAIL.search(reference)
        if match and (type_name is None or match[1] == type_name):
            out.append(match[2])
    return out


def join(items: Collection, separator: str = "") -> Collection:
    return [separator.join(str(v) for v in items)]


def extension(items: Collection, url: str) -> Collection:
    return [
        e
        for item in items
        if isinstance(item, dict)
        for e in item.get("extension", ())
        if isinstance(e, dict) and e.get("url") == url
    ]


# -- boundaries (FHIRPath 3.0 lowBoundary/highBoundary on decimals, dates, times) ------------

_DATE_PART = re.compile(r"^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?$")
_DATE_TIME = re.compile(
    r"^(\d{4}-\d{2}-\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?(Z|[+-]\d{2}:\d{2})?$"
)
_TIME = re.compile(r"^(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?$")


def _days_in_month(year: int, month: int) -> int:
    import calendar

    return calendar.monthrange(year, month)[1]


def _boundary(value: Any, high: bool) -> Any:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | decimal.Decimal):
        text = str(value)
        places = len(text.split(".")[1]) if "." in text else 0
        half = decimal.Decimal(5) / decimal.Decimal(10) ** (places + 1)
        bound = decimal.Decimal(text) + (half if high else -half)
        return float(bound)
    if not isinstance(value, str):
        return None
    if match := _DATE_PART.match(value):
        year, month, day = match[1], match[2], match[3]
        if day:
            return value
        m = int(month) if month else (12 if high else 1)
        d = _days_in_month(int(year), m) if high else 1
        return f"{year}-{m:02d}-{d:02d}"
    if match := _DATE_TIME.match(value):
        date, hh, mm, ss, fraction, zone = match.groups()
        seconds = ss or ("59" if high else "00")
        millis = (fraction or "")[:3].ljust(3, "9" if high and not fraction else "0")
        zone = zone or ("-12:00" if high else "+14:00")
        return f"{date}T{hh}:{mm}:{seconds}.{millis}{zone}"
    if match := _TIME.match(value):
        hh, mm, ss, fraction = match.groups()
        seconds = ss or ("59" if high else "00")
        millis = (fraction or "")[:3].ljust(3, "9" if high and not fraction else "0")
        return f"{hh}:{mm}:{seconds}.{millis}"
    return None


def low_boundary(items: Collection) -> Collection:
    return [b for v in items[:1] if (b := _boundary(v, high=False)) is not None]


def high_boundary(items: Collection) -> Collection:
    return [b for v in items[:1] if (b := _boundary(v, high=True)) is not None]


# -- the functions in each engine's form -------------------------------------------------------


def _type_name(params: list) -> str | None:
    if not params:
        return None
    return "".join(params[0].get("text", "") or _texts(params[0])).split(".")[-1]


def _texts(node: dict) -> str:
    own = "".join(node.get("terminalNodeText", []))
    return own or "".join(_texts(c) for c in node.get("children", []))


def _string_literal(params: list) -> str:
    raw = _texts(params[0])
    if not (raw.startswith("'") and raw.endswith("'")):
        raise Unsupported("a computed string argument")
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m[1], m[1]), raw[1:-1])


def _fast_functions() -> dict:
    def unary(fn: Callable[[Collection], Collection]) -> Callable:
        return lambda args, params: lambda items, env: fn(items)

    def with_type(args: list, params: list) -> Callable:
        type_name = _type_name(params)
        return lambda items, env: reference_key(items, type_name)

    def with_string(fn: Callable) -> Callable:
        def make(args: list, params: list) -> Callable:
            value = _string_literal(params)
            return lambda items, env: fn(items, value)

        return make

    return {
        ("getResourceKey", 0): unary(resource_key),
        ("getReferenceKey", 0): unary(reference_key),
        ("getReferenceKey", 1): with_type,
        ("join", 0): unary(join),
        ("join", 1): with_string(join),
        ("extension", 1): with_string(extension),
        ("lowBoundary", 0): unary(low_boundary),
        ("highBoundary", 0): unary(high_boundary),
    }


_FAST_FUNCTIONS = _fast_functions()


def _slow_reference_key(items: Collection, type_info: Any = None) -> Collection:
    return reference_key(items, getattr(type_info, "name", None) if type_info else None)


_SLOW_FUNCTIONS = {
    "getResourceKey": {"fn": resource_key, "arity": {0: []}},
    "getReferenceKey": {"fn": _slow_reference_key, "arity": {0: [], 1: ["TypeSpecifier"]}},
    "lowBoundary": {"fn": low_boundary, "arity": {0: []}},
    "highBoundary": {"fn": high_boundary, "arity": {0: []}},
}


def _to_json(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return (
            int(value)
            if value == value.to_integral_value() and "." not in str(value)
            else (float(value))
        )
    if isinstance(value, str | int | float | bool | dict | list) or value is None:
        return value
    return str(value)  # fhirpathpy's FP_DateTime, FP_Time, FP_Quantity


# -- compilation ------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def compile_path(expression: str, variables: frozenset[str] = frozenset()) -> PathFunction:
    """`fn(node, resource, variables) -> collection` for `expression`, whose `%names` are
    `variables` (the view's constants and `rowIndex`). Raises PathError if it does not
    parse."""
    try:
        check_fhirpath_syntax(expression)  # fhirpathpy's parser recovers from errors
    except SyntaxError as exc:
        raise PathError(f"invalid FHIRPath {expression!r}: {exc}") from exc
    slow = _compile_slow(expression)
    try:
        fast = compile_fhirpath(expression, Extensions(_FAST_FUNCTIONS, variables))
    except Unsupported:
        return slow
    except Exception as exc:  # fhirpathpy's parser raises its own kinds
        raise PathError(f"invalid FHIRPath {expression!r}: {exc}") from exc

    def evaluate(node: Any, resource: dict, values: Variables) -> Collection:
        try:
            return fast(node, resource, values)
        except Unsupported:
            return slow(node, resource, values)

    evaluate.fast = True  # type: ignore[attr-defined]
    return evaluate


def compile_slow(expression: str) -> PathFunction:
    """fhirpathpy alone (for measuring it against the compiled form)."""
    return _compile_slow(expression)


def _compile_slow(expression: str) -> PathFunction:
    try:
        compiled = fhirpathpy.compile(
            expression, _MODEL, options={"userInvocationTable": _SLOW_FUNCTIONS}
        )
    except Exception as exc:
        raise PathError(f"invalid FHIRPath {expression!r}: {exc}") from exc

    def evaluate(node: Any, resource: dict, values: Variables) -> Collection:
        context = {name: (v[0] if len(v) == 1 else v) for name, v in values.items()}
        context["resource"] = resource
        context["rootResource"] = resource
        try:
            result = compiled(node, context)
        except Exception as exc:
            raise PathError(f"cannot evaluate {expression!r}: {exc}") from exc
        return [_to_json(v) for v in result]

    evaluate.fast = False  # type: ignore[attr-defined]
    return evaluate
