"""An independent oracle for CGM metrics, written for the tests from the consensus texts
(Battelino 2019, Diabetes Care 42:1593; Battelino 2023, Lancet Diabetes Endocrinol 11:42)
and not from the project's code: every reading is spread over the whole minutes it
stands for (its sampling interval, cut at the next reading), and everything is counted
minute by minute. The project lays readings on a timeline with durations instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

MG_PER_MMOL = 18.016


@dataclass(frozen=True)
class Trace:
    """(minute since epoch, value, unit) of one sensor sampling every `interval` minutes."""

    readings: list[tuple[int, float, str]]
    interval: int


def band(value: float, unit: str) -> str:
    bounds = (3.0, 3.9, 10.0, 13.9) if unit == "mmol/L" else (54, 70, 180, 250)
    if value < bounds[0]:
        return "very_low"
    if value < bounds[1]:
        return "low"
    if value <= bounds[2]:
        return "in_range"
    if value <= bounds[3]:
        return "high"
    return "very_high"


def minutes(trace: Trace) -> dict[int, tuple[float, str]]:
    """minute -> (value, unit) of the reading standing for it."""
    grid: dict[int, tuple[float, str]] = {}
    ordered = sorted(trace.readings)
    for i, (minute, value, unit) in enumerate(ordered):
        stop = minute + trace.interval
        if i + 1 < len(ordered):
            stop = min(stop, ordered[i + 1][0])
        for m in range(minute, stop):
            grid[m] = (value, unit)
    return grid


def percents(trace: Trace) -> dict[str, float]:
    grid = minutes(trace)
    counts: dict[str, int] = {}
    for value, unit in grid.values():
        counts[band(value, unit)] = counts.get(band(value, unit), 0) + 1
    return {
        b: 100 * counts.get(b, 0) / len(grid)
        for b in ("very_low", "low", "in_range", "high", "very_high")
    }


def mean_mg_dl(trace: Trace) -> float:
    values = [v * MG_PER_MMOL if u == "mmol/L" else v for _, v, u in trace.readings]
    return sum(values) / len(values)


def events(trace: Trace, inside, start: int = 15, end: int = 15, strictly: bool = False) -> int:
    """Minute by minute: an event starts once `start` consecutive minutes are inside (more
    than `start` when `strictly`), ends once `end` consecutive minutes are outside; a
    minute without data ends everything."""
    grid = minutes(trace)
    if not grid:
        return 0
    count = 0
    in_event = False
    run_in = run_out = 0
    for m in range(min(grid), max(grid) + 2):
        if m not in grid:
            in_event, run_in, run_out = False, 0, 0
            continue
        if inside(*grid[m]):
            run_in, run_out = run_in + 1, 0
            if not in_event and (run_in > start if strictly else run_in >= start):
                in_event = True
                count += 1
        else:
            run_out, run_in = run_out + 1, 0
            if in_event and run_out >= end:
                in_event = False
    return count


def below(limit_mg: float, limit_mmol: float):
    return lambda v, u: v < (limit_mmol if u == "mmol/L" else limit_mg)


def above(limit_mg: float, limit_mmol: float):
    return lambda v, u: v > (limit_mmol if u == "mmol/L" else limit_mg)


def minute_of(moment: datetime) -> int:
    return int(moment.timestamp() // 60)
