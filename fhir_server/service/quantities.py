"""Canonical UCUM forms of quantities, for index extraction and for quantity searches.

Stored quantities get a canonical (value, unit) per kind (mass concentration in g/L, molar
concentration in mol/L, mass in kg, ...: see terminology/ucum.py) so that
`value-quantity=gt10|<ucum>|mmol/L` finds a glucose stored in mg/dL. What UCUM cannot say
is added here, per analyte, where the project knows it:
- mass and molar concentrations convert into each other only with the analyte's molar
  mass: glucose Observations (a LOINC glucose code) get both forms;
- HbA1c in % (NGSP) and in mmol/mol (IFCC) are two scales, related by the IFCC-NGSP
  master equation, not by a unit factor: HbA1c Observations get both forms.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from decimal import Decimal
from typing import Any

from fhir_server.search.errors import SearchError
from terminology.ucum import (
    CANONICAL,
    GLUCOSE_MOLAR_MASS,
    UCUM_SYSTEM,
    UnitConversionError,
    UnitDef,
    hba1c_mmol_mol_to_percent_exact,
    hba1c_percent_to_mmol_mol_exact,
    is_valid_unit,
    normalize_unit,
    unit_def,
)
from terminology.uris import LOINC

MASS_CONCENTRATION = "mass-concentration"
SUBSTANCE_CONCENTRATION = "substance-concentration"
NUMBER = "number"  # % among others
SUBSTANCE_FRACTION = "substance-fraction"  # mmol/mol among others
_GLUCOSE_MOLAR_MASS = Decimal(str(GLUCOSE_MOLAR_MASS))
_FORMS_CACHE_LIMIT = 65536
GLUCOSE, HBA1C = "glucose", "hba1c"


class UnitTable:
    """Unit look-ups memoised per spelling (a hot path of every Observation write)."""

    def __init__(self) -> None:
        self._cache: dict[str, UnitDef | None] = {}

    def factor(self, system: str | None, code: str | None) -> UnitDef | None:
        """The unit's definition; None outside UCUM or for a code UCUM cannot convert.
        A unit code without a system is taken as UCUM, as search values `5.4||mg/dL` are."""
        if not code or system not in (UCUM_SYSTEM, None):
            return None
        try:
            return self._cache[code]
        except KeyError:
            try:
                found = unit_def(code)
            except UnitConversionError:
                found = None
            self._cache[code] = found
            return found


class QuantityCanonicalizer:
    """`canonicalize(value, system, code, resource)` for IndexExtractor."""

    def __init__(
        self,
        glucose_codes: Collection[str],
        units: UnitTable | None = None,
        hba1c_codes: Collection[str] = (),
    ) -> None:
        self.glucose_codes = frozenset(glucose_codes)
        self.hba1c_codes = frozenset(hba1c_codes)
        self.units = units or UnitTable()
        self._forms: dict[tuple, tuple[tuple[float, str], ...]] = {}

    def analyte(self, resource: Any, kind: str) -> str | None:
        """GLUCOSE or HBA1C when the resource is an Observation of one (by LOINC code) and
        the unit's kind is one that analyte has a second form for."""
        if kind in (MASS_CONCENTRATION, SUBSTANCE_CONCENTRATION):
            codes, name = self.glucose_codes, GLUCOSE
        elif kind in (NUMBER, SUBSTANCE_FRACTION) and self.hba1c_codes:
            codes, name = self.hba1c_codes, HBA1C
        else:
            return None
        if not isinstance(resource, dict) or resource.get("resourceType") != "Observation":
            return None
        code = resource.get("code")
        codings = code.get("coding") if isinstance(code, dict) else None
        if not isinstance(codings, list):
            return None
        found = any(
            isinstance(c, dict) and c.get("system") == LOINC and c.get("code") in codes
            for c in codings
        )
        return name if found else None

    def is_glucose(self, resource: Any) -> bool:
        return self.analyte(resource, MASS_CONCENTRATION) == GLUCOSE

    def __call__(
        self, value: Any, system: str | None, code: str | None, resource: Any
    ) -> list[tuple[float, str]]:
        unit = self.units.factor(system, code)
        if unit is None:
            return []
        analyte = self.analyte(resource, unit.kind)
        # a meter's readings repeat a few hundred values: each is converted once (the type is
        # part of the key because 1 == 1.0 == True as dict keys)
        key = (type(value), value, system, code, analyte)
        try:
            return list(self._forms[key])
        except KeyError:
            pass
        except TypeError:  # an unhashable value: not a number the caller will index anyway
            return []
        # Decimal arithmetic: 10 mmol/L and 180.156 mg/dL of glucose meet exactly, and the
        # search side (CanonicalQuery) computes the same way.
        amount = unit.to_canonical(value if type(value) is Decimal else Decimal(str(value)))
        forms = [(float(amount), unit.canonical)]
        if analyte == GLUCOSE:
            if unit.kind == MASS_CONCENTRATION:
                molar = amount / _GLUCOSE_MOLAR_MASS
                forms.append((float(molar), CANONICAL[SUBSTANCE_CONCENTRATION]))
            else:
                mass = amount * _GLUCOSE_MOLAR_MASS
                forms.append((float(mass), CANONICAL[MASS_CONCENTRATION]))
        elif analyte == HBA1C:
            if unit.kind == NUMBER:  # canonical: %
                ifcc = hba1c_percent_to_mmol_mol_exact(amount)
                forms.append((float(ifcc), CANONICAL[SUBSTANCE_FRACTION]))
            else:  # canonical: mmol/mol
                ngsp = hba1c_mmol_mol_to_percent_exact(amount)
                forms.append((float(ngsp), CANONICAL[NUMBER]))
        if len(self._forms) >= _FORMS_CACHE_LIMIT:
            self._forms.clear()
        self._forms[key] = tuple(forms)
        return forms


class CanonicalQuery:
    """`storage.canonical_query(value, system, code)`: the search value in canonical units
    (value and precision bounds converted alike), or None when it is to be compared as
    written (no unit, another system than UCUM, or a code without a system that is not
    UCUM and so may be a unit's text). A UCUM-system code that is not valid UCUM is a
    SearchError (400)."""

    def __init__(self, units: UnitTable | None = None) -> None:
        self.units = units or UnitTable()

    def __call__(self, value: Any, system: str | None, code: str | None) -> tuple[Any, str] | None:
        if system == UCUM_SYSTEM and code and not is_valid_unit(code):
            raise SearchError(unit_problem(code))
        unit = self.units.factor(system, code)
        if unit is None:  # valid UCUM that cannot be converted ([pH]): compared as written
            return None
        scaled = replace(
            value,
            value=unit.to_canonical(value.value),
            low=unit.to_canonical(value.low),
            high=unit.to_canonical(value.high),
        )
        return scaled, unit.canonical


def unit_problem(code: str) -> str:
    """Why a UCUM-system unit code cannot be searched (the message of a 400)."""
    if is_valid_unit(code):
        return f"UCUM unit '{code}' cannot be compared"
    hint = normalize_unit(code)
    if hint != code and is_valid_unit(hint):
        return f"'{code}' is not a valid UCUM unit (did you mean '{hint}'?)"
    return f"'{code}' is not a valid UCUM unit"
