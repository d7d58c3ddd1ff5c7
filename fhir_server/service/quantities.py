"""Canonical UCUM forms of quantities, for index extraction and for quantity searches.

Stored quantities get a canonical (value, unit) per kind (mass concentration in g/L, molar
concentration in mol/L, mass in kg, ...) so that `value-quantity=gt10|<ucum>|mmol/L` finds a
glucose stored in mg/dL. Mass and molar concentrations only convert into each other with the
analyte's molar mass: glucose Observations (a LOINC glucose code) get both forms.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from decimal import Decimal
from fractions import Fraction
from typing import Any

from terminology.ucum import (
    CANONICAL,
    GLUCOSE_MOLAR_MASS,
    UCUM_SYSTEM,
    UNITS,
    UnitConversionError,
    unit_def,
)
from terminology.uris import LOINC

MASS_CONCENTRATION = "mass-concentration"
SUBSTANCE_CONCENTRATION = "substance-concentration"
_GLUCOSE_MOLAR_MASS = Decimal(str(GLUCOSE_MOLAR_MASS))
_FORMS_CACHE_LIMIT = 65536


def _decimal(fraction: Fraction) -> Decimal:
    # The table's factors are decimal numbers (0.01, 0.001...): exact as Decimals. Decimal
    # arithmetic is C code, several times faster than Fraction on this hot path.
    return Decimal(fraction.numerator) / Decimal(fraction.denominator)


def _unit_factor(code: str) -> tuple[Decimal, str, str] | None:
    """(factor to the canonical unit, canonical unit, kind) of a UCUM code, None if unknown."""
    try:
        definition = unit_def(code)
    except UnitConversionError:
        return None
    target = CANONICAL[definition.kind]
    return _decimal(definition.factor / UNITS[target].factor), target, definition.kind


class UnitTable:
    """Unit look-ups memoised per spelling (a hot path of every Observation write)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[Decimal, str, str] | None] = {}

    def factor(self, system: str | None, code: str | None) -> tuple[Decimal, str, str] | None:
        # A unit code without a system is taken as UCUM, as search values `5.4||mg/dL` are.
        if not code or system not in (UCUM_SYSTEM, None):
            return None
        try:
            return self._cache[code]
        except KeyError:
            found = self._cache[code] = _unit_factor(code)
            return found


class QuantityCanonicalizer:
    """`canonicalize(value, system, code, resource)` for IndexExtractor."""

    def __init__(self, glucose_codes: Collection[str], units: UnitTable | None = None) -> None:
        self.glucose_codes = frozenset(glucose_codes)
        self.units = units or UnitTable()
        self._forms: dict[tuple, tuple[tuple[float, str], ...]] = {}

    def is_glucose(self, resource: Any) -> bool:
        if not isinstance(resource, dict) or resource.get("resourceType") != "Observation":
            return False
        code = resource.get("code")
        codings = code.get("coding") if isinstance(code, dict) else None
        if not isinstance(codings, list):
            return False
        return any(
            isinstance(c, dict) and c.get("system") == LOINC and c.get("code") in self.glucose_codes
            for c in codings
        )

    def __call__(
        self, value: Any, system: str | None, code: str | None, resource: Any
    ) -> list[tuple[float, str]]:
        found = self.units.factor(system, code)
        if found is None:
            return []
        factor, unit, kind = found
        glucose = kind in (MASS_CONCENTRATION, SUBSTANCE_CONCENTRATION) and self.is_glucose(
            resource
        )
        # a meter's readings repeat a few hundred values: each is converted once (the type is
        # part of the key because 1 == 1.0 == True as dict keys)
        key = (type(value), value, system, code, glucose)
        try:
            return list(self._forms[key])
        except KeyError:
            pass
        except TypeError:  # an unhashable value: not a number the caller will index anyway
            return []
        # Decimal arithmetic: 10 mmol/L and 180.156 mg/dL of glucose meet exactly, and the
        # search side (CanonicalQuery) computes the same way.
        amount = (value if type(value) is Decimal else Decimal(str(value))) * factor
        forms = [(float(amount), unit)]
        if glucose:
            if kind == MASS_CONCENTRATION:
                molar = amount / _GLUCOSE_MOLAR_MASS
                forms.append((float(molar), CANONICAL[SUBSTANCE_CONCENTRATION]))
            else:
                mass = amount * _GLUCOSE_MOLAR_MASS
                forms.append((float(mass), CANONICAL[MASS_CONCENTRATION]))
        if len(self._forms) >= _FORMS_CACHE_LIMIT:
            self._forms.clear()
        self._forms[key] = tuple(forms)
        return forms


class CanonicalQuery:
    """`storage.canonical_query(value, system, code)`: the search value in canonical units
    (value and precision bounds scaled alike), or None when the unit is not one we know."""

    def __init__(self, units: UnitTable | None = None) -> None:
        self.units = units or UnitTable()

    def __call__(self, value: Any, system: str | None, code: str | None) -> tuple[Any, str] | None:
        found = self.units.factor(system, code)
        if found is None:
            return None
        factor, unit, _kind = found
        scaled = replace(
            value, value=value.value * factor, low=value.low * factor, high=value.high * factor
        )
        return scaled, unit
