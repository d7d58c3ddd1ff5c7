"""The Ambulatory Glucose Profile of a period: what its one page shows, as numbers.

- the modal day: the CGM readings of every day laid on one 24-hour clock (local time of
  the report's zone) in 96 slots of 15 minutes, each slot's 5th, 25th, 50th, 75th and
  95th percentiles (numpy's linear interpolation), lightly smoothed over the neighbouring
  slots as AGP charts are, so that a slot with few readings does not spike;
- the daily profiles: one trace per calendar day, broken where data are missing.

The metrics panel and the time-in-ranges bar come from CgmMetrics (metrics.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np

from fhir_server.clinical.metrics import CgmMetrics
from fhir_server.clinical.period import first_day, last_day

SLOTS = 96
SLOT_MINUTES = 24 * 60 // SLOTS
PERCENTILES = (5, 25, 50, 75, 95)
SMOOTHING = np.array([0.25, 0.5, 0.25])  # each slot with half of each neighbour's weight


@dataclass(frozen=True)
class DailyProfile:
    day: date
    hours: list[float | None]  # local hour of day (0-24); None breaks the line at a gap
    mg_dl: list[float | None]


@dataclass(frozen=True)
class Agp:
    metrics: CgmMetrics
    slot_hours: np.ndarray  # the middle of each slot, in hours
    bands: dict[int, np.ndarray]  # percentile -> mg/dL per slot (NaN: no reading)
    days: list[DailyProfile]

    @property
    def has_data(self) -> bool:
        return bool(self.metrics.points)


def local_minutes(at: float, metrics: CgmMetrics) -> tuple[date, float]:
    moment = datetime.fromtimestamp(at, metrics.period.tz)
    return moment.date(), moment.hour * 60 + moment.minute + moment.second / 60


def modal_day(metrics: CgmMetrics) -> dict[int, np.ndarray]:
    slots: list[list[float]] = [[] for _ in range(SLOTS)]
    for point in metrics.points:
        _, minute = local_minutes(point.reading.at, metrics)
        slots[min(int(minute // SLOT_MINUTES), SLOTS - 1)].append(point.reading.mg_dl)
    bands = {}
    for p in PERCENTILES:
        raw = np.array([np.percentile(s, p) if s else np.nan for s in slots])
        bands[p] = smooth(raw)
    return bands


def smooth(values: np.ndarray) -> np.ndarray:
    """A circular weighted mean over each slot and its neighbours, skipping empty ones."""
    filled = np.nan_to_num(values)
    present = (~np.isnan(values)).astype(float)
    total = sum(w * np.roll(filled, k) for w, k in zip(SMOOTHING, (-1, 0, 1), strict=True))
    weight = sum(w * np.roll(present, k) for w, k in zip(SMOOTHING, (-1, 0, 1), strict=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / weight
    out[np.isnan(values)] = np.nan
    return out


def daily_profiles(metrics: CgmMetrics) -> list[DailyProfile]:
    first, last = first_day(metrics.period), last_day(metrics.period)
    by_day: dict[date, DailyProfile] = {
        first + timedelta(days=i): DailyProfile(first + timedelta(days=i), [], [])
        for i in range((last - first).days + 1)
    }
    previous_segment = None
    previous_day = None
    for point in metrics.points:
        day, minute = local_minutes(point.reading.at, metrics)
        profile = by_day.get(day)
        if profile is None:
            continue
        if profile.hours and (point.segment != previous_segment or day != previous_day):
            profile.hours.append(None)  # a gap: the line stops
            profile.mg_dl.append(None)
        profile.hours.append(minute / 60)
        profile.mg_dl.append(point.reading.mg_dl)
        previous_segment, previous_day = point.segment, day
    return list(by_day.values())


def build_agp(metrics: CgmMetrics) -> Agp:
    hours = (np.arange(SLOTS) + 0.5) * SLOT_MINUTES / 60
    return Agp(metrics, hours, modal_day(metrics), daily_profiles(metrics))
