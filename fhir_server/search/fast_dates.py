"""Fast FHIR date -> [low, high) epoch-second period for index extraction.

`dates.parse_date_period` (shared with the query parser) is the reference definition; this
module computes the same periods with integer calendar arithmetic instead of datetime,
timedelta and Decimal objects, because ingest parses several dates per resource (effective,
meta.lastUpdated) and every microsecond counts there. tests/test_search_extract_dates.py checks
that both agree, fractional seconds included. Returns None for anything invalid instead of
raising: extraction skips it.
"""

from __future__ import annotations

import re
from calendar import monthrange
from datetime import date
from functools import lru_cache

from fhir_server.search.types import DATE_MAX

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_DATE_PATTERN = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})"
    r"(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,9})?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def date_period(value: str) -> tuple[float, float] | None:
    """[low, high) in epoch seconds of a FHIR date/dateTime/instant at its precision (no time
    zone = UTC); None when `value` is not a valid date."""
    if not isinstance(value, str):
        return None
    match = _DATE_PATTERN.fullmatch(value)
    if match is None:
        return None
    year_text, month_text, day_text, hour_text, minute_text, second_text, fraction, zone = (
        match.groups()
    )
    year = int(year_text)
    try:
        if month_text is None:
            low = _epoch_days(year, 1, 1) * 86400.0
            return low, _epoch_days(year + 1, 1, 1) * 86400.0 if year < 9999 else DATE_MAX
        month = int(month_text)
        if day_text is None:
            low = _epoch_days(year, month, 1) * 86400.0
            if month < 12:
                return low, _epoch_days(year, month + 1, 1) * 86400.0
            return low, _epoch_days(year + 1, 1, 1) * 86400.0 if year < 9999 else DATE_MAX
        day_start = _epoch_days(year, month, int(day_text)) * 86400.0
    except ValueError:  # year 0, month 13, February 30...
        return None
    if hour_text is None:
        return day_start, day_start + 86400.0
    hour, minute = int(hour_text), int(minute_text)
    if hour > 23 or minute > 59:
        return None
    low = day_start + hour * 3600 + minute * 60
    if second_text is None:
        width = 60.0
    else:
        second = int(second_text)
        if second > 59:
            return None
        low += second
        width = 1.0
    if zone is not None and zone != "Z":
        zone_hours, zone_minutes = int(zone[1:3]), int(zone[4:6])
        if zone_hours > 14 or zone_minutes > 59 or (zone_hours == 14 and zone_minutes):
            return None
        offset = zone_hours * 3600 + zone_minutes * 60
        low = low - offset if zone[0] == "+" else low + offset  # UTC = local - offset
    if fraction is not None:
        # The shared parser adds the fraction in exact decimal arithmetic and rounds once to a
        # float; building the exact decimal as text and letting float() round it (correctly
        # rounded) gives the very same floats, without Decimal's cost.
        digits = fraction[1:]
        scaled = int(low) * 10 ** len(digits) + int(digits)
        return float(f"{scaled}e-{len(digits)}"), float(f"{scaled + 1}e-{len(digits)}")
    return low, low + width


def _epoch_days(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01; ValueError for a day that does not exist."""
    first, length = _month_start(year, month)
    if not 1 <= day <= length:
        raise ValueError(f"day {day} out of range")
    return first + day - 1


@lru_cache(maxsize=4096)  # readings cluster in a few months: skip the date object
def _month_start(year: int, month: int) -> tuple[int, int]:
    first = date(year, month, 1)
    length = monthrange(year, month)[1]
    return first.toordinal() - _EPOCH_ORDINAL, length
