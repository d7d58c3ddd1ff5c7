"""FHIR date / dateTime / instant text -> half-open period of epoch seconds [low, high).

A date is a period at its precision: "2024" covers the whole year, "2024-03-05T10:00" the
whole minute, "...T10:00:00.25" a hundredth of a second. Search and index both compare these
periods, which is what makes partial dates and instants comparable. A value without a time
zone is taken as UTC (a project decision: the server has no "local" time zone).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Literal

from fhir_server.search.types import DATE_MAX

Precision = Literal["year", "month", "day", "minute", "second", "fraction"]

# The time zone may arrive as " 02:00": a "+" left unencoded in a URL query decodes to a space.
_DATE = re.compile(
    r"(?P<year>\d{4})"
    r"(?:-(?P<month>\d{2})"
    r"(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})"
    r"(?::(?P<second>\d{2})(?:\.(?P<fraction>\d{1,9}))?)?"
    r"(?P<tz>Z|[+\- ]\d{2}:\d{2})?"
    r")?)?)?"
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class InvalidDate(ValueError):
    """The text is not a FHIR date/dateTime/instant, or names a day that does not exist."""


@dataclass(frozen=True, slots=True)
class DatePeriod:
    low: float
    high: float
    precision: Precision


def _epoch(moment: datetime) -> float:
    return (moment - _EPOCH).total_seconds()


def _parse_zone(text: str | None) -> timezone:
    if text is None or text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 14 or minutes > 59 or (hours == 14 and minutes):
        raise InvalidDate(f"time zone offset out of range: {text.strip()}")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _add_months(moment: datetime, months: int) -> datetime:
    month_index = moment.month - 1 + months
    return moment.replace(year=moment.year + month_index // 12, month=month_index % 12 + 1)


def parse_date_period(text: str) -> DatePeriod:
    """Parse a FHIR date/dateTime/instant into its [low, high) period in epoch seconds.

    Raises InvalidDate for anything else (wrong shape, 2024-02-30, 25:00, offsets > 14h).
    """
    match = _DATE.fullmatch(text)
    if match is None:
        raise InvalidDate(f"not a FHIR date: {text!r}")
    parts = match.groupdict()
    if parts["tz"] is not None and parts["tz"][0] == " ":
        parts["tz"] = "+" + parts["tz"][1:]
    zone = _parse_zone(parts["tz"])
    try:
        start = datetime(
            int(parts["year"]),
            int(parts["month"] or 1),
            int(parts["day"] or 1),
            int(parts["hour"] or 0),
            int(parts["minute"] or 0),
            int(parts["second"] or 0),
            tzinfo=zone,
        )
    except ValueError as error:
        raise InvalidDate(f"not a valid date: {text!r} ({error})") from None
    low = _epoch(start)
    if parts["fraction"] is not None:
        digits = parts["fraction"]
        base = Decimal(repr(low)) + Decimal("0." + digits)
        return DatePeriod(float(base), float(base + Decimal(1).scaleb(-len(digits))), "fraction")
    precision: Precision
    if parts["month"] is None:
        precision = "year"
    elif parts["day"] is None:
        precision = "month"
    elif parts["hour"] is None:
        precision = "day"
    elif parts["second"] is None:
        precision = "minute"
    else:
        precision = "second"
    try:
        high = _epoch(_period_end(start, precision))
    except (ValueError, OverflowError):
        # The period runs past year 9999: clamp to the open end every index shares.
        high = DATE_MAX
    return DatePeriod(low, high, precision)


def _period_end(start: datetime, precision: Precision) -> datetime:
    if precision == "year":
        return start.replace(year=start.year + 1)
    if precision == "month":
        return _add_months(start, 1)
    step = {"day": timedelta(days=1), "minute": timedelta(minutes=1)}.get(
        precision, timedelta(seconds=1)
    )
    return start + step
