"""The reporting period of a CGM summary: whole days in the report's time zone, as the
CGM IG states them (effectivePeriod start and end as YYYY-MM-DD, the end day included)
and as clinicians read an AGP ("14 days: 1-14 May").

`start` / `end` are FHIR dates (or dateTimes, of which the date counts); without them the
period is the 14 days that end today. Today is not over: the time the CGM could have been
active stops at the moment of the request (`until`).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fhir_server.clinical.metrics import Period
from fhir_server.search.errors import SearchError

DEFAULT_DAYS = 14
DEFAULT_TIMEZONE = "Europe/Paris"
MAX_DAYS = 366


def zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or DEFAULT_TIMEZONE)
    except (ZoneInfoNotFoundError, ValueError):
        message = f"Unknown time zone {name!r} (an IANA name: Europe/Paris)"
        raise SearchError(message, "tz") from None


def _day(text: str, name: str) -> date:
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        raise SearchError(f"{name} must be a date (YYYY-MM-DD)", name) from None


def reporting_period(
    start: str | None,
    end: str | None,
    tz_name: str | None = None,
    now: datetime | None = None,
    days: int = DEFAULT_DAYS,
) -> Period:
    """The period from the request's parameters (end day included)."""
    tz = zone(tz_name)
    now = now or datetime.now(tz)
    last = _day(end, "end") if end else now.astimezone(tz).date()
    first = _day(start, "start") if start else last - timedelta(days=days - 1)
    if first > last:
        raise SearchError("start must not be after end", "start")
    if (last - first).days + 1 > MAX_DAYS:
        raise SearchError(f"a period is at most {MAX_DAYS} days", "start")
    begins = datetime.combine(first, time(0), tz)
    ends = datetime.combine(last + timedelta(days=1), time(0), tz)
    return Period(begins, ends, tz, until=min(ends, max(now, begins)))


def first_day(period: Period) -> date:
    return period.start.astimezone(period.tz).date()


def last_day(period: Period) -> date:
    """The last day of the period (included), as effectivePeriod.end states it."""
    return (period.end - timedelta(seconds=1)).astimezone(period.tz).date()
