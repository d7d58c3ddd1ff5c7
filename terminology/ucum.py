"""UCUM units this data uses: spelling normalisation, validation and conversion.

A small explicit table rather than a general UCUM engine: the warehouse sees a dozen
units, and the clinically important rules (mass <-> molar needs the analyte's molar mass;
HbA1c % and mmol/mol are different scales, not a unit change) are clearer as data than
as a grammar. Arithmetic is done on decimal fractions so conversions give the exact
decimal answer (10 mmol/L of glucose is exactly 180.156 mg/dL).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

UCUM_SYSTEM = "http://unitsofmeasure.org"
GLUCOSE_MOLAR_MASS = 180.156  # g/mol, C6H12O6
CREATININE_MOLAR_MASS = 113.12  # g/mol, for urine albumin/creatinine ratios


class UnitConversionError(ValueError):
    """Unknown unit, or units that cannot be converted (with the reason)."""


@dataclass(frozen=True, slots=True)
class UnitDef:
    code: str  # the UCUM code (case-sensitive form)
    kind: str  # the kind of quantity; conversion only happens inside one kind
    factor: Fraction  # how many canonical units one of this unit is
    display: str


# kind -> canonical UCUM code of that kind
CANONICAL = {
    "mass-concentration": "g/L",
    "substance-concentration": "mol/L",
    "percent": "%",
    "substance-fraction": "mmol/mol",
    "mass": "kg",
    "length": "m",
    "pressure": "mm[Hg]",
    "normalized-flow": "mL/min/{1.73_m2}",
    "mass-ratio": "mg/g",
    "mass-per-substance": "mg/mmol",
    "area-density": "kg/m2",
    "time": "s",
}

_UNITS: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    # code, kind, factor to the canonical unit (decimal string), display, extra spellings
    ("g/L", "mass-concentration", "1", "gram per liter", ()),
    ("g/dL", "mass-concentration", "10", "gram per deciliter", ()),
    ("mg/dL", "mass-concentration", "0.01", "milligram per deciliter", ("mg/100mL",)),
    ("mg/L", "mass-concentration", "0.001", "milligram per liter", ()),
    ("mol/L", "substance-concentration", "1", "mole per liter", ()),
    ("mmol/L", "substance-concentration", "0.001", "millimole per liter", ()),
    ("umol/L", "substance-concentration", "0.000001", "micromole per liter", ()),
    ("%", "percent", "1", "percent", ("percent",)),
    ("mmol/mol", "substance-fraction", "1", "millimole per mole", ()),
    ("kg", "mass", "1", "kilogram", ()),
    ("g", "mass", "0.001", "gram", ()),
    ("[lb_av]", "mass", "0.45359237", "pound", ("lb", "lbs")),
    ("m", "length", "1", "meter", ()),
    ("cm", "length", "0.01", "centimeter", ()),
    ("mm", "length", "0.001", "millimeter", ()),
    ("[in_i]", "length", "0.0254", "inch", ("in",)),
    # UCUM defines m[Hg] as 133.3220 kPa, so 1 mm[Hg] = 133.3220 Pa.
    ("mm[Hg]", "pressure", "1", "millimeter of mercury", ("mmHg", "mm Hg")),
    ("kPa", "pressure", str(Fraction(1000) / Fraction("133.3220")), "kilopascal", ()),
    (
        "mL/min/{1.73_m2}",
        "normalized-flow",
        "1",
        "milliliter per minute per 1.73 square meter",
        ("mL/min/1.73m2", "mL/min/1.73 m2", "mL/min/1,73m²", "mL/min/1.73m^2"),
    ),
    ("mg/g", "mass-ratio", "1", "milligram per gram", ()),
    ("mg/mmol", "mass-per-substance", "1", "milligram per millimole", ()),
    ("kg/m2", "area-density", "1", "kilogram per square meter", ("kg/m²", "kg/m^2")),
    ("s", "time", "1", "second", ("sec",)),
    ("min", "time", "60", "minute", ()),
    ("h", "time", "3600", "hour", ("hr",)),
    ("d", "time", "86400", "day", ("day", "days")),
)

UNITS: dict[str, UnitDef] = {
    code: UnitDef(code, kind, Fraction(factor), display)
    for code, kind, factor, display, _ in _UNITS
}


def _loose(text: str) -> str:
    """A spelling-insensitive key: case, spaces, micro signs, braces, ² and commas."""
    key = text.strip().replace("µ", "u").replace("μ", "u").replace("²", "2")
    key = key.replace("^", "").replace(",", ".").replace(" ", "").lower()
    for ch in "{}[]_":
        key = key.replace(ch, "")
    return key


def _build_aliases() -> dict[str, str]:
    aliases: dict[str, str] = {}
    for code, _kind, _factor, _display, extra in _UNITS:
        for spelling in (code, *extra):
            key = _loose(spelling)
            if aliases.setdefault(key, code) != code:
                raise RuntimeError(f"ambiguous unit spelling {spelling!r}")  # table bug
    return aliases


_ALIASES = _build_aliases()

# Cross-kind conversions that need the molar mass M (g/mol) of one substance:
# mass concentration / M = substance concentration (M of the measured substance);
# mass ratio (mg per g of X) * M / 1000 = mg per mmol of X (M of the denominator X,
# e.g. creatinine in albumin/creatinine ratios).
_MOLAR_BRIDGES: dict[tuple[str, str], tuple[str, Fraction]] = {
    ("mass-concentration", "substance-concentration"): ("divide", Fraction(1)),
    ("substance-concentration", "mass-concentration"): ("multiply", Fraction(1)),
    ("mass-ratio", "mass-per-substance"): ("multiply", Fraction(1, 1000)),
    ("mass-per-substance", "mass-ratio"): ("divide", Fraction(1, 1000)),
}


def normalize_unit(unit: str) -> str:
    """The UCUM code for a known spelling ("mg/dl" -> "mg/dL"); other input comes back
    stripped but unchanged, so `is_valid_unit(normalize_unit(u))` tells whether we know it."""
    return _ALIASES.get(_loose(unit), unit.strip())


def is_valid_unit(unit: str) -> bool:
    """True when `unit` is, exactly (UCUM is case-sensitive), a unit of the table."""
    return unit in UNITS


def unit_def(unit: str) -> UnitDef:
    code = normalize_unit(unit)
    try:
        return UNITS[code]
    except KeyError:
        raise UnitConversionError(f"unknown unit '{unit}'") from None


def unit_kind(unit: str) -> str:
    return unit_def(unit).kind


def _exact(number: float | int | str | Fraction) -> Fraction:
    # str() first: 7.2 means the decimal 7.2, not its nearest binary double.
    return number if isinstance(number, Fraction) else Fraction(str(number))


def convert(
    value: float, from_unit: str, to_unit: str, molar_mass: float | None = None
) -> float:
    """Convert `value` between units of one kind, or between mass and molar forms when
    `molar_mass` (g/mol) is given. Raises UnitConversionError otherwise."""
    source, target = unit_def(from_unit), unit_def(to_unit)
    amount = _exact(value) * source.factor
    if source.kind != target.kind:
        bridge = _MOLAR_BRIDGES.get((source.kind, target.kind))
        if bridge is None:
            raise UnitConversionError(
                f"cannot convert {source.code} ({source.kind}) to {target.code} ({target.kind})"
            )
        if molar_mass is None or molar_mass <= 0:
            raise UnitConversionError(
                f"converting {source.code} to {target.code} needs the molar mass (g/mol)"
            )
        operation, scale = bridge
        mass = _exact(molar_mass) * scale
        amount = amount / mass if operation == "divide" else amount * mass
    return float(amount / target.factor)


def canonical(value: float, unit: str) -> tuple[float, str]:
    """`value` expressed in the canonical unit of its kind (mg/dL -> g/L, mmol/L -> mol/L,
    cm -> m, g -> kg; %, mmol/mol, mm[Hg] and mL/min/{1.73_m2} stay)."""
    definition = unit_def(unit)
    target = CANONICAL[definition.kind]
    return float(_exact(value) * definition.factor / UNITS[target].factor), target


def glucose_mmol_per_l_to_mg_per_dl(value: float) -> float:
    return convert(value, "mmol/L", "mg/dL", molar_mass=GLUCOSE_MOLAR_MASS)


def glucose_mg_per_dl_to_mmol_per_l(value: float) -> float:
    return convert(value, "mg/dL", "mmol/L", molar_mass=GLUCOSE_MOLAR_MASS)


def hba1c_percent_to_mmol_mol(percent: float) -> float:
    """NGSP/DCCT % to IFCC mmol/mol by the IFCC-NGSP master equation (not a unit change):
    IFCC = (NGSP - 2.152) / 0.09148."""
    return float((_exact(percent) - Fraction("2.152")) / Fraction("0.09148"))


def hba1c_mmol_mol_to_percent(mmol_mol: float) -> float:
    """IFCC mmol/mol to NGSP/DCCT %: NGSP = 0.09148 * IFCC + 2.152."""
    return float(Fraction("0.09148") * _exact(mmol_mol) + Fraction("2.152"))


def load_ucum_units():
    """The unit table as a (fragment) code system, so $validate-code and $lookup work on
    units; UCUM itself is a grammar, so a unit outside the table is only unknown to us."""
    from terminology.codesystem import CodeSystemData, Concept

    system = CodeSystemData(
        url=UCUM_SYSTEM,
        name="UCUM",
        title="Unified Code for Units of Measure (units used by Diatabase)",
        version=None,
        language="en",
        content="fragment",
        publisher="Regenstrief Institute, Inc.",
    )
    for unit in UNITS.values():
        system.add(Concept(code=unit.code, display=unit.display,
                           properties={"kind": unit.kind, "canonical": CANONICAL[unit.kind]}))
    return system.finalize()
