"""Value normalisation shared by index extraction and query parsing.

Both sides must normalise the same way or searches silently miss: strings are compared
case- and accent-insensitively (French names: `Hélène` is found by `helene`), and dates are
half-open periods [low, high) in epoch seconds at the precision they were written with, so
`2024`, `2024-03` and instants compare with plain numeric range tests.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date
from functools import lru_cache

from fhir_server.search.types import DATE_MAX

_SPACES = re.compile(r"\s+")
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
# FHIR date / dateTime / instant; the time part may stop at minutes (lenient: seen in the wild)
_DATE_PATTERN = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})"
    r"(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


@lru_cache(maxsize=8192)  # displays and names repeat across resources (same LOINC display)
def normalize_string(value: str) -> str:
    """NFKD, drop combining marks, casefold, collapse whitespace: 'Hélène  Dupont' ->
    'helene dupont'."""
    if value.isascii():  # the common case, skip the Unicode work
        return _SPACES.sub(" ", value.casefold()).strip()
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(char for char in decomposed if not unicodedata.combining(char))
    return _SPACES.sub(" ", stripped.casefold()).strip()


def parse_date_period(value: str) -> tuple[float, float] | None:
    """The half-open period [low, high) in epoch seconds covered by a FHIR date, dateTime or
    instant, at the precision written; None when the value is not a valid date.

    No timezone means UTC (the server has no better local time to assume).
    """
    if not isinstance(value, str):
        return None
    match = _DATE_PATTERN.match(value)
    if match is None:
        return None
    year_text, month_text, day_text, hour_text, minute_text, second_text, fraction, zone = (
        match.groups()
    )
    year = int(year_text)
    if year < 1:
        return None
    try:
        if month_text is None:
            low = _epoch_days(year, 1, 1) * 86400.0
            high = _epoch_days(year + 1, 1, 1) * 86400.0 if year < 9999 else DATE_MAX
            return low, high
        month = int(month_text)
        if day_text is None:
            low = _epoch_days(year, month, 1) * 86400.0
            if month == 12:
                high = _epoch_days(year + 1, 1, 1) * 86400.0 if year < 9999 else DATE_MAX
            else:
                high = _epoch_days(year, month + 1, 1) * 86400.0
            return low, high
        day_start = _epoch_days(year, month, int(day_text)) * 86400.0
    except ValueError:  # month 13, February 30...
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
        if fraction:
            # add the fraction and its width in one step so that high lands on the next unit
            scale = 10 ** len(fraction)
            width = (int(fraction) + 1) / scale - int(fraction) / scale
            low += int(fraction) / scale
        else:
            width = 1.0
    if zone and zone != "Z":
        zone_hours, zone_minutes = int(zone[1:3]), int(zone[4:6])
        if zone_hours > 14 or zone_minutes > 59:
            return None
        offset = zone_hours * 3600 + zone_minutes * 60
        # local time = UTC + offset, so UTC = local - offset
        low = low - offset if zone[0] == "+" else low + offset
    return low, low + width


def _epoch_days(year: int, month: int, day: int) -> int:
    return date(year, month, day).toordinal() - _EPOCH_ORDINAL
