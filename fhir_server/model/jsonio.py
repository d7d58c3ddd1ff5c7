"""JSON in and out, keeping FHIR decimals exactly as the client wrote them.

FHIR requires a server to keep decimal precision: `5.40` must come back as `5.40`, not
`5.4`. orjson parses into floats and loses that, so a body whose number literals a float
cannot reproduce (trailing fraction zeros, exponents, very long mantissas) is parsed again
with the standard library into `FhirDecimal`, a float that remembers its literal and is
written back verbatim. Most bodies never take that slower path.

Limits (a client's JSON is hostile until parsed): a number outside the IEEE double range
FHIR decimals live in (XML Schema's xs:double, about ±1.8e308: `1e309`) and `NaN` /
`Infinity` are refused with a JsonError; so is a document nested deeper than the caller's
`max_depth`. orjson writes at most 255 levels: a deeper document (a Questionnaire with items
130 deep, extensions of extensions) is written by orjson in slices, each subtree below
`ORJSON_SAFE_DEPTH` serialised on its own and embedded as a fragment, so that it is stored
and served like any other.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

# A number literal that float repr would not reproduce: trailing fraction zeros (`5.40`,
# `5.00`; `5.0` survives), exponents,
# more digits than a float keeps (15 significant; repr switches to exponents below 1e-4 and
# above 1e16), negative zero. Only tokens in value position (after `:`, `[` or `,`, before
# `,`, `}` or `]`) count, so that hex ids and uuids inside strings do not send every body
# down the slow path. A string that happens to look like that only costs speed.
_LOSSY_NUMBER = re.compile(
    rb"[:\[,]\s*(?:-?(?:\d+\.\d+0|\d[\d.]{15,}|\d+(?:\.\d+)?[eE][+-]?\d+|0\.0000\d*)|-0)\s*[,}\]]"
)


# orjson refuses to write deeper than 255 levels; slices are cut well above that.
ORJSON_SAFE_DEPTH = 200
# Integer literals this long may not fit 64 bits (orjson's integers): kept as decimals.
_LONG_INTEGER = 18


class JsonError(ValueError):
    """The body is not JSON (or not a JSON object where one is required)."""

    def __init__(self, message: str, code: str = "structure") -> None:
        super().__init__(message)
        self.code = code  # the OperationOutcome issue code


class FhirDecimal(float):
    """A float that serialises back to the exact literal it was parsed from."""

    __slots__ = ("literal",)

    def __new__(cls, literal: str) -> FhirDecimal:
        value = float.__new__(cls, literal)
        if not math.isfinite(value):
            raise JsonError(
                f"The number {literal[:40]} is out of the range of FHIR decimals "
                "(about ±1.8e308)",
                "value",
            )
        value.literal = literal
        return value


def _parse_int(literal: str) -> int | FhirDecimal:
    return int(literal) if len(literal) <= _LONG_INTEGER else FhirDecimal(literal)


def _refuse_constant(name: str) -> Any:
    raise JsonError(f"{name} is not a JSON number (FHIR decimals are finite)", "value")


def _default(value: Any) -> Any:
    if isinstance(value, FhirDecimal):
        return orjson.Fragment(value.literal)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def loads(data: bytes | str, max_depth: int | None = None) -> Any:
    """Parse JSON, keeping decimal literals that a float would change; JsonError past
    `max_depth` levels of nesting (objects and arrays)."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            # `1e309` (out of range) and the like: the exact parse tells what is wrong
            if not _LOSSY_NUMBER.search(raw):
                raise
            value = _exact_loads(raw)
            depth, _ = _shape(value)
        else:
            # orjson's result is exact unless it holds a float or a long integer: only then
            # is the text searched for literals it changes (a regular expression over the
            # whole body costs ~3x orjson's parse)
            depth, inexact = _shape(value)
            if inexact and _LOSSY_NUMBER.search(raw):
                value = _exact_loads(raw)
    except (orjson.JSONDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise JsonError(f"The body is not valid JSON: {exc}") from None
    except RecursionError:
        raise JsonError("The body is not valid JSON: nested too deeply") from None
    if max_depth is not None and depth > max_depth:
        raise JsonError(
            f"The JSON is nested {depth} levels deep; this server takes at most "
            f"{max_depth} (limit max_json_depth)",
            "too-costly",
        )
    return value


def _exact_loads(raw: bytes) -> Any:
    return json.loads(
        raw, parse_float=FhirDecimal, parse_int=_parse_int, parse_constant=_refuse_constant
    )


# Integers below this (17 digits) are ints in both parses; longer ones, signed, may be
# decimals in the exact parse (_parse_int).
_EXACT_INT_LIMIT = 10 ** (_LONG_INTEGER - 1)


def _shape(value: Any) -> tuple[int, bool]:
    """(levels of objects and arrays, whether any number in them is a float or an integer
    that a lossy literal may have given), level by level, without recursion."""
    inexact = False
    depth = 0
    level = [value] if type(value) is dict or type(value) is list else []
    while level:
        depth += 1
        below = []
        for node in level:
            for child in node.values() if type(node) is dict else node:
                kind = type(child)
                if kind is dict or kind is list:
                    below.append(child)
                elif kind is float or (kind is int and abs(child) >= _EXACT_INT_LIMIT):
                    inexact = True
        level = below
    return depth, inexact


def nesting_depth(value: Any) -> int:
    """Levels of objects and arrays (a scalar is 0), without recursion."""
    return _shape(value)[0]


def dumps(value: Any, pretty: bool = False, sort_keys: bool = False) -> bytes:
    option = (orjson.OPT_INDENT_2 if pretty else 0) | (orjson.OPT_SORT_KEYS if sort_keys else 0)
    return _dumps(value, option)


def _dumps(value: Any, option: int) -> bytes:
    try:
        return orjson.dumps(value, default=_default, option=option)
    except TypeError as exc:
        if "Recursion limit" not in str(exc):
            raise
    # Deeper than orjson goes: subtrees below ORJSON_SAFE_DEPTH become fragments.
    return orjson.dumps(_sliced(value, option), default=_default, option=option)


def _sliced(value: Any, option: int) -> Any:
    """A copy of `value` whose containers at ORJSON_SAFE_DEPTH are written JSON fragments
    (each one sliced in turn); iterative, so that any depth Python can hold is written."""
    root: list[Any] = [value]
    # (container, key or index, depth of the child)
    stack: list[tuple[Any, Any, int]] = [(root, 0, 1)]
    cuts: list[tuple[Any, Any]] = []
    while stack:
        parent, key, depth = stack.pop()
        node = parent[key]
        if not isinstance(node, dict | list):
            continue
        if depth >= ORJSON_SAFE_DEPTH:
            cuts.append((parent, key))
            continue
        copy = dict(node) if isinstance(node, dict) else list(node)
        parent[key] = copy
        keys = copy.keys() if isinstance(copy, dict) else range(len(copy))
        stack.extend((copy, k, depth + 1) for k in keys)
    for parent, key in cuts:
        parent[key] = orjson.Fragment(_dumps(parent[key], option))  # sliced again if deep
    return root[0]


def plain(value: Any) -> Any:
    """The same document with plain floats (for validators that only take builtin types)."""
    return orjson.loads(dumps(value))


def fragment(raw: bytes) -> orjson.Fragment:
    """Embed already-serialised JSON (a stored resource) into a larger document."""
    return orjson.Fragment(raw)
