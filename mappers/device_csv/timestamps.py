"""Timestamps as exports write them: ISO, compact, day-first or month-first, 12 or 24 hours.

Device exports write the device's local wall-clock time without an offset; the caller gives
the time zone (an IANA name such as `Europe/Paris`, or a fixed offset such as `+02:00`).
Whether `05-12-2019` is the 5th of December or the 12th of May is decided once per file,
from all its timestamps (see `infer_dayfirst`).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import CsvMappingError

_MINUTES = r"(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.,](?P<frac>\d+))?)?\s*(?P<ampm>[AaPp]\.?[Mm]\.?)?"
_TIME = r"(?:[ T,]+(?P<h>\d{1,2}):" + _MINUTES + ")?"
_OFFSET = r"\s*(?P<tz>Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)?"
# What follows the hour's colon: a date and hour already matched (TimestampReader) leave
# only this to match for the next time of the same hour.
_AFTER_HOUR = re.compile(_MINUTES + _OFFSET + "$")
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


class Stamp:
    """A parsed timestamp: aware when it has a time, a bare date otherwise."""

    __slots__ = ("moment", "day", "explicit_offset")
    zone_hour: _ZoneHour | None = None  # see LocalStamp

    def __init__(
        self, moment: datetime | None, day: date | None = None, explicit_offset: bool = False
    ) -> None:
        self.moment = moment
        self.day = day
        self.explicit_offset = explicit_offset

    def __repr__(self) -> str:
        return f"Stamp({self.fhir()!r})"

    def is_local_time(self) -> bool:
        """A time of day read in the caller's zone (not a date, not an explicit offset)."""
        return self.moment is not None and not self.explicit_offset

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

    def naive(self) -> datetime:
        """The wall-clock time (for the order of rows in a repeated hour)."""
        assert self.moment is not None
        return self.moment.replace(tzinfo=None)

    def second_pass(self) -> Stamp:
        """The same wall-clock time, in the second pass of a repeated hour (fold=1)."""
        assert self.moment is not None
        return Stamp(self.moment.replace(fold=1), self.day, self.explicit_offset)


class LocalStamp:
    """A local time of a regular hour (see `_ZoneHour`), as `TimestampReader` reads most:
    the hour's zone facts and the time's own wall-clock text instead of an aware datetime,
    so that its FHIR text and its key are string joins. Same interface as `Stamp`; `fold`
    is 1 in the second pass of a repeated hour."""

    __slots__ = ("zone_hour", "local", "minsec", "fold")
    moment = None
    day = None
    explicit_offset = False

    def __init__(self, zone_hour: _ZoneHour, local: str, minsec: str, fold: int = 0) -> None:
        self.zone_hour = zone_hour
        self.local = local  # `YYYY-MM-DDTHH:MM:SS`
        self.minsec = minsec  # `MMSS`
        self.fold = fold

    def __repr__(self) -> str:
        return f"LocalStamp({self.fhir()!r})"

    def is_local_time(self) -> bool:
        return True

    def fhir(self) -> str:
        return self.local + self.zone_hour.suffixes[self.fold]

    def key(self) -> str:
        return self.zone_hour.utc_hours[self.fold] + self.minsec + "Z"

    def naive(self) -> datetime:
        return datetime.fromisoformat(self.local)

    def second_pass(self) -> LocalStamp:
        return LocalStamp(self.zone_hour, self.local, self.minsec, 1)


AnyStamp = Stamp | LocalStamp


class _ZoneHour:
    """One wall-clock hour of a zone whose UTC offsets are the same all through the hour
    (for each fold) and whole hours: then minutes and seconds are the same in UTC, so the
    FHIR text of a time is `local + suffix` and its UTC key `utc_hour + MMSS + Z`.
    `ambiguous` says that the hour occurs twice (or not at all): fold 0 and 1 differ."""

    __slots__ = ("prefix", "suffixes", "utc_hours", "ambiguous")

    def __init__(self, prefix: str, suffixes: tuple[str, str], utc_hours: tuple[str, str],
                 ambiguous: bool) -> None:
        self.prefix = prefix  # `YYYY-MM-DDTHH:`
        self.suffixes = suffixes
        self.utc_hours = utc_hours
        self.ambiguous = ambiguous


_SUFFIXES: dict[timedelta, str] = {}


def _suffix(offset: timedelta) -> str:
    """How isoformat writes an offset (`+01:00`), once per offset."""
    text = _SUFFIXES.get(offset)
    if text is None:
        text = _SUFFIXES[offset] = datetime(2000, 1, 1, tzinfo=timezone(offset)).isoformat()[19:]
    return text


def _utc_hour(utc: datetime) -> str:
    if utc.year < 1000:
        return utc.strftime("%Y%m%dT%H")  # as Stamp.key writes years before 1000
    # %-formatting: twice as fast as an f-string with format specs here
    return "%d%02d%02dT%02d" % (utc.year, utc.month, utc.day, utc.hour)  # noqa: UP031


def _zone_hour(start: datetime, zone: tzinfo) -> _ZoneHour | None:
    """The facts of the local hour beginning at naive `start`, or None when the offset
    changes inside the hour, is not whole hours, or the hour is out of range in UTC (such
    hours take the general path, which handles and reports them)."""
    y, mo, d, h = start.year, start.month, start.day, start.hour
    # A zone's utcoffset(dt) reads dt's wall clock and fold: the same as dt in that zone.
    offset = zone.utcoffset(start)
    if offset is None or offset.seconds % 3600 or offset.microseconds:  # not whole hours
        return None
    if offset != zone.utcoffset(datetime(y, mo, d, h, 59, 59)):
        return None
    second = zone.utcoffset(datetime(y, mo, d, h, 0, 0, 0, None, fold=1))
    if second != zone.utcoffset(datetime(y, mo, d, h, 59, 59, 0, None, fold=1)):
        return None
    if second is None or second.seconds % 3600 or second.microseconds:
        return None
    try:
        utc = start - offset  # what astimezone(UTC) computes; out of range -> error
        utc_second = utc if second == offset else start - second
    except OverflowError:
        return None
    prefix = "%04d-%02d-%02dT%02d:" % (y, mo, d, h)  # noqa: UP031 - isoformat[:14], faster
    if second == offset:  # the usual hour, the same in both folds
        suffix, utc_hour = _suffix(offset), _utc_hour(utc)
        return _ZoneHour(prefix, (suffix, suffix), (utc_hour, utc_hour), False)
    return _ZoneHour(prefix, (_suffix(offset), _suffix(second)),
                     (_utc_hour(utc), _utc_hour(utc_second)), True)


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


_MISSING = object()


class TimestampReader:
    """Reads the timestamp cells of one file, with its date order and zone, fast.

    Rows of an export are minutes apart, so the zone's offset is looked up once per local
    hour (`_ZoneHour`) instead of once per row; a time in that hour is then its text.
    Dates the fast path does not cover (explicit offsets, bare dates, compact dates,
    strptime formats, hours in which the offset changes) and every malformed cell go
    through `parse_timestamp`, which gives the same results and reasons as always.
    """

    def __init__(self, *, dayfirst: bool, zone: tzinfo, date_format: str | None = None):
        self.dayfirst = dayfirst
        self.zone = zone
        self.date_format = date_format
        self._patterns = (_YEAR_FIRST, _NUMERIC_DATE)
        self._hours: dict[str, _ZoneHour | None] = {}
        self._last_hour = "\x00"  # the text up to the hour's colon of the last time read

    def read(self, text: str) -> AnyStamp:
        """Like `parse_timestamp` (ValueError with a short reason if `text` is not a date)."""
        if self.date_format is None:
            text = text.strip()
            # Most rows are in the hour of the row before: the same text up to the hour's
            # colon (whose parse is then the same: the date and hour contain no other colon).
            if text.startswith(self._last_hour):
                match = _AFTER_HOUR.match(text, len(self._last_hour))
                if match is not None:
                    minute, seconds, ampm, offset = match.group("mi", "s", "ampm", "tz")
                    hour = self._hours.get(self._last_hour + (ampm or ""))
                    if hour is not None and offset is None:
                        stamp = self._local(hour, minute, seconds)
                        if stamp is not None:
                            return stamp
            first, second = self._patterns
            match = first.match(text)
            if match is None:
                match = second.match(text)
                if match is not None:  # files keep one style: try this one first next time
                    self._patterns = (second, first)
            if match is not None:
                minute, seconds, ampm, offset = match.group("mi", "s", "ampm", "tz")
                if minute is not None and offset is None:
                    self._last_hour = text[: match.start("mi")]
                    key = self._last_hour + (ampm or "")
                    hour = self._hours.get(key, _MISSING)
                    if hour is _MISSING:
                        hour = self._hours[key] = self._zone_hour(match)
                    if hour is not None:
                        stamp = self._local(hour, minute, seconds)  # type: ignore[arg-type]
                        if stamp is not None:
                            return stamp
        return parse_timestamp(
            text, dayfirst=self.dayfirst, zone=self.zone, date_format=self.date_format
        )

    @staticmethod
    def _local(hour: _ZoneHour, minute: str, seconds: str | None) -> LocalStamp | None:
        seconds = seconds or "00"
        if minute <= "59" and seconds <= "59":  # two digits each: else the general error
            return LocalStamp(hour, hour.prefix + minute + ":" + seconds, minute + seconds)
        return None

    def _zone_hour(self, match: re.Match[str]) -> _ZoneHour | None:
        groups = match.groupdict()
        try:
            if match.re is _YEAR_FIRST:
                year, month, day_ = int(groups["y"]), int(groups["mo"]), int(groups["d"])
            else:
                first, second = int(groups["a"]), int(groups["b"])
                day_, month = (first, second) if self.dayfirst else (second, first)
                year = _year(groups["y"])
            hour = _hour(int(groups["h"]), groups["ampm"])
            start = datetime(year, month, day_, hour)
        except ValueError:
            return None
        return _zone_hour(start, self.zone)


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
