"""Hypoglycaemia and hyperglycaemia events as the 2023 consensus counts them (Battelino et
al., Lancet Diabetes Endocrinol 2023;11:42-57, table of CGM-based event definitions):

- level 1 hypoglycaemia: starts after >= 15 consecutive minutes < 70 mg/dL, ends after
  >= 15 consecutive minutes >= 70 mg/dL;
- level 2 hypoglycaemia: the same with 54 mg/dL;
- extended hypoglycaemia: > 120 consecutive minutes < 70 mg/dL, ends as level 1;
- level 1 / level 2 hyperglycaemia: >= 15 consecutive minutes > 180 / > 250 mg/dL, ending
  after >= 15 consecutive minutes <= 180 / <= 250 mg/dL;
- extended hyperglycaemia: >= 90 cumulative minutes > 250 mg/dL within 120 minutes, ends
  after >= 15 consecutive minutes <= 180 mg/dL.

A level 2 event also lies inside a level 1 event; each level is counted on its own (as
iglu does; its `lv1_excl` is level 1 without level 2). Minutes are the time the readings
stand for (timeline.py): three 5-minute readings, or fifteen 1-minute ones, make 15
minutes. A gap in the data ends an event and any run: nothing is interpolated.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby

from fhir_server.clinical.ranges import STANDARD
from fhir_server.clinical.timeline import Point

MINUTE = 60.0
START_MINUTES = 15
END_MINUTES = 15
EXTENDED_HYPO_MINUTES = 120  # strictly more
EXTENDED_HYPER_MINUTES = 90  # at least, cumulative
EXTENDED_HYPER_WINDOW = 120

Predicate = Callable[[Point], bool]


@dataclass(frozen=True, slots=True)
class EventCounts:
    hypo_level1: int
    hypo_level2: int
    hypo_extended: int
    hyper_level1: int
    hyper_level2: int
    hyper_extended: int


def _band(point: Point) -> int:
    return STANDARD.band(point.reading)


def count_runs(
    points: Sequence[Point], inside: Predicate, start_seconds: float, strictly: bool = False
) -> int:
    """Events that start after a run inside lasting `start_seconds` (or more than that when
    `strictly`) and end after 15 minutes outside, segment by segment."""
    events = 0
    for _, segment in groupby(points, key=lambda p: p.segment):
        in_event = False
        run_in = run_out = 0.0
        for point in segment:
            if inside(point):
                run_in += point.seconds
                run_out = 0.0
                long_enough = run_in > start_seconds if strictly else run_in >= start_seconds
                if not in_event and long_enough:
                    in_event = True
                    events += 1
            else:
                run_out += point.seconds
                run_in = 0.0
                if in_event and run_out >= END_MINUTES * MINUTE:
                    in_event = False
    return events


def count_extended_hyper(points: Sequence[Point]) -> int:
    events = 0
    window = EXTENDED_HYPER_WINDOW * MINUTE
    for _, group in groupby(points, key=lambda p: p.segment):
        in_event = False
        run_out = 0.0
        recent: deque[tuple[float, float]] = deque()  # (end, seconds) of readings > 250
        above = 0.0
        for point in group:
            end = point.reading.at + point.seconds
            band = _band(point)
            if band == 4:
                recent.append((end, point.seconds))
                above += point.seconds
            while recent and recent[0][0] - recent[0][1] < end - window:
                above -= recent.popleft()[1]  # began before the 120 minutes ending here
            if in_event:
                run_out = run_out + point.seconds if band <= 2 else 0.0
                if run_out >= END_MINUTES * MINUTE:
                    in_event, run_out = False, 0.0
            elif above >= EXTENDED_HYPER_MINUTES * MINUTE:
                in_event, run_out = True, 0.0
                events += 1
    return events


def count_events(points: Sequence[Point]) -> EventCounts:
    start = START_MINUTES * MINUTE
    return EventCounts(
        hypo_level1=count_runs(points, lambda p: _band(p) <= 1, start),
        hypo_level2=count_runs(points, lambda p: _band(p) == 0, start),
        hypo_extended=count_runs(
            points, lambda p: _band(p) <= 1, EXTENDED_HYPO_MINUTES * MINUTE, strictly=True
        ),
        hyper_level1=count_runs(points, lambda p: _band(p) >= 3, start),
        hyper_level2=count_runs(points, lambda p: _band(p) == 4, start),
        hyper_extended=count_extended_hyper(points),
    )
