"""A small glucose model: one value per time step (5 min for CGM) over the whole window.

The curve is the sum of
- a basal level with a dawn rise (04:00-08:00 local time),
- meal responses (breakfast, lunch, dinner, sometimes a snack; carbohydrate size varies),
  shaped t/tp * exp(1 - t/tp) with the peak about 55 min after the meal,
- afternoon exercise dips on some days,
- "missed bolus" peaks for insulin users (the main cause of hyperglycaemia in T1),
- a slow drift (day-to-day variability, hours) and a fast noise (minutes), both AR(1),
- hypoglycaemia episodes pulling the curve to a nadir of 45-68 mg/dL for 45-120 min, often
  at night, sometimes followed by a rebound after over-treatment.

A per-patient control level (0 poor .. 1 excellent) sets the basal level, the meal peaks,
the variability and the hypo rate, so that time in range (70-180 mg/dL) spreads from about
30 % to over 90 % between patients, as in CGM registries (e.g. Battelino et al., Diabetes
Care 2019: the consensus target is > 70 % TIR, reached by a minority of T1 patients).

Times in the curve are UTC steps from the first day at 00:00Z; meals follow Paris local
time (UTC+1, UTC+2 in summer).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from statistics import NormalDist

from .population import PatientProfile

MINUTES_PER_DAY = 1440
# Standard normal quantiles at the midpoints of 8192 equal-probability bins.
_NORMAL_TABLE = tuple(NormalDist().inv_cdf((i + 0.5) / 8192) for i in range(8192))
FLOOR_MGDL = 30.0  # the model never goes below this (a sensor reads "< 40" there)


@dataclass(frozen=True, slots=True)
class GlucoseParams:
    basal: float  # night / fasting level, mg/dL
    meal_rise: float  # peak rise of a typical meal, mg/dL
    noise_sd: float  # fast noise (minutes), mg/dL
    drift_sd: float  # slow drift (hours to days), mg/dL
    dawn_rise: float  # extra rise around 06:00, mg/dL
    hypos_per_day: float
    exercise_per_day: float
    missed_bolus_per_day: float


def params_for(profile: PatientProfile) -> GlucoseParams:
    c = profile.control
    if profile.diabetes_type == 1:
        return GlucoseParams(
            basal=185 - 95 * c, meal_rise=120 - 55 * c, noise_sd=30 - 10 * c,
            drift_sd=42 - 20 * c, dawn_rise=20, hypos_per_day=0.35 + 0.45 * c,
            exercise_per_day=0.3, missed_bolus_per_day=0.5 * (1 - c),
        )
    if profile.on_insulin:
        return GlucoseParams(
            basal=190 - 80 * c, meal_rise=75 - 30 * c, noise_sd=15 - 5 * c,
            drift_sd=30 - 15 * c, dawn_rise=18, hypos_per_day=0.05 + 0.15 * c,
            exercise_per_day=0.2, missed_bolus_per_day=0.3 * (1 - c),
        )
    sulfonylurea = any(t.drug == "gliclazide" and t.end is None for t in profile.treatments)
    return GlucoseParams(
        basal=170 - 65 * c, meal_rise=65 - 25 * c, noise_sd=11 - 4 * c,
        drift_sd=20 - 10 * c, dawn_rise=15, hypos_per_day=0.04 if sulfonylurea else 0.005,
        exercise_per_day=0.2, missed_bolus_per_day=0.0,
    )


def paris_utc_offset_hours(day: date) -> int:
    """+2 between the last Sundays of March and October (EU summer time), else +1."""

    def last_sunday(month: int) -> date:
        d = date(day.year, month, 31)
        return d - timedelta(days=(d.weekday() + 1) % 7)

    return 2 if last_sunday(3) <= day < last_sunday(10) else 1


@lru_cache(maxsize=16)
def _shape(step: int, peak_minutes: float, length_minutes: int) -> tuple[float, ...]:
    tp = peak_minutes
    return tuple(
        (t / tp) * math.exp(1 - t / tp) for t in range(0, length_minutes, step)
    )


@lru_cache(maxsize=16)
def _dawn(step: int, offset_hours: int, rise: float) -> tuple[float, ...]:
    out = []
    for k in range(MINUTES_PER_DAY // step):
        local_h = (k * step / 60 + offset_hours) % 24
        out.append(rise * math.exp(-(((local_h - 6.5) / 1.3) ** 2)))
    return tuple(out)


def _add(curve: list[float], start: int, shape: tuple[float, ...], amp: float) -> None:
    n = len(curve)
    for j, s in enumerate(shape):
        i = start + j
        if 0 <= i < n:
            curve[i] += amp * s


def _pull_down(curve: list[float], start: int, slots: int, nadir: float) -> None:
    """Blend towards the nadir: fall over a third of the episode, hold, recover."""
    n = len(curve)
    third = max(slots // 3, 1)
    for j in range(slots):
        i = start + j
        if not 0 <= i < n:
            continue
        w = min(j / third, 1.0, (slots - j) / third)
        if curve[i] > nadir:
            curve[i] = curve[i] * (1 - w) + nadir * w


def simulate(
    rng: random.Random, params: GlucoseParams, first_day: date, days: int, step: int = 5
) -> list[float]:
    """Glucose (mg/dL, floats) every `step` minutes from first_day 00:00Z for `days` days."""
    per_day = MINUTES_PER_DAY // step
    meal = _shape(step, 55.0, 300)
    dip = _shape(step, 45.0, 180)
    curve: list[float] = []
    offsets = [paris_utc_offset_hours(first_day + timedelta(days=d)) for d in range(days)]
    for d in range(days):
        dawn = _dawn(step, offsets[d], params.dawn_rise)
        curve.extend(params.basal + x for x in dawn)

    r = rng.random
    for d in range(days):
        day0 = d * per_day
        off = offsets[d]

        def slot(local_hour: float, day0: int = day0, off: int = off) -> int:
            return day0 + int((local_hour - off) * 60 // step)

        meals = [(rng.gauss(7.6, 0.5), 0.8), (rng.gauss(12.7, 0.4), 1.0),
                 (rng.gauss(19.8, 0.6), 1.1)]
        if r() < 0.1:
            meals.pop(0)  # skipped breakfast
        if r() < 0.35:
            meals.append((rng.gauss(16.3, 0.6), 0.4))  # afternoon snack
        for hour, size in meals:
            carbs = size * rng.lognormvariate(0, 0.35)
            _add(curve, slot(hour), meal, params.meal_rise * carbs)
        if r() < params.missed_bolus_per_day:
            hour, size = meals[int(r() * len(meals))]
            _add(curve, slot(hour), meal, params.meal_rise * size * rng.uniform(1.0, 2.0))
        if r() < params.exercise_per_day:
            _add(curve, slot(rng.uniform(16.5, 19.5)), dip, -rng.uniform(25, 60))

    # Slow drift and fast noise, AR(1) processes continuous across days. Normal deviates
    # come from a quantile table: 4x faster than random.gauss, and plenty for noise.
    phi_slow = math.exp(-step / 720)
    phi_fast = math.exp(-step / 30)
    s_slow = params.drift_sd * math.sqrt(1 - phi_slow**2)
    s_fast = params.noise_sd * math.sqrt(1 - phi_fast**2)
    table, size = _NORMAL_TABLE, len(_NORMAL_TABLE)
    slow = rng.gauss(0, params.drift_sd)
    fast = 0.0
    for i in range(len(curve)):
        slow = phi_slow * slow + s_slow * table[int(r() * size)]
        fast = phi_fast * fast + s_fast * table[int(r() * size)]
        curve[i] += slow + fast

    # Hypoglycaemia last: the episode overrides what the sum of the parts said.
    total_days = days
    n_hypos = sum(1 for _ in range(total_days) if r() < params.hypos_per_day)
    for _ in range(n_hypos):
        d = int(r() * total_days)
        night = r() < 0.4
        hour = rng.uniform(1, 5) if night else rng.uniform(8, 23)
        start = d * per_day + int((hour - offsets[d]) * 60 // step)
        slots = int(rng.uniform(45, 120) // step) + 1
        _pull_down(curve, start, slots, rng.uniform(45, 68))
        if r() < 0.4:  # over-treated with sugar: a rebound
            _add(curve, start + slots - slots // 3, meal, rng.uniform(40, 90))

    floor = FLOOR_MGDL
    return [v if v > floor else floor for v in curve]
