"""Prefix semantics stated once for every backend (ranges.py): each prefix against stored
date periods and stored numbers, evaluated in memory."""

from __future__ import annotations

import pytest

from fhir_server.search.dates import parse_date_period
from fhir_server.search.ranges import Bound, date_predicate, number_predicate
from fhir_server.search.values import parse_date, parse_number, parse_quantity

# stored value -> the prefixes for which a search on "2024-03" must match it
DATE_TABLE = {
    "2024-03-15": {"eq", "ge", "le", "ap"},
    "2024": {"ne", "gt", "lt", "ge", "le", "ap"},
    "2024-05-01": {"ne", "gt", "ge", "sa"},  # beyond the ap margin (9.2 days)
    "2024-04-05": {"ne", "gt", "ge", "sa", "ap"},
    "2024-02-10": {"ne", "lt", "le", "eb"},
    "2024-02-25": {"ne", "lt", "le", "eb", "ap"},
    "2024-04-01T00:00:00Z": {"ne", "gt", "ge", "sa", "ap"},
    "2024-02-29T23:59:59Z": {"ne", "lt", "le", "eb", "ap"},
    "2024-03-31T23:59:59.999Z": {"eq", "ge", "le", "ap"},
    "2024-03-01T00:30:00+01:00": {"ne", "lt", "le", "eb", "ap"},  # 2024-02-29T23:30Z
    "2020-01-01": {"ne", "lt", "le", "eb"},  # too far for ap
}
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
NOW = parse_date_period("2024-06-01").low  # ap margin: 10% of 92 days = 9.2 days


@pytest.mark.parametrize("stored", list(DATE_TABLE))
@pytest.mark.parametrize("prefix", PREFIXES)
def test_date_prefixes(stored, prefix):
    period = parse_date_period(stored)
    predicate = date_predicate(parse_date(f"{prefix}2024-03"), NOW)
    assert predicate.matches(low=period.low, high=period.high) == (prefix in DATE_TABLE[stored])


NUMBER_TABLE = {
    "99.7": {"eq", "lt", "le", "eb", "ap"},
    "100": {"eq", "ge", "le", "ap"},
    "100.5": {"ne", "gt", "ge", "sa", "ap"},
    "99.4": {"ne", "lt", "le", "eb", "ap"},
    "91": {"ne", "lt", "le", "eb", "ap"},
    "89": {"ne", "lt", "le", "eb"},
    "111": {"ne", "gt", "ge", "sa"},
}


@pytest.mark.parametrize("stored", list(NUMBER_TABLE))
@pytest.mark.parametrize("prefix", PREFIXES)
def test_number_prefixes(stored, prefix):
    predicate = number_predicate(parse_number(f"{prefix}100"))
    assert predicate.matches(value=float(stored)) == (prefix in NUMBER_TABLE[stored])


def test_quantity_predicate_uses_the_number():
    predicate = number_predicate(parse_quantity("gt10|http://unitsofmeasure.org|mmol/L"))
    assert predicate.any_of == ((Bound("value", ">", 10.0),),)
    assert predicate.matches(value=11.1) and not predicate.matches(value=10.0)


def test_ge_and_le_match_stored_periods_that_overlap_the_value() -> None:
    """A period from 20 Feb to 10 Mar overlaps March and starts before it: ge, le and lt
    match (R4: "the range above/below the search value overlaps the target"); eq and gt
    do not."""
    low = parse_date_period("2024-02-20").low
    high = parse_date_period("2024-03-10").high
    matches = {
        prefix: date_predicate(parse_date(f"{prefix}2024-03"), NOW).matches(low=low, high=high)
        for prefix in PREFIXES
    }
    assert matches["ge"] and matches["le"] and matches["lt"]
    assert not matches["eq"] and not matches["gt"]
