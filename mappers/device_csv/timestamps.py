"""Timestamps as exports write them: ISO, compact, day-first or month-first, 12 or 24 hours.

Device exports write the device's local wall-clock time without an offset; the caller gives
the time zone (an IANA name such as `Europe/Paris`, or a fixed offset such as `+02:00`).
Whether `05-12-2019` is the 5th of December or the 12th of May is decided once per file,
from all its timestamps (see `infer_dayfirst`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import CsvMappingError

_TIME = (
    r"(?:[ T,]+(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.,](?P<frac>\d+))?)?"
    r"\s*(?P<ampm>[AaPp]\.?[Mm]\.?)?)?"
)
_OFFSET = r"\s*(?P<tz>Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)?"
_NUMERIC_DATE = re.compile(
    r"^(?P<a>\d{1,2})(?P<sep>[./-])(?P<b>\d{1,2})(?P=sep)(?P<y>\d{4}|\d{2})" + _TIME + _OFFSET + "$"
)
_YEAR_FIRST = re.compile(
    r"^(?P<y>\d{4})(?P<sep>[./-])(?P<mo>\d{1,2})(?P=sep)(?P<d>\d{1,2})" + _TIME + _OFFSET + "$"
)
_COMPACT = re.compile(
    r"^(?P<y>\d{4})(?P<mo>\d{2})(?P<d>\d{2})(?:T?(?P<h>\d{2})(?P<mi>\d{2})(?P<s>\d{2})?)?"
    r"(?P<tz>Z|[+-]\d{4})?$"
)


@dataclass(frozen=True, slots=True)
class Stamp:
    """A parsed timestamp: aware when it has a time, a bare date otherwise."""

    moment: datetime | None
    day: date | None = None
    explicit_offset: bool = False

    def fhir(self) -> str:
        if self.moment is not None:
            return self.moment.isoformat(timespec="seconds")
        assert self.day is not None
        return self.day.isoformat()

    def key(self) -> str:
        """A compact, zone-independent key for identifiers: the UTC instant (or the date)."""
        if self.moment is not None:
            return self.moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        assert self.day is not None
        return self.day.strftime("%Y%m%d")


def parse_timezone(value: str | None) -> tzinfo | None:
    """`None` stays None (the caller decides the default); otherwise a tzinfo or an error."""
    if value is None:
        return None
    text = value.strip()
    if text.upper() in ("Z", "UTC", "GMT"):
        return UTC
    match = re.fullmatch(r"(?:UTC|GMT)?\s*([+-])(\d{1,2})(?::?(\d{2}))?", text, re.IGNORECASE)
    if match:
        sign = -1 if match.group(1) == "-" else 1
        hours, minutes = int(match.group(2)), int(match.group(3) or 0)
        if hours > 14 or minutes > 59:
            raise CsvMappingError(f"time zone offset out of range: {value!r}")
        return timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise CsvMappingError(f"unknown time zone: {value!r}") from None


def _offset(text: str | None) -> tzinfo | None:
    if not text:
        return None
    if text in ("Z", "UTC", "GMT"):
        return UTC
    return parse_timezone(text)


def _year(text: str) -> int:
    year = int(text)
    if len(text) == 2:
        # Two-digit years in meter exports are this century (older readers did not exist).
        year += 2000
    return year


def _hour(hour: int, ampm: str | None) -> int:
    if ampm is None:
        return hour
    if not 1 <= hour <= 12:
        raise ValueError("12-hour clock hour out of range")
    pm = ampm[0] in "pP"
    return (hour % 12) + (12 if pm else 0)


def _build(
    year: int, month: int, day_: int, groups: dict[str, str | None], zone: tzinfo
) -> Stamp:
    if groups.get("h") is None:
        return Stamp(None, date(year, month, day_))
    hour = _hour(int(groups["h"] or 0), groups.get("ampm"))
    moment = datetime(
        year, month, day_, hour, int(groups["mi"] or 0), int(groups.get("s") or 0)
    )
    explicit = _offset(groups.get("tz"))
    return _checked(moment.replace(tzinfo=explicit or zone), explicit is not None)


def _checked(moment: datetime, explicit_offset: bool) -> Stamp:
    try:
        moment.astimezone(UTC)  # years 1 and 9999 overflow once shifted to UTC
    except (OverflowError, ValueError):
        raise ValueError("timestamp out of range") from None
    return Stamp(moment, explicit_offset=explicit_offset)


def parse_timestamp(
    text: str, *, dayfirst: bool, zone: tzinfo, date_format: str | None = None
) -> Stamp:
    """Parse one timestamp cell; raise ValueError with a short reason when it is not one."""
    text = text.strip()
    if not text:
        raise ValueError("empty timestamp")
    if date_format:
        moment = datetime.strptime(text, date_format)
        if moment.tzinfo is not None:
            return _checked(moment, True)
        return _checked(moment.replace(tzinfo=zone), False)
    match = _YEAR_FIRST.match(text) or _COMPACT.match(text)
    if match:
        groups = match.groupdict()
        return _build(int(groups["y"]), int(groups["mo"]), int(groups["d"]), groups, zone)
    match = _NUMERIC_DATE.match(text)
    if match:
        groups = match.groupdict()
        first, second = int(groups["a"]), int(groups["b"])
        day_, month = (first, second) if dayfirst else (second, first)
        return _build(_year(groups["y"]), month, day_, groups, zone)
    raise ValueError(f"unrecognised timestamp {text[:40]!r}")


def infer_dayfirst(cells: list[str]) -> bool | None:
    """Decide day-first vs month-first for a whole file.

    A first number above 12 proves day-first, a second number above 12 proves month-first.
    When every date is ambiguous, the order that keeps consecutive rows closer in time wins
    (exports are chronological or nearly). None means no evidence at all.
    """
    pairs: list[tuple[int, int, int]] = []
    for cell in cells:
        match = _NUMERIC_DATE.match(cell.strip())
        if not match:
            continue
        first, second = int(match.group("a")), int(match.group("b"))
        if first > 12 >= second:
            return True
        if second > 12 >= first:
            return False
        pairs.append((_year(match.group("y")), first, second))
    if len(pairs) < 2:
        return None

    def spread(dayfirst: bool) -> int:
        ordinals = []
        for year, first, second in pairs:
            day_, month = (first, second) if dayfirst else (second, first)
            try:
                ordinals.append(date(year, month, day_).toordinal())
            except ValueError:
                return 1 << 40
        return sum(abs(b - a) for a, b in zip(ordinals, ordinals[1:], strict=False))

    by_day, by_month = spread(True), spread(False)
    if by_day == by_month:
        return None
    return by_day < by_month


def has_numeric_dates(cells: list[str]) -> bool:
    return any(_NUMERIC_DATE.match(cell.strip()) for cell in cells)


def uses_ampm(cells: list[str]) -> bool:
    return any(re.search(r"\d\s*[AaPp]\.?[Mm]\.?$", cell.strip()) for cell in cells[:50])
