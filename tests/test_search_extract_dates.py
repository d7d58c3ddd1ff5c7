"""The extractor's fast date parser must give exactly the periods of the shared
`dates.parse_date_period` that the query side uses, or searches would miss at boundaries."""

from __future__ import annotations

import random

import pytest

from fhir_server.search.dates import InvalidDate, parse_date_period
from fhir_server.search.fast_dates import date_period
from fhir_server.search.types import DATE_MAX


def reference(text: str) -> tuple[float, float] | None:
    try:
        period = parse_date_period(text)
    except InvalidDate:
        return None
    return period.low, period.high


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024", (1704067200.0, 1735689600.0)),
        ("2024-02", (1706745600.0, 1709251200.0)),
        ("2024-12", (1733011200.0, 1735689600.0)),
        ("2024-02-29", (1709164800.0, 1709251200.0)),
        ("2024-03-05T10:00", (1709632800.0, 1709632860.0)),
        ("2024-03-05T10:00:00+02:00", (1709625600.0, 1709625601.0)),
        ("2024-03-05T08:00:00Z", (1709625600.0, 1709625601.0)),
        ("1944-11-17", (-792806400.0, -792720000.0)),
        ("9999", (253370764800.0, DATE_MAX)),
        ("9999-12", (253399622400.0, DATE_MAX)),
    ],
)
def test_known_periods(text, expected):
    assert date_period(text) == expected
    assert reference(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "0000",
        "2023-02-29",
        "2024-13",
        "2024-00-10",
        "2024-03-05T24:00:00Z",
        "2024-03-05T10:60:00Z",
        "2024-03-05T10:00:60Z",
        "2024-03-05T10:00:00+15:00",
        "2024-03-05T10:00:00+14:30",
        "2024-03-05T10:00:00.Z",
        "2024-03-05T10",
        "2024-3-5",
        "20240305",
        " 2024",
        "",
    ],
)
def test_invalid_dates(text):
    assert date_period(text) is None
    assert reference(text) is None


def test_non_strings_are_not_dates():
    assert date_period(2024) is None  # type: ignore[arg-type]
    assert date_period(None) is None  # type: ignore[arg-type]


def test_random_dates_agree_with_the_shared_parser():
    generator = random.Random(20240305)
    zones = ["", "Z", "+01:00", "-05:30", "+14:00", "-14:00", "+00:00"]
    for _ in range(3000):
        year = generator.randint(1, 9999)
        month = generator.randint(1, 12)
        day = generator.randint(1, 31)  # invalid days included on purpose
        hour, minute, second = (
            generator.randint(0, 23),
            generator.randint(0, 59),
            generator.randint(0, 59),
        )
        zone = generator.choice(zones)
        digits = "".join(generator.choice("0123456789") for _ in range(generator.randint(1, 9)))
        text = generator.choice(
            [
                f"{year:04d}",
                f"{year:04d}-{month:02d}",
                f"{year:04d}-{month:02d}-{day:02d}",
                f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}{zone}",
                f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}{zone}",
                f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
                f".{digits}{zone}",
            ]
        )
        assert date_period(text) == reference(text), text
