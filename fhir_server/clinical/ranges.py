"""Glucose ranges and targets (international consensus on Time in Range, Battelino et al.,
Diabetes Care 2019;42:1593-1603).

Ranges: very low < 54 mg/dL (< 3.0 mmol/L), low 54-69 (3.0-3.8), in range 70-180
(3.9-10.0), high 181-250 (10.1-13.9), very high > 250 (> 13.9). A value is classed in
its own unit against that unit's bounds: the consensus gives both tables, and 10.0 mmol/L
(180.16 mg/dL) is in range. Pregnancy (type 1) narrows the range to 63-140 mg/dL
(3.5-7.8 mmol/L).
"""

from __future__ import annotations

from dataclasses import dataclass

from fhir_server.clinical.glucose import Reading

BANDS = ("very_low", "low", "in_range", "high", "very_high")


@dataclass(frozen=True, slots=True)
class Bounds:
    """Lower bound of low, in range, high, very high; in mg/dL and in mmol/L. A value is
    in a band when it is >= the band's lower bound (very low: below `low`); the upper
    bounds of in range and high are inclusive (180, 250)."""

    mg_dl: tuple[float, float, float, float]
    mmol_l: tuple[float, float, float, float]

    def band(self, reading: Reading) -> int:
        """0 very low, 1 low, 2 in range, 3 high, 4 very high."""
        low, in_range, high, very_high = self.mmol_l if reading.unit == "mmol/L" else self.mg_dl
        v = reading.value
        if v < low:
            return 0
        if v < in_range:
            return 1
        if v <= high:
            return 2
        if v <= very_high:
            return 3
        return 4


STANDARD = Bounds((54, 70, 180, 250), (3.0, 3.9, 10.0, 13.9))
PREGNANCY = Bounds((54, 63, 140, 250), (3.0, 3.5, 7.8, 13.9))


@dataclass(frozen=True, slots=True)
class Target:
    """Consensus targets for one population: percent of time, `>` for in range, `<` for
    the others; None where the consensus sets none."""

    in_range_above: float
    below_low_under: float | None  # time < 70 (< 63 in pregnancy), level 1 + level 2
    very_low_under: float | None  # time < 54
    above_high_under: float | None  # time > 180 (> 140), high + very high
    very_high_under: float | None  # time > 250
    bounds: Bounds = STANDARD


TARGETS = {
    "general": Target(70, 4, 1, 25, 5),
    "older": Target(50, 1, None, 50, 10),  # older / high-risk
    "pregnancy": Target(70, 4, 1, 25, None, PREGNANCY),
}
POPULATIONS = tuple(TARGETS)
CV_TARGET = 36.0  # coefficient of variation, percent (<= 36 % is stable)
