"""Typed search values: one parser per search parameter type, producing immutable data.

Values are data only: nothing here is ever interpolated into a query language. A value
that is not valid for its type (a number parameter given "'; DROP TABLE x") is a SearchError;
for free-text types (string, token, uri, reference ids) any text is a legal value and simply
matches nothing if nothing holds it.

Each parser takes the value text still escaped (see escaping.py) so that it can split on
its own separators first; leaves are unescaped here. Every value knows how to write itself
back (`to_param`) in a canonical form, used for the Bundle self link.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from fhir_server.search.dates import InvalidDate, parse_date_period
from fhir_server.search.errors import SearchError
from fhir_server.search.escaping import escape, split_escaped, unescape
from fhir_server.search.text import normalise

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
DEFAULT_PREFIX = "eq"

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_FHIR_ID = r"[A-Za-z0-9\-.]{1,64}"
_RELATIVE_REFERENCE = re.compile(
    rf"(?P<type>[A-Z][A-Za-z]{{1,63}})/(?P<id>{_FHIR_ID})(?:/_history/(?P<version>{_FHIR_ID}))?"
)
_ABSOLUTE_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:\S+")


def _prefix_text(prefix: str) -> str:
    return "" if prefix == DEFAULT_PREFIX else prefix


@dataclass(frozen=True, slots=True)
class NumberValue:
    """A number with its implicit precision range: "100" is [99.5, 100.5), "100.00" is
    [99.995, 100.005), "1e2" is [50, 150) (half a unit of the last significant digit)."""

    prefix: str
    value: Decimal
    low: Decimal
    high: Decimal

    def to_param(self) -> str:
        return _prefix_text(self.prefix) + str(self.value)

    def approximate_bounds(self) -> tuple[Decimal, Decimal]:
        """The `ap` range: within 10% of the value (FHIR leaves the exact figure open)."""
        margin = abs(self.value) / 10
        return self.value - margin, self.value + margin


@dataclass(frozen=True, slots=True)
class DateValue:
    """A date as a half-open period [low, high) in epoch seconds at its given precision."""

    prefix: str
    low: float
    high: float
    text: str  # the date as given (with a "+" restored in the offset), for the self link
    precision: str

    def to_param(self) -> str:
        return _prefix_text(self.prefix) + self.text

    def approximate_bounds(self, now: float) -> tuple[float, float]:
        """The `ap` range: each end widened by 10% of its own distance to now."""
        return self.low - 0.1 * abs(now - self.low), self.high + 0.1 * abs(now - self.high)


@dataclass(frozen=True, slots=True)
class QuantityValue:
    """A quantity: number (with its precision range) plus optional system and unit code.

    `5.4||mg` gives system None and code "mg": the code then matches a unit code or the unit
    text in any system, as the specification asks."""

    prefix: str
    value: Decimal
    low: Decimal
    high: Decimal
    system: str | None
    code: str | None

    def to_param(self) -> str:
        number = _prefix_text(self.prefix) + str(self.value)
        if self.system is None and self.code is None:
            return number
        return f"{number}|{escape(self.system or '')}|{escape(self.code or '')}"

    def approximate_bounds(self) -> tuple[Decimal, Decimal]:
        margin = abs(self.value) / 10
        return self.value - margin, self.value + margin


@dataclass(frozen=True, slots=True)
class TokenValue:
    """`code` (any system), `|code` (no system), `system|code`, `system|` (any code).

    `system_given` tells `code` (any system) apart from `|code` (resources without a system):
    both have system None."""

    system: str | None
    code: str | None
    system_given: bool

    def to_param(self) -> str:
        if not self.system_given:
            return escape(self.code or "")
        return f"{escape(self.system or '')}|{escape(self.code or '')}"


@dataclass(frozen=True, slots=True)
class StringValue:
    value: str  # as given (unescaped), for :exact
    normalised: str  # casefolded, accents removed, whitespace collapsed

    def to_param(self) -> str:
        return escape(self.value)


@dataclass(frozen=True, slots=True)
class ReferenceValue:
    """`123`, `Patient/123`, `Patient/123/_history/2`, an absolute URL, or (`:identifier`)
    an identifier system|value. `type` is filled from a `:Type` modifier or, when the
    parameter has a single target type, from that target."""

    type: str | None = None
    id: str | None = None
    url: str | None = None
    identifier_system: str | None = None
    identifier_value: str | None = None
    version: str | None = None

    def to_param(self) -> str:
        if self.identifier_value is not None or self.identifier_system is not None:
            if self.identifier_system is None:
                return escape(self.identifier_value or "")
            return f"{escape(self.identifier_system)}|{escape(self.identifier_value or '')}"
        if self.url is not None:
            return escape(self.url)
        text = self.id or ""
        if self.type is not None:
            text = f"{self.type}/{text}"
        if self.version is not None:
            text = f"{text}/_history/{self.version}"
        return escape(text)


@dataclass(frozen=True, slots=True)
class UriValue:
    value: str

    def to_param(self) -> str:
        return escape(self.value)


@dataclass(frozen=True, slots=True)
class MissingValue:
    """The value of `:missing`: true finds resources without the element."""

    missing: bool

    def to_param(self) -> str:
        return "true" if self.missing else "false"


@dataclass(frozen=True, slots=True)
class OfTypeValue:
    """The value of `identifier:of-type`: type system | type code | identifier value."""

    system: str
    code: str
    value: str

    def to_param(self) -> str:
        return f"{escape(self.system)}|{escape(self.code)}|{escape(self.value)}"


@dataclass(frozen=True, slots=True)
class CompositeValue:
    parts: tuple[Value, ...]

    def to_param(self) -> str:
        return "$".join(part.to_param() for part in self.parts)


Value = (
    NumberValue
    | DateValue
    | QuantityValue
    | TokenValue
    | StringValue
    | ReferenceValue
    | UriValue
    | MissingValue
    | OfTypeValue
    | CompositeValue
)


def split_prefix(text: str) -> tuple[str, str]:
    """Split a comparison prefix off a number/date/quantity value (default `eq`)."""
    if len(text) >= 2 and text[:2].isascii() and text[:2].isalpha():
        prefix = text[:2]
        if prefix not in PREFIXES:
            raise SearchError(f"unknown prefix {prefix!r} in {text!r}")
        return prefix, text[2:]
    return DEFAULT_PREFIX, text


def _decimal(text: str) -> Decimal:
    if not _NUMBER.fullmatch(text):
        raise SearchError(f"not a number: {text!r}")
    try:
        number = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the pattern admits only valid decimals
        raise SearchError(f"not a number: {text!r}") from None
    # Stored values are doubles: a number beyond their range (1e99999) cannot be compared.
    if not math.isfinite(float(number)) or abs(number.adjusted()) > 300:
        raise SearchError(f"number out of range: {text!r}")
    return number


def precision_range(value: Decimal) -> tuple[Decimal, Decimal]:
    """Half a unit of the last significant digit on each side: [low, high)."""
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # _decimal never yields NaN or Infinity
    half = Decimal(5).scaleb(exponent - 1)
    return value - half, value + half


def parse_number(text: str) -> NumberValue:
    prefix, rest = split_prefix(unescape(text))
    number = _decimal(rest)
    low, high = precision_range(number)
    return NumberValue(prefix, number, low, high)


def parse_date(text: str) -> DateValue:
    prefix, rest = split_prefix(unescape(text))
    try:
        period = parse_date_period(rest)
    except InvalidDate as error:
        raise SearchError(str(error)) from None
    canonical = rest
    if len(rest) > 6 and rest[-6] == " ":  # "+" decoded as a space by the URL layer
        canonical = rest[:-6] + "+" + rest[-5:]
    return DateValue(prefix, period.low, period.high, canonical, period.precision)


def parse_quantity(text: str) -> QuantityValue:
    parts = split_escaped(text, "|")
    if len(parts) not in (1, 3):
        raise SearchError(f"a quantity is number, number|system|code or number||code: {text!r}")
    prefix, rest = split_prefix(unescape(parts[0]))
    number = _decimal(rest)
    low, high = precision_range(number)
    system = code = None
    if len(parts) == 3:
        system = unescape(parts[1]) or None
        code = unescape(parts[2]) or None
    return QuantityValue(prefix, number, low, high, system, code)


def parse_token(text: str) -> TokenValue:
    parts = split_escaped(text, "|")
    if len(parts) == 1:
        return TokenValue(None, unescape(parts[0]), system_given=False)
    if len(parts) != 2:
        raise SearchError(f"a token is code, system|code, |code or system|: {text!r}")
    system, code = unescape(parts[0]) or None, unescape(parts[1]) or None
    if system is None and code is None:
        raise SearchError("a token needs a system or a code")
    return TokenValue(system, code, system_given=True)


def parse_of_type(text: str) -> OfTypeValue:
    parts = [unescape(part) for part in split_escaped(text, "|")]
    if len(parts) != 3 or not all(parts):
        raise SearchError(f":of-type takes type-system|type-code|identifier-value: {text!r}")
    return OfTypeValue(*parts)


def parse_string(text: str) -> StringValue:
    value = unescape(text)
    return StringValue(value, normalise(value))


def parse_uri(text: str) -> UriValue:
    return UriValue(unescape(text))


def parse_bool(text: str) -> bool:
    value = unescape(text)
    if value not in ("true", "false"):
        raise SearchError(f"expected true or false, got {value!r}")
    return value == "true"


def parse_reference(
    text: str, *, type_modifier: str | None = None, targets: tuple[str, ...] = ()
) -> ReferenceValue:
    value = unescape(text)
    relative = _RELATIVE_REFERENCE.fullmatch(value)
    if relative is not None:
        ref_type, ref_id, version = relative["type"], relative["id"], relative["version"]
        if type_modifier is not None and ref_type != type_modifier:
            raise SearchError(f"reference {value!r} is not a {type_modifier}")
        if targets and ref_type not in targets:
            raise SearchError(f"{ref_type} is not a target type ({', '.join(targets)})")
        return ReferenceValue(type=ref_type, id=ref_id, version=version)
    if _ABSOLUTE_URL.fullmatch(value):
        return ReferenceValue(url=value)
    if "/" in value:
        raise SearchError(f"not a reference (id, Type/id or absolute URL): {value!r}")
    ref_type = type_modifier
    if ref_type is None and len(targets) == 1:
        ref_type = targets[0]
    # Any other text is an id: ids that cannot exist simply match nothing.
    return ReferenceValue(type=ref_type, id=value)


def parse_identifier_reference(text: str) -> ReferenceValue:
    token = parse_token(text)
    if token.code is None:
        raise SearchError(f"reference :identifier needs a value: {text!r}")
    return ReferenceValue(identifier_system=token.system, identifier_value=token.code)


def is_resource_type_name(text: str) -> bool:
    return _RESOURCE_TYPE.fullmatch(text) is not None
