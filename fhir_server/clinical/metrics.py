"""CGM metrics of one patient over one period (Battelino et al., Diabetes Care
2019;42:1593; events: Lancet Diabetes Endocrinol 2023;11:42).

From the CGM readings of the period (meter and laboratory glucose are summarised apart,
never mixed into the CGM figures):

- days with data (calendar days, in the report's time zone, with at least one reading),
  % of time the CGM was active (the time the kept readings stand for, timeline.py, over
  the period), number of readings;
- mean glucose (mg/dL), GMI = 3.31 + 0.02392 x mean, SD and CV (SD / mean);
- % of time in each range (ranges.py), weighted by the time each reading stands for: with
  one sensor and no overlap, the share of readings;
- events (events.py).

SD uses the n - 1 of a sample, as the tools clinicians compare with (iglu, cgmanalysis).
A period shorter than 14 days or with the CGM active less than 70 % of it is flagged
(`sufficient` False and `flags`), not silently reported.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from fhir_server.clinical.events import EventCounts, count_events
from fhir_server.clinical.glucose import MG_PER_MMOL, Reading
from fhir_server.clinical.ranges import BANDS, STANDARD, TARGETS, Bounds
from fhir_server.clinical.timeline import Point, lay_out, sensor_intervals

MIN_DAYS = 14
MIN_ACTIVE_PERCENT = 70.0
FLAG_SHORT = "period-shorter-than-14-days"
FLAG_SPARSE = "cgm-active-below-70-percent"
FLAG_NO_DATA = "no-cgm-data"


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime  # aware; included
    end: datetime  # aware; excluded
    tz: ZoneInfo
    # The moment data could last have come (the request's, when the period ends later):
    # the time the CGM could have been active ends there.
    until: datetime | None = None

    @property
    def seconds(self) -> float:
        """The time the CGM could have been active. From epoch seconds: the difference of
        two datetimes of one zone is wall-clock time, an hour off on a daylight-saving day."""
        return (self.until or self.end).timestamp() - self.start.timestamp()

    @property
    def days(self) -> int:
        """Calendar days (a day with a daylight-saving change counts as one)."""
        return (self.end.astimezone(self.tz).date() - self.start.astimezone(self.tz).date()).days


@dataclass(frozen=True, slots=True)
class MeterSummary:
    readings: int
    mean_mg_dl: float | None
    below_70: int
    below_54: int


@dataclass(frozen=True)
class CgmMetrics:
    period: Period
    population: str
    readings: int
    days_with_data: int
    active_percent: float
    intervals_min: dict[str, float]  # sensor -> sampling interval
    mean_mg_dl: float | None
    gmi_percent: float | None
    sd_mg_dl: float | None
    cv_percent: float | None
    ranges: dict[str, float]  # band -> percent of time, standard bounds (BANDS)
    target_ranges: dict[str, float]  # the same with the population's bounds
    events: EventCounts
    meter: MeterSummary
    flags: tuple[str, ...] = field(default=())
    points: tuple[Point, ...] = field(default=(), repr=False, compare=False)

    @property
    def sufficient(self) -> bool:
        return not self.flags

    @property
    def mean_mmol_l(self) -> float | None:
        return None if self.mean_mg_dl is None else self.mean_mg_dl / MG_PER_MMOL


def in_period(readings: Iterable[Reading], period: Period) -> list[Reading]:
    start, end = period.start.timestamp(), period.end.timestamp()
    return [r for r in readings if start <= r.at < end]


def range_percents(points: Sequence[Point], bounds: Bounds) -> dict[str, float]:
    total = sum(p.seconds for p in points)
    shares = [0.0] * len(BANDS)
    for point in points:
        shares[bounds.band(point.reading)] += point.seconds
    return {
        band: (100 * s / total if total else 0.0)
        for band, s in zip(BANDS, shares, strict=True)
    }


def weighted_mean_sd(points: Sequence[Point]) -> tuple[float | None, float | None]:
    n = len(points)
    total = sum(p.seconds for p in points)
    if n == 0 or total == 0:
        return None, None
    mean = sum(p.reading.mg_dl * p.seconds for p in points) / total
    if n == 1:
        return mean, None
    # frequency weights, corrected by n / (n - 1): equal weights give the sample SD
    spread = sum(p.seconds * (p.reading.mg_dl - mean) ** 2 for p in points) / total
    return mean, math.sqrt(spread * n / (n - 1))


def meter_summary(readings: Sequence[Reading]) -> MeterSummary:
    if not readings:
        return MeterSummary(0, None, 0, 0)
    bands = [STANDARD.band(r) for r in readings]
    return MeterSummary(
        len(readings),
        sum(r.mg_dl for r in readings) / len(readings),
        sum(1 for b in bands if b <= 1),
        sum(1 for b in bands if b == 0),
    )


def compute(readings: Iterable[Reading], period: Period, population: str = "general") -> CgmMetrics:
    """The metrics of the readings that fall inside `period`."""
    target = TARGETS[population]
    inside = in_period(readings, period)
    cgm = [r for r in inside if r.source == "cgm"]
    intervals = sensor_intervals(cgm)
    points = lay_out(cgm, intervals)
    mean, sd = weighted_mean_sd(points)
    active_seconds = sum(p.seconds for p in points)
    active = min(100.0, 100 * active_seconds / period.seconds) if period.seconds > 0 else 0.0
    days = {
        datetime.fromtimestamp(p.reading.at, period.tz).date() for p in points
    }
    flags = []
    if not points:
        flags.append(FLAG_NO_DATA)
    if period.days < MIN_DAYS:
        flags.append(FLAG_SHORT)
    if active < MIN_ACTIVE_PERCENT:
        flags.append(FLAG_SPARSE)
    return CgmMetrics(
        period=period,
        population=population,
        readings=len(points),
        days_with_data=len(days),
        active_percent=active,
        intervals_min=intervals,
        mean_mg_dl=mean,
        gmi_percent=None if mean is None else 3.31 + 0.02392 * mean,
        sd_mg_dl=sd,
        cv_percent=None if mean is None or sd is None else 100 * sd / mean,
        ranges=range_percents(points, STANDARD),
        target_ranges=range_percents(points, target.bounds),
        events=count_events(points),
        meter=meter_summary([r for r in inside if r.source == "meter"]),
        flags=tuple(flags),
        points=tuple(points),
    )
