"""CGM readings laid on a timeline: the sampling interval of each sensor, overlapping
sensors merged, and how long each kept reading stands for.

- The sampling interval of a sensor is the median of the gaps between its consecutive
  readings, snapped to the usual 1, 5 or 15 minutes when within a fifth of one of them
  (Dexcom reads every 5 minutes, FreeStyle Libre keeps one value every 15).
- A reading stands for its sensor's interval, or less when the next kept reading comes
  sooner. A reading followed by nothing within 1.5 intervals is the last of its segment:
  the gap after it is not interpolated (Battelino 2019: no imputation).
- Two sensors worn at once (a new one started before the old one ends) would count the
  same minutes twice: a reading that falls inside the time a kept reading of another
  sensor stands for is left out; the first sensor keeps the timeline until it stops.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median

from fhir_server.clinical.glucose import Reading

USUAL_INTERVALS_MIN = (1.0, 5.0, 15.0)
DEFAULT_INTERVAL_MIN = 15.0  # a sensor with a single reading: the longest usual interval
GAP_FACTOR = 1.5


@dataclass(frozen=True, slots=True)
class Point:
    """A kept reading: `seconds` it stands for, `segment` the run of data without a gap
    it belongs to."""

    reading: Reading
    seconds: float
    segment: int


def sampling_minutes(times: Sequence[float]) -> float:
    """The sampling interval (minutes) of one sensor's reading times (sorted)."""
    gaps = [(b - a) / 60 for a, b in zip(times, times[1:], strict=False) if b > a]
    if not gaps:
        return DEFAULT_INTERVAL_MIN
    found = median(gaps)
    for usual in USUAL_INTERVALS_MIN:
        if abs(found - usual) <= usual / 5:
            return usual
    return round(found, 1)


def sensor_intervals(readings: Sequence[Reading]) -> dict[str, float]:
    """Sensor -> sampling interval in minutes."""
    times: dict[str, list[float]] = defaultdict(list)
    for reading in readings:
        times[reading.sensor].append(reading.at)
    return {sensor: sampling_minutes(sorted(t)) for sensor, t in times.items()}


def lay_out(readings: Sequence[Reading], intervals: dict[str, float]) -> list[Point]:
    """The kept readings in time order with their durations and segments."""
    ordered = sorted(readings, key=lambda r: (r.at, r.sensor))
    kept: list[Reading] = []
    covered_until = float("-inf")
    covering = None
    for reading in ordered:
        if reading.at < covered_until and reading.sensor != covering:
            continue  # another sensor already stands for this moment
        if kept and reading.at == kept[-1].at:
            continue  # the same instant twice (a re-sent value): one reading
        kept.append(reading)
        covering = reading.sensor
        covered_until = max(covered_until, reading.at + intervals[reading.sensor] * 60)
    points: list[Point] = []
    segment = 0
    for i, reading in enumerate(kept):
        step = intervals[reading.sensor] * 60
        following = kept[i + 1].at - reading.at if i + 1 < len(kept) else None
        seconds = step if following is None else min(step, following)
        points.append(Point(reading, seconds, segment))
        if following is None or following > step * GAP_FACTOR:
            segment += 1
    return points
