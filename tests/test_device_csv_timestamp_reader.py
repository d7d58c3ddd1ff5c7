"""TimestampReader (the per-hour fast path) reads every timestamp as parse_timestamp does.

Compared on random wall-clock times over years 1-9999 in zones with every kind of offset
change: daylight saving (both hemispheres, negative DST in Dublin), half-hour shifts (Lord
Howe), quarter-hour offsets (Chatham), local mean time before 1900, fixed offsets; the FHIR
text, the UTC key, the repeated-hour decision and the second pass (fold=1) must be equal,
and so must the error of a cell that is not a timestamp.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mappers.device_csv.timestamps import LocalStamp, TimestampReader, parse_timestamp

ZONES = [
    UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-14)),
    *(ZoneInfo(name) for name in (
        "Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Pacific/Chatham",
        "Asia/Kolkata", "Europe/Dublin", "America/St_Johns", "Africa/Casablanca",
        "Australia/Sydney", "America/Sao_Paulo",
    )),
]
STYLES = [
    ("%Y-%m-%dT%H:%M:%S", None), ("%Y-%m-%d %H:%M", None), ("%Y/%m/%d %H:%M:%S", None),
    ("%m-%d-%Y %I:%M %p", False), ("%d-%m-%Y %H:%M", True), ("%d.%m.%Y %H:%M:%S", True),
    ("%m/%d/%y %H:%M", False), ("%d/%m/%Y %I:%M:%S %p", True),
]


def _ambiguous(stamp) -> bool:
    if isinstance(stamp, LocalStamp):
        return stamp.zone_hour.ambiguous
    moment = stamp.moment
    return moment.replace(fold=1).utcoffset() != moment.utcoffset()


def _same(text: str, dayfirst: bool, zone) -> None:
    try:
        expected = parse_timestamp(text, dayfirst=dayfirst, zone=zone)
    except ValueError as exc:
        with pytest.raises(ValueError) as caught:
            TimestampReader(dayfirst=dayfirst, zone=zone).read(text)
        assert str(caught.value) == str(exc)
        return
    got = TimestampReader(dayfirst=dayfirst, zone=zone).read(text)
    assert (got.fhir(), got.key(), got.is_local_time()) == (
        expected.fhir(), expected.key(), expected.is_local_time()), text
    if expected.moment is not None and not expected.explicit_offset:
        assert _ambiguous(got) == _ambiguous(expected), text
        assert got.naive() == expected.naive()
        assert (got.second_pass().fhir(), got.second_pass().key()) == (
            expected.second_pass().fhir(), expected.second_pass().key()), text


@settings(max_examples=1500, deadline=None)
@given(
    moment=st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59)),
    zone=st.sampled_from(ZONES),
    style=st.sampled_from(STYLES),
)
def test_random_times_read_alike(moment: datetime, zone, style) -> None:
    pattern, dayfirst = style
    if "%y" in pattern and not 2000 <= moment.year < 2100:
        moment = moment.replace(year=2000 + moment.year % 100)
    _same(moment.strftime(pattern).replace(f"{moment.year}", f"{moment.year:04d}", 1),
          bool(dayfirst), zone)


@settings(max_examples=600, deadline=None)
@given(
    start=st.sampled_from([
        datetime(2024, 3, 31, 1), datetime(2024, 10, 27, 1), datetime(2024, 3, 10, 1),
        datetime(2024, 11, 3, 0), datetime(2024, 4, 7, 1), datetime(2024, 10, 6, 1),
        datetime(1911, 3, 10, 23), datetime(1883, 11, 18, 11), datetime(2024, 9, 29, 1),
    ]),
    minutes=st.integers(0, 240),
    seconds=st.integers(0, 59),
    zone=st.sampled_from(ZONES),
)
def test_times_around_offset_changes_read_alike(start, minutes, seconds, zone) -> None:
    moment = start + timedelta(minutes=minutes, seconds=seconds)
    _same(moment.strftime("%Y-%m-%d %H:%M:%S"), False, zone)


@pytest.mark.parametrize("text", [
    "", "  ", "2024-13-01 10:00", "2024-02-30 10:00", "2024-01-01 24:00", "2024-01-01 10:60",
    "2024-01-01 10:00:60", "01-01-2024 13:00 PM", "01-01-2024 0:30 AM", "0001-01-01 00:10",
    "9999-12-31 23:59", "2024-01-01 10:00+02:00", "2024-01-01T10:00:00Z", "20240101T1000",
    "2024-01-01", "31.02.2024", "99/99/99 99:99", "2024-01-01 10:00:00,5", "1/2/24 3:04 p.m.",
    "2024-01-01 10:00 UTC", "x2024-01-01 10:00",
])
@pytest.mark.parametrize("zone", [UTC, ZoneInfo("Europe/Paris"), timezone(timedelta(hours=5))])
def test_odd_cells_read_alike(text: str, zone) -> None:
    _same(text, True, zone)
    _same(text, False, zone)


def test_the_fast_path_is_taken_for_a_plain_local_time() -> None:
    stamp = TimestampReader(dayfirst=False, zone=ZoneInfo("Europe/Paris")).read(
        "01-15-2024 08:35 PM")
    assert isinstance(stamp, LocalStamp)
    assert (stamp.fhir(), stamp.key()) == ("2024-01-15T20:35:00+01:00", "20240115T193500Z")


def _same_sequence(texts: list[str], dayfirst: bool, zone) -> None:
    """One reader for a whole column, as a format uses it (its caches then come into play)."""
    reader = TimestampReader(dayfirst=dayfirst, zone=zone)
    for text in texts:
        try:
            expected = parse_timestamp(text, dayfirst=dayfirst, zone=zone)
        except ValueError as exc:
            with pytest.raises(ValueError) as caught:
                reader.read(text)
            assert str(caught.value) == str(exc), text
            continue
        got = reader.read(text)
        assert (got.fhir(), got.key(), got.is_local_time()) == (
            expected.fhir(), expected.key(), expected.is_local_time()), text
        if expected.moment is not None and not expected.explicit_offset:
            assert _ambiguous(got) == _ambiguous(expected), text
            assert (got.second_pass().fhir(), got.second_pass().key()) == (
                expected.second_pass().fhir(), expected.second_pass().key()), text


TAILS = ["", ":07", ":59", ":60", ":5", " PM", " am", ":30 P.M.", "Z", "+02:00", " UTC",
         ":30,25", "x", ":30:", " 13"]


@settings(max_examples=400, deadline=None)
@given(
    start=st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
    steps=st.lists(st.tuples(st.integers(0, 150), st.sampled_from(TAILS)), max_size=25),
    zone=st.sampled_from(ZONES),
    style=st.sampled_from(STYLES),
)
def test_columns_read_alike(start: datetime, steps, zone, style) -> None:
    pattern, dayfirst = style
    pattern = pattern.replace(":%S", "")  # the tails add seconds, or not
    texts = []
    moment = start
    for minutes, tail in steps:
        try:
            moment += timedelta(minutes=minutes)
        except OverflowError:
            break
        if "%y" in pattern and not 2000 <= moment.year < 2100:
            break
        text = moment.strftime(pattern).replace(f"{moment.year}", f"{moment.year:04d}", 1)
        texts.append(text + tail)  # some tails make it no timestamp at all
    _same_sequence(texts, bool(dayfirst), zone)


def test_a_column_across_the_paris_autumn_change() -> None:
    texts = [f"27-10-2024 {h:02}:{m:02}" for h in (1, 2, 2, 3) for m in range(0, 60, 7)]
    _same_sequence(texts + ["27-10-2024 02:61", "27-10-2024 02:05 PM", "27-10-2024 02:05Z"],
                   True, ZoneInfo("Europe/Paris"))
