"""What each prefix means as comparisons on stored index values, once for every backend.

Both storage backends (SQL over index tables, Mongo filters) must give `gt2024` the same
meaning; this module states it as data: a predicate is an OR of ANDs of `Bound`s on the
fields of an index entry (`low`/`high` for a DateEntry, `value` for a number or quantity),
possibly negated (`ne`). A backend translates Bounds into its own syntax, with the bound
values as bind parameters, and `matches` evaluates a predicate in memory (for tests, or a
backend without a query language).

Dates (search period [sL, sH), stored period [tL, tH), both half-open):
    eq  tL >= sL and tH <= sH      (the stored period lies within the searched one)
    ne  not eq
    gt  tH > sH                    (some of the stored period is after the searched one)
    lt  tL < sL                    (some of it is before)
    ge  gt or eq,  le  lt or eq
    sa  tL >= sH                   (starts after the searched period ends)
    eb  tH <= sL                   (ends before it starts)
    ap  overlaps the searched period widened by 10% of its distance to now

Numbers and quantities (stored value v, searched value x with precision range [sL, sH)):
    eq  sL <= v < sH               (implicit precision: 100 finds 99.7)
    ne  not eq
    gt/sa  v > x,  lt/eb  v < x,  ge  v >= x,  le  v <= x   (exact: precision not applied)
    ap  within 10% of x
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from fhir_server.search.values import DateValue, NumberValue, QuantityValue

Field = Literal["low", "high", "value"]
Operator = Literal["<", "<=", ">", ">="]


@dataclass(frozen=True, slots=True)
class Bound:
    field: Field
    op: Operator
    value: float

    def holds(self, entry: dict[str, float]) -> bool:
        actual = entry[self.field]
        if self.op == "<":
            return actual < self.value
        if self.op == "<=":
            return actual <= self.value
        if self.op == ">":
            return actual > self.value
        return actual >= self.value


@dataclass(frozen=True, slots=True)
class RangePredicate:
    """OR of ANDs of bounds; `negate` flips the whole (used by `ne`)."""

    any_of: tuple[tuple[Bound, ...], ...]
    negate: bool = False

    def matches(self, **entry: float) -> bool:
        result = any(all(bound.holds(entry) for bound in group) for group in self.any_of)
        return result != self.negate


def date_predicate(value: DateValue, now: float) -> RangePredicate:
    low, high = value.low, value.high
    within = (Bound("low", ">=", low), Bound("high", "<=", high))
    after = (Bound("high", ">", high),)
    before = (Bound("low", "<", low),)
    prefix = value.prefix
    if prefix in ("eq", "ne"):
        return RangePredicate((within,), negate=prefix == "ne")
    if prefix == "gt":
        return RangePredicate((after,))
    if prefix == "lt":
        return RangePredicate((before,))
    # ge / le: the stored period overlaps [value, +inf) / (-inf, value], as R4 words it
    # ("the range above the search value overlaps the target") and as HAPI answers it.
    if prefix == "ge":
        return RangePredicate(((Bound("high", ">", low),),))
    if prefix == "le":
        return RangePredicate(((Bound("low", "<", high),),))
    if prefix == "sa":
        return RangePredicate(((Bound("low", ">=", high),),))
    if prefix == "eb":
        return RangePredicate(((Bound("high", "<=", low),),))
    approx_low, approx_high = value.approximate_bounds(now)
    return RangePredicate(((Bound("low", "<", approx_high), Bound("high", ">", approx_low)),))


def number_predicate(value: NumberValue | QuantityValue) -> RangePredicate:
    exact = float(value.value)
    prefix = value.prefix
    if prefix in ("eq", "ne"):
        in_range = (Bound("value", ">=", float(value.low)), Bound("value", "<", float(value.high)))
        return RangePredicate((in_range,), negate=prefix == "ne")
    single: dict[str, Operator] = {
        "gt": ">",
        "sa": ">",
        "lt": "<",
        "eb": "<",
        "ge": ">=",
        "le": "<=",
    }
    if prefix in single:
        return RangePredicate(((Bound("value", single[prefix], exact),),))
    approx_low, approx_high = value.approximate_bounds()
    return RangePredicate(
        ((Bound("value", ">=", _float(approx_low)), Bound("value", "<=", _float(approx_high))),)
    )


def _float(number: Decimal) -> float:
    return float(number)
