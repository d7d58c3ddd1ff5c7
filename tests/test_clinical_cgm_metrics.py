"""CGM metrics (fhir_server/clinical/metrics.py) against values computed independently:

- the oracle in tests/cgm_oracle.py (minute by minute, from the consensus texts) on
  synthetic traces built to hit every boundary, and plain counts over the rows of real
  device exports (tests/data/csv, read here with the csv module, not the mapper);
- iglu-python (GPL, a test-only dependency, never imported by the product) as a second
  oracle on the same traces, within the tolerances of the 2025 comparison of CGM tools
  (mean within 2 mg/dL, time in range within 2 points).

Where iglu and the consensus reading here differ, the test says so: iglu interpolates
gaps of up to 45 minutes (the project does not) and has no extended hyperglycaemia.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from fhir_server.clinical.glucose import MG_PER_MMOL, Reading, reading_from
from fhir_server.clinical.metrics import FLAG_SHORT, FLAG_SPARSE, compute
from fhir_server.clinical.period import reporting_period
from mappers.device_csv import to_bundle
from tests import cgm_oracle as oracle

PARIS = ZoneInfo("Europe/Paris")
DATA = Path(__file__).parent / "data" / "csv"
T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


def trace(values, step_min=5, unit="mg/dL", start=T0, sensor="Device/a", skip=()):
    """Readings every `step_min` minutes from `start` (indexes in `skip` left out)."""
    readings = []
    for i, value in enumerate(values):
        if i in skip or value is None:
            continue
        at = (start + timedelta(minutes=i * step_min)).timestamp()
        mg = value * MG_PER_MMOL if unit == "mmol/L" else value
        readings.append(Reading(at, float(value), unit, mg, "cgm", sensor))
    return readings


def as_oracle(readings, interval) -> oracle.Trace:
    return oracle.Trace([(int(r.at // 60), r.value, r.unit) for r in readings], interval)


def period_of(days=14, start="2024-05-01"):
    first = datetime.fromisoformat(start).date()
    return reporting_period(first.isoformat(), (first + timedelta(days=days - 1)).isoformat(),
                            "Europe/Paris", now=datetime(2030, 1, 1, tzinfo=UTC))


def check_against_oracle(readings, interval, period=None):
    metrics = compute(readings, period or period_of())
    expected = oracle.percents(as_oracle(readings, interval))
    for band, value in expected.items():
        assert metrics.ranges[band] == pytest.approx(value, abs=1e-9), band
    assert metrics.mean_mg_dl == pytest.approx(oracle.mean_mg_dl(as_oracle(readings, interval)))
    return metrics


# -- boundaries ------------------------------------------------------------------------------


def test_the_range_boundaries_in_mg_dl() -> None:
    values = [53, 54, 69, 70, 180, 181, 250, 251]
    metrics = check_against_oracle(trace(values), 5)
    # 54 is low (not very low), 70 and 180 in range, 250 high (not very high)
    assert metrics.ranges == pytest.approx(
        {"very_low": 12.5, "low": 25.0, "in_range": 25.0, "high": 25.0, "very_high": 12.5}
    )


def test_the_same_boundaries_in_mmol_l() -> None:
    values = [2.9, 3.0, 3.8, 3.9, 10.0, 10.1, 13.9, 14.0]
    metrics = check_against_oracle(trace(values, unit="mmol/L"), 5)
    # 10.0 mmol/L is 180.16 mg/dL but in range: each unit against its own bounds
    assert metrics.ranges == pytest.approx(
        {"very_low": 12.5, "low": 25.0, "in_range": 25.0, "high": 25.0, "very_high": 12.5}
    )


def test_mixed_units_share_one_mean_in_mg_dl() -> None:
    readings = trace([100, 200], unit="mg/dL") + trace(
        [5.5, 11.0], unit="mmol/L", start=T0 + timedelta(minutes=10)
    )
    metrics = check_against_oracle(readings, 5)
    assert metrics.mean_mg_dl == pytest.approx((100 + 200 + 16.5 * MG_PER_MMOL) / 4)
    assert metrics.gmi_percent == pytest.approx(3.31 + 0.02392 * metrics.mean_mg_dl)
    assert metrics.ranges["in_range"] == pytest.approx(50.0)


# -- time, gaps, sensors -------------------------------------------------------------------


def test_a_gap_is_not_interpolated_and_lowers_the_active_time() -> None:
    day = [120] * 288
    readings = trace(day * 14, start=datetime(2024, 4, 30, 22, 0, tzinfo=UTC),
                     skip=set(range(100, 124)))  # two hours lost
    metrics = check_against_oracle(readings, 5)
    assert metrics.readings == 14 * 288 - 24
    assert metrics.active_percent == pytest.approx(100 * (14 * 288 - 24) / (14 * 288))
    assert metrics.sufficient and metrics.days_with_data == 14


def test_sparse_and_short_periods_are_flagged() -> None:
    readings = trace([120] * 288 * 3, start=datetime(2024, 4, 30, 22, 0, tzinfo=UTC))
    metrics = compute(readings, period_of(14))
    assert FLAG_SPARSE in metrics.flags and not metrics.sufficient
    assert metrics.active_percent == pytest.approx(100 * 3 / 14)
    short = compute(readings, period_of(3))
    assert short.flags == (FLAG_SHORT,)


def test_two_overlapping_sensors_count_their_minutes_once() -> None:
    old = trace([100] * 36, sensor="Device/old")  # 08:00 - 10:55
    new = trace([200] * 36, sensor="Device/new", start=T0 + timedelta(hours=2, minutes=2))
    metrics = compute(old + new, period_of())
    # the old sensor keeps the timeline until it stops (10:55 + 5 min); the new one's
    # readings from 11:02 on are kept
    kept_new = [r for r in new if r.at >= (T0 + timedelta(hours=3)).timestamp()]
    assert metrics.readings == 36 + len(kept_new)
    assert metrics.intervals_min == {"Device/old": 5.0, "Device/new": 5.0}
    expected = oracle.percents(as_oracle(old + kept_new, 5))
    assert metrics.ranges["in_range"] == pytest.approx(expected["in_range"])


def test_a_daylight_saving_change_in_paris() -> None:
    # 2024-10-27: 03:00 CEST becomes 02:00 CET; the hour from 02:00 local comes twice
    start = datetime(2024, 10, 26, 22, 0, tzinfo=UTC)  # 00:00 local
    readings = trace([110] * (25 * 12), start=start)  # the 25 hours of that local day
    period = reporting_period("2024-10-27", "2024-10-27", "Europe/Paris",
                              now=datetime(2030, 1, 1, tzinfo=UTC))
    metrics = compute(readings, period)
    assert metrics.readings == 300  # the repeated hour is not taken for duplicates
    assert metrics.days_with_data == 1
    assert metrics.active_percent == pytest.approx(100.0)
    # spring: 2024-03-31 has 23 hours
    spring = trace([110] * (23 * 12), start=datetime(2024, 3, 30, 23, 0, tzinfo=UTC))
    period = reporting_period("2024-03-31", "2024-03-31", "Europe/Paris",
                              now=datetime(2030, 1, 1, tzinfo=UTC))
    metrics = compute(spring, period)
    assert metrics.readings == 276 and metrics.active_percent == pytest.approx(100.0)


# -- events --------------------------------------------------------------------------------

HYPO1 = oracle.below(70, 3.9)
HYPO2 = oracle.below(54, 3.0)
HYPER1 = oracle.above(180, 10.0)
HYPER2 = oracle.above(250, 13.9)


def event_trace(pattern: list[tuple[float, int]], step_min: int = 1, unit: str = "mg/dL"):
    values: list[float] = []
    for value, count in pattern:
        values += [value] * count
    return trace(values, step_min=step_min, unit=unit)


def events_of(readings, interval):
    t = as_oracle(readings, interval)
    return {
        "hypo_level1": oracle.events(t, HYPO1),
        "hypo_level2": oracle.events(t, HYPO2),
        "hypo_extended": oracle.events(t, HYPO1, start=120, strictly=True),
        "hyper_level1": oracle.events(t, HYPER1),
        "hyper_level2": oracle.events(t, HYPER2),
    }


def check_events(readings, interval, **expected):
    metrics = compute(readings, period_of())
    counted = {k: getattr(metrics.events, k) for k in events_of(readings, interval)}
    assert counted == events_of(readings, interval)
    for key, value in expected.items():
        assert getattr(metrics.events, key) == value, key
    return metrics


def test_a_15_minute_event_and_a_14_minute_non_event() -> None:
    check_events(event_trace([(100, 30), (60, 15), (100, 30)]), 1, hypo_level1=1)
    check_events(event_trace([(100, 30), (60, 14), (100, 30)]), 1, hypo_level1=0)
    check_events(event_trace([(100, 30), (50, 15), (100, 30)]), 1,
                 hypo_level1=1, hypo_level2=1)
    # 5-minute sensor: three readings stand for 15 minutes
    check_events(trace([100] * 6 + [65] * 3 + [100] * 6), 5, hypo_level1=1)
    check_events(trace([100] * 6 + [65] * 2 + [100] * 6), 5, hypo_level1=0)


def test_an_event_ends_after_15_minutes_above_not_14() -> None:
    one = event_trace([(100, 20), (60, 20), (90, 14), (60, 20), (90, 15), (60, 20), (100, 20)])
    # below 20, above 14 (the event goes on), below, above 15 (it ends), below 20: a second
    check_events(one, 1, hypo_level1=2)
    hyper = event_trace([(150, 20), (200, 20), (170, 14), (260, 20), (150, 30)])
    check_events(hyper, 1, hyper_level1=1, hyper_level2=1)


def test_extended_hypoglycaemia_needs_more_than_120_minutes() -> None:
    check_events(event_trace([(100, 10), (60, 121), (100, 20)]), 1, hypo_extended=1)
    check_events(event_trace([(100, 10), (60, 120), (100, 20)]), 1, hypo_extended=0)


def test_extended_hyperglycaemia_90_of_120_minutes() -> None:
    # 90 minutes above 250 within 120 (with 30 minutes at 230 inside), then 15 <= 180
    readings = event_trace([(150, 10), (260, 45), (230, 30), (260, 45), (150, 20)])
    assert compute(readings, period_of()).events.hyper_extended == 1
    readings = event_trace([(150, 10), (260, 44), (230, 31), (260, 45), (150, 20)])
    assert compute(readings, period_of()).events.hyper_extended == 0  # 89 of 120


def test_a_gap_ends_an_event() -> None:
    readings = trace([100] * 6 + [60] * 3 + [None] * 12 + [60] * 3 + [100] * 6)
    check_events(readings, 5, hypo_level1=2)


# -- real device exports -------------------------------------------------------------------


def dexcom_rows() -> list[tuple[datetime, float]]:
    text = (DATA / "dexcom-clarity" / "dexcom_clarity_g6_cgmquantify.csv").read_text("utf-8-sig")
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        if row["Event Type"] != "EGV":
            continue
        raw = row["Glucose Value (mg/dL)"]
        value = {"Low": 40.0, "High": 400.0}.get(raw) or float(raw)
        when = datetime.fromisoformat(row["Timestamp (YYYY-MM-DDThh:mm:ss)"]).replace(tzinfo=PARIS)
        rows.append((when, value))
    return rows


def mapped_readings(path: Path) -> list[Reading]:
    result = to_bundle(path.read_bytes(), patient="Patient/p1", timezone="Europe/Paris")
    resources = [e["resource"] for e in result.bundle["entry"]]
    return [r for r in map(reading_from, resources) if r is not None]


def test_a_real_dexcom_clarity_export() -> None:
    rows = dexcom_rows()
    readings = mapped_readings(DATA / "dexcom-clarity" / "dexcom_clarity_g6_cgmquantify.csv")
    first, last = rows[0][0].date(), rows[-1][0].date()
    period = reporting_period(first.isoformat(), last.isoformat(), "Europe/Paris",
                              now=datetime(2030, 1, 1, tzinfo=UTC))
    metrics = compute(readings, period)
    values = [v for _, v in rows]
    assert metrics.readings == len(values)
    assert metrics.intervals_min == {readings[0].sensor: 5.0}
    assert metrics.mean_mg_dl == pytest.approx(sum(values) / len(values), abs=0.5)
    in_range = 100 * sum(1 for v in values if 70 <= v <= 180) / len(values)
    assert metrics.ranges["in_range"] == pytest.approx(in_range, abs=0.5)
    assert metrics.days_with_data == len({when.date() for when, _ in rows})


def test_a_real_freestyle_libre_export() -> None:
    path = DATA / "freestyle-libre" / "libre_reader_cgmanalysis_raw.csv"
    cleaned = list(csv.DictReader(
        (DATA / "freestyle-libre" / "libre_reader_cgmanalysis_cleaned.csv").open()
    ))
    values = [float(row["sensorglucose"]) for row in cleaned]
    readings = [r for r in mapped_readings(path) if r.source == "cgm"]
    days = sorted({datetime.fromtimestamp(r.at, PARIS).date() for r in readings})
    period = reporting_period(days[0].isoformat(), days[-1].isoformat(), "Europe/Paris",
                              now=datetime(2030, 1, 1, tzinfo=UTC))
    metrics = compute(readings, period)
    assert metrics.intervals_min[readings[0].sensor] == 15.0
    assert metrics.mean_mg_dl == pytest.approx(sum(values) / len(values), abs=1.0)
    in_range = 100 * sum(1 for v in values if 70 <= v <= 180) / len(values)
    assert metrics.ranges["in_range"] == pytest.approx(in_range, abs=1.0)


# -- iglu-python, the second oracle ----------------------------------------------------------


def iglu_frame(readings) -> pd.DataFrame:
    return pd.DataFrame({
        "id": "s1",
        "time": [datetime.fromtimestamp(r.at, UTC).replace(tzinfo=None) for r in readings],
        "gl": [r.mg_dl for r in readings],
    })


def test_iglu_agrees_on_mean_and_time_in_range() -> None:
    iglu = pytest.importorskip("iglu_python")
    import random

    rng = random.Random(7)
    values = [max(40, min(400, 140 + 60 * rng.gauss(0, 1))) for _ in range(288 * 14)]
    readings = trace([round(v) for v in values], start=datetime(2024, 4, 30, 22, tzinfo=UTC))
    metrics = compute(readings, period_of())
    frame = iglu_frame(readings)
    assert metrics.mean_mg_dl == pytest.approx(float(iglu.mean_glu(frame)["mean"].iloc[0]), abs=2)
    tir = iglu.in_range_percent(frame, target_ranges=[[70, 180]])
    assert metrics.ranges["in_range"] == pytest.approx(float(tir.iloc[0, -1]), abs=2)
    gmi = float(iglu.gmi(frame)["GMI"].iloc[0])
    assert metrics.gmi_percent == pytest.approx(gmi, abs=0.05)
    cv = float(iglu.cv_glu(frame)["CV"].iloc[0])
    assert metrics.cv_percent == pytest.approx(cv, abs=0.5)


@pytest.mark.parametrize(
    "pattern",
    [
        [(100, 30), (60, 15), (100, 30)],
        [(100, 30), (60, 14), (100, 30)],
        [(100, 20), (60, 20), (90, 14), (60, 20), (90, 15), (60, 20), (100, 20)],
        [(100, 10), (50, 130), (100, 20)],
        [(150, 20), (200, 20), (170, 14), (260, 20), (150, 30)],
    ],
)
def test_iglu_counts_the_same_events(pattern) -> None:
    iglu = pytest.importorskip("iglu_python")
    readings = event_trace(pattern)
    metrics = compute(readings, period_of())
    summary = iglu.episode_calculation(iglu_frame(readings), dt0=1, tz="UTC")
    found = {
        (row["type"], row["level"]): int(row["total_episodes"])
        for _, row in summary.iterrows()
    }
    assert found[("hypo", "lv1")] == metrics.events.hypo_level1
    assert found[("hypo", "lv2")] == metrics.events.hypo_level2
    assert found[("hypo", "extended")] == metrics.events.hypo_extended
    assert found[("hyper", "lv1")] == metrics.events.hyper_level1
    assert found[("hyper", "lv2")] == metrics.events.hyper_level2


def test_iglu_interpolates_a_short_gap_where_the_consensus_reading_does_not() -> None:
    """Where the two differ, and why: iglu joins readings across a gap of up to 45
    minutes (interpolation), so two 10-minute lows around a 20-minute gap make one event
    for it; here the gap ends the run and neither low lasts 15 minutes."""
    iglu = pytest.importorskip("iglu_python")
    readings = trace([100] * 6 + [60] * 2 + [None] * 4 + [60] * 2 + [100] * 6)
    metrics = compute(readings, period_of())
    assert metrics.events.hypo_level1 == 0
    summary = iglu.episode_calculation(iglu_frame(readings), dt0=5, tz="UTC")
    lv1 = summary[(summary["type"] == "hypo") & (summary["level"] == "lv1")]
    assert int(lv1["total_episodes"].iloc[0]) == 1
