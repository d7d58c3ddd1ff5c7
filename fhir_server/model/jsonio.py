"""JSON in and out, keeping FHIR decimals exactly as the client wrote them.

FHIR requires a server to keep decimal precision: `5.40` must come back as `5.40`, not
`5.4`. orjson parses into floats and loses that, so a body whose number literals a float
cannot reproduce (trailing fraction zeros, exponents, very long mantissas) is parsed again
with the standard library into `FhirDecimal`, a float that remembers its literal and is
written back verbatim. Most bodies never take that slower path.
"""

from __future__ import annotations

import json
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


class FhirDecimal(float):
    """A float that serialises back to the exact literal it was parsed from."""

    __slots__ = ("literal",)

    def __new__(cls, literal: str) -> FhirDecimal:
        value = float.__new__(cls, literal)
        value.literal = literal
        return value


class JsonError(ValueError):
    """The body is not JSON (or not a JSON object where one is required)."""


def _default(value: Any) -> Any:
    if isinstance(value, FhirDecimal):
        return orjson.Fragment(value.literal)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def loads(data: bytes | str) -> Any:
    """Parse JSON, keeping decimal literals that a float would change."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        if _LOSSY_NUMBER.search(raw):
            return json.loads(raw, parse_float=FhirDecimal)
        return orjson.loads(raw)
    except (orjson.JSONDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise JsonError(f"The body is not valid JSON: {exc}") from None
    except RecursionError:
        raise JsonError("The body is not valid JSON: nested too deeply") from None


def dumps(value: Any, pretty: bool = False, sort_keys: bool = False) -> bytes:
    option = (orjson.OPT_INDENT_2 if pretty else 0) | (orjson.OPT_SORT_KEYS if sort_keys else 0)
    return orjson.dumps(value, default=_default, option=option)


def plain(value: Any) -> Any:
    """The same document with plain floats (for validators that only take builtin types)."""
    return orjson.loads(dumps(value))


def fragment(raw: bytes) -> orjson.Fragment:
    """Embed already-serialised JSON (a stored resource) into a larger document."""
    return orjson.Fragment(raw)
