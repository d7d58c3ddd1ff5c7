"""UCUM units: validation, conversion and canonical forms, through a UCUM parser.

`ucumvert` parses the full UCUM grammar (case-sensitive atoms, prefixes, exponents,
annotations, `10*3`, `/min`) into `pint` quantities, and pint knows the magnitudes. This
module adds what UCUM leaves to its user, for clinical data:

- Exact decimals. pint computes in binary floats (mg/dL arrives as 0.009999999999999998
  kg/m3); each unit's factor to SI is rounded to 15 significant digits (UCUM's own
  definitions have fewer) and the arithmetic is done on Decimals, so that 10 mmol/L of
  glucose is exactly 180.156 mg/dL and a stored and a searched value meet exactly.
- Kinds. UCUM commensurability is dimensional analysis, under which HbA1c in % (NGSP) and
  in mmol/mol (IFCC) would compare as 0.07 and 0.053. Dimensionless units are therefore
  kept apart by what they are a ratio of: amounts of substance (mmol/mol), masses (mg/g),
  or nothing (%, 1, 10*3, {score}); and UCUM's arbitrary units ([IU], [arb'U]...) compare
  only with themselves, as UCUM says. Mass and molar concentrations are different kinds:
  converting between them needs the analyte's molar mass (`convert(molar_mass=...)`).
- Canonical units. Each kind Diatabase indexed before (g/L, mol/L, kg, m, mm[Hg], %...)
  keeps its canonical unit, so quantity index rows written by earlier versions stay valid;
  other kinds use SI base units (`K`, `m-3`, `mol.s-1.m-3`...).
- Lenient spellings (`mg/dl` -> `mg/dL`, `mmHg` -> `mm[Hg]`, `µmol/l` -> `umol/L`) for
  data typed by hand or sent by devices (`normalize_unit`).
- pint's mm[Hg] is the conventional 133.322387415 Pa; UCUM defines m[Hg] as 133.3220 kPa,
  which is what this registry uses.

Parsing a unit costs 0.5-5 ms (the registry itself about 0.5 s, built on first use);
`unit_def` remembers every code it has seen, so a hot path pays a dict look-up.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from decimal import Context, Decimal
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

UCUM_SYSTEM = "http://unitsofmeasure.org"
GLUCOSE_MOLAR_MASS = 180.156  # g/mol, C6H12O6
CREATININE_MOLAR_MASS = 113.12  # g/mol, for urine albumin/creatinine ratios
# HbA1c, IFCC-NGSP master equation: NGSP % = 0.09148 * IFCC mmol/mol + 2.152
_NGSP_SLOPE = Decimal("0.09148")
_NGSP_INTERCEPT = Decimal("2.152")

_SIGNIFICANT = Context(prec=15)
_MEMO_LIMIT = 4096  # distinct unit codes remembered (a warehouse sees a few hundred)


class UnitConversionError(ValueError):
    """Unknown unit, or units that cannot be converted (with the reason)."""


class InvalidUnitError(UnitConversionError):
    """Not a valid UCUM expression."""


@dataclass(frozen=True, slots=True)
class UnitDef:
    """One valid UCUM code: `value * si_factor + si_offset` is its value in SI base units
    (the offset is 0 except for Cel and [degF]); the `canonical` unit of its `kind` has its
    own pair. Converting through SI with factors that are exact decimals keeps decimal
    answers exact (120 mm[Hg] is 15.99864 kPa, not 15.998639999999993)."""

    code: str
    kind: str
    canonical: str
    si_factor: Decimal
    si_offset: Decimal
    canonical_si_factor: Decimal
    canonical_si_offset: Decimal
    display: str

    def to_si(self, value: Decimal) -> Decimal:
        return value * self.si_factor + self.si_offset

    def from_si(self, value: Decimal) -> Decimal:
        return (value - self.si_offset) / self.si_factor

    def to_canonical(self, value: Decimal) -> Decimal:
        if self.si_factor == self.canonical_si_factor and not (
            self.si_offset or self.canonical_si_offset
        ):
            return value  # the canonical unit itself, or one of the same size
        si = value * self.si_factor + self.si_offset
        return (si - self.canonical_si_offset) / self.canonical_si_factor

    def from_canonical(self, value: Decimal) -> Decimal:
        return self.from_si(value * self.canonical_si_factor + self.canonical_si_offset)


# The kinds Diatabase indexed before this module used a UCUM parser, by dimension (or, for
# ratios, by what they are a ratio of): their names and canonical units stay as they were.
_DIMENSION_KINDS: dict[tuple, tuple[str, str]] = {
    (("[length]", -3), ("[mass]", 1)): ("mass-concentration", "g/L"),
    (("[length]", -3), ("[substance]", 1)): ("substance-concentration", "mol/L"),
    (("[mass]", 1),): ("mass", "kg"),
    (("[length]", 1),): ("length", "m"),
    (("[length]", -1), ("[mass]", 1), ("[time]", -2)): ("pressure", "mm[Hg]"),
    # mL/min and mL/min/{1.73_m2} alike: UCUM annotations do not change a unit.
    (("[length]", 3), ("[time]", -1)): ("volume-flow", "mL/min/{1.73_m2}"),
    (("[mass]", 1), ("[substance]", -1)): ("mass-per-substance", "mg/mmol"),
    (("[length]", -2), ("[mass]", 1)): ("area-density", "kg/m2"),
    (("[time]", 1),): ("time", "s"),
    (("[temperature]", 1),): ("temperature", "K"),
}
_RATIO_KINDS: dict[tuple, tuple[str, str]] = {
    (): ("number", "%"),
    (("[substance]", 1),): ("substance-fraction", "mmol/mol"),
    (("[mass]", 1),): ("mass-ratio", "mg/g"),
}
CANONICAL = {kind: unit for kind, unit in (*_DIMENSION_KINDS.values(), *_RATIO_KINDS.values())}
_SI_SYMBOLS = {
    "meter": "m", "kilogram": "kg", "second": "s", "mole": "mol", "kelvin": "K",
    "ampere": "A", "candela": "cd", "radian": "rad", "bit": "bit", "count": "1",
}

# Spellings met in the wild -> the UCUM code (looked up after _loose); a valid UCUM code
# that is not listed is kept as written.
_SPELLINGS: dict[str, tuple[str, ...]] = {
    "mg/dL": ("mg/100mL",),
    "g/dL": (),
    "g/L": (),
    "mg/L": (),
    "mol/L": (),
    "mmol/L": (),
    "umol/L": (),
    "%": ("percent",),
    "mmol/mol": (),
    "kg": (),
    "g": (),
    "[lb_av]": ("lb", "lbs"),
    "m": (),
    "cm": (),
    "mm": (),
    "[in_i]": ("in",),
    "mm[Hg]": ("mmHg", "mm Hg"),
    "kPa": (),
    "mL/min/{1.73_m2}": ("mL/min/1.73m2", "mL/min/1.73 m2", "mL/min/1,73m²", "mL/min/1.73m^2"),
    "mg/g": (),
    "mg/mmol": (),
    "kg/m2": ("kg/m²", "kg/m^2"),
    "s": ("sec",),
    "min": (),
    "h": ("hr",),
    "d": ("day", "days"),
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
    for code, extra in _SPELLINGS.items():
        for spelling in (code, *extra):
            key = _loose(spelling)
            if aliases.setdefault(key, code) != code:
                raise RuntimeError(f"ambiguous unit spelling {spelling!r}")  # table bug
    return aliases


_ALIASES = _build_aliases()


class _Engine:
    """The pint registry with UCUM's definitions and the UCUM parser (built once)."""

    def __init__(self) -> None:
        import pint
        import ucumvert
        from ucumvert import UcumToPintTransformer, get_ucum_parser
        from ucumvert.xml_util import get_units_with_full_definition

        registry = pint.UnitRegistry(on_redefinition="ignore", cache_folder=None)
        registry.load_definitions(Path(ucumvert.__file__).parent / "pint_ucum_defs.txt")
        registry.define("meter_Hg = 133.3220 * kilopascal")  # UCUM's value (see above)
        self.registry = registry
        self.parser = get_ucum_parser()
        self.transformer = UcumToPintTransformer(ureg=registry)
        self.arbitrary = frozenset(
            u.code_cs for u in get_units_with_full_definition() if u.is_arbitrary
        )
        # Neither the parser nor pint's caches are documented as thread-safe, and a code is
        # parsed once per process (then remembered): one at a time.
        self.lock = threading.RLock()

    def tree(self, code: str) -> Any:
        """The parse tree of a UCUM code; InvalidUnitError if it is not one."""
        from ucumvert import parse_ucum

        try:
            with self.lock:
                return parse_ucum(code, self.parser)
        except Exception as error:  # lark's errors: not UCUM
            raise InvalidUnitError(f"'{code}' is not a valid UCUM unit") from error

    def quantity(self, code: str) -> Any:
        tree = self.tree(code)
        try:
            with self.lock:
                return self.transformer.transform(tree)
        except Exception as error:  # valid UCUM that pint cannot model ([pH], Cel/h)
            raise UnitConversionError(f"'{code}' cannot be converted to other units") from error


_engine: _Engine | None = None
_engine_lock = threading.Lock()
_memo: dict[str, UnitDef | UnitConversionError] = {}


def _get_engine() -> _Engine:
    global _engine
    if _engine is None:
        with _engine_lock:
            if _engine is None:
                _engine = _Engine()
    return _engine


def _decimal(number: float) -> Decimal:
    # pint's binary float rounded to 15 significant digits: 0.009999999999999998 -> 0.01
    return _SIGNIFICANT.create_decimal_from_float(float(number)).normalize()


_BRACKETED = re.compile(r"\[[^\]]*\]")


def _dimensions(container: Any) -> tuple:
    return tuple(sorted(dict(container).items()))


def _dimension_text(dimension: tuple) -> str:
    return ".".join(f"{name}{exponent:g}" for name, exponent in dimension)


def _si_symbol(units: Any) -> str:
    parts = []
    for name, exponent in sorted(units._units.items()):
        symbol = _SI_SYMBOLS.get(name, name)
        parts.append(symbol if exponent == 1 else f"{symbol}{exponent:g}")
    return ".".join(parts) or "1"


def _kind(engine: _Engine, code: str, quantity: Any) -> tuple[str, str | None, str]:
    """(kind, its canonical UCUM unit or None for SI base units, a suffix naming what the
    SI base units alone do not say: a ratio's terms, arbitrary atoms)."""
    dimension = _dimensions(quantity.dimensionality)
    arbitrary = sorted({a.upper() for a in _BRACKETED.findall(code) if a in engine.arbitrary})
    if arbitrary:  # UCUM: arbitrary units compare with nothing but themselves
        return f"arbitrary {'.'.join(arbitrary)}", None, ".".join(arbitrary)
    if dimension:
        kind, unit = _DIMENSION_KINDS.get(dimension, (f"{_dimension_text(dimension)}", None))
        return kind, unit, ""
    from pint.util import UnitsContainer

    terms = quantity.units._units
    numerator = engine.registry.Unit(UnitsContainer({u: e for u, e in terms.items() if e > 0}))
    ratio_of = _dimensions(numerator.dimensionality)
    if ratio_of in _RATIO_KINDS:
        kind, unit = _RATIO_KINDS[ratio_of]
        return kind, unit, ""
    text = _dimension_text(ratio_of)
    return f"ratio of {text}", None, f"{{{text}/{text}}}"


def _si(engine: _Engine, code: str, quantity: Any) -> tuple[Decimal, Decimal, Any]:
    """(factor, offset, SI base units) of a code: value * factor + offset is in SI."""
    make = engine.registry.Quantity
    try:
        one = make(1, quantity.units).to_base_units()
        zero = make(0, quantity.units).to_base_units().magnitude
    except Exception as error:  # pint refuses (an offset unit in a product)
        raise UnitConversionError(f"'{code}' cannot be converted to other units") from error
    # `quantity.magnitude` is the code's own number (10*3 parses as 1 of the unit _10**3,
    # 4.h as 4 hours): part of the factor
    if zero:  # Cel, [degF]: the size of a degree, from pint's delta unit (one - zero
        # would lose digits to the offset)
        (name, _), = quantity.units._units.items()
        one = make(1, f"delta_{name}").to_base_units()
    factor = _decimal(one.magnitude * quantity.magnitude)
    return factor, _decimal(zero), one.units


def _define(code: str) -> UnitDef:
    engine = _get_engine()
    with engine.lock:
        return _define_locked(engine, code)


def _define_locked(engine: _Engine, code: str) -> UnitDef:
    quantity = engine.quantity(code)
    kind, canonical, suffix = _kind(engine, code, quantity)
    factor, offset, base_units = _si(engine, code, quantity)
    if canonical is None:
        parts = (suffix, _si_symbol(base_units))
        canonical = ".".join(part for part in parts if part not in ("", "1")) or "1"
        canonical_factor, canonical_offset = Decimal(1), Decimal(0)
    else:
        canonical_factor, canonical_offset, _ = _si(
            engine, canonical, engine.quantity(canonical)
        )
    return UnitDef(code, kind, canonical, factor, offset, canonical_factor, canonical_offset,
                   str(quantity.units))


def unit_def(unit: str) -> UnitDef:
    """The definition of a UCUM code, or of a lenient spelling of one (`mmHg`)."""
    found = _memo.get(unit)
    if found is None:
        code = normalize_unit(unit)
        try:
            found = _define(code)
        except UnitConversionError as error:
            found = error
        if len(_memo) >= _MEMO_LIMIT:
            _memo.clear()
        _memo[unit] = found
    if isinstance(found, UnitConversionError):
        raise found
    return found


def normalize_unit(unit: str) -> str:
    """The UCUM code for a known spelling ("mg/dl" -> "mg/dL", "mmHg" -> "mm[Hg]"); other
    input comes back stripped but unchanged."""
    return _ALIASES.get(_loose(unit), unit.strip())


@lru_cache(maxsize=_MEMO_LIMIT)
def is_valid_unit(unit: str) -> bool:
    """True when `unit` is, exactly (UCUM is case-sensitive), a valid UCUM expression."""
    try:
        _get_engine().tree(unit)
    except InvalidUnitError:
        return False
    return True


def unit_kind(unit: str) -> str:
    return unit_def(unit).kind


def _exact(number: float | int | str | Fraction | Decimal) -> Decimal:
    # str() first: 7.2 means the decimal 7.2, not its nearest binary double.
    if isinstance(number, Decimal):
        return number
    if isinstance(number, Fraction):
        return Decimal(number.numerator) / Decimal(number.denominator)
    return Decimal(str(number))


# Cross-kind conversions that need the molar mass M (g/mol) of one substance:
# mass concentration / M = substance concentration (M of the measured substance);
# mass ratio (mg per g of X) * M / 1000 = mg per mmol of X (M of the denominator X,
# e.g. creatinine in albumin/creatinine ratios). In the kinds' canonical units.
_MOLAR_BRIDGES: dict[tuple[str, str], tuple[str, Decimal]] = {
    ("mass-concentration", "substance-concentration"): ("divide", Decimal(1)),
    ("substance-concentration", "mass-concentration"): ("multiply", Decimal(1)),
    ("mass-ratio", "mass-per-substance"): ("multiply", Decimal("0.001")),
    ("mass-per-substance", "mass-ratio"): ("divide", Decimal("0.001")),
}


def needs_molar_mass(from_kind: str, to_kind: str) -> bool:
    return (from_kind, to_kind) in _MOLAR_BRIDGES


def convert_exact(
    value: Decimal, source: UnitDef, target: UnitDef, molar_mass: Decimal | None = None
) -> Decimal:
    """`value` in `source` expressed in `target` (Decimal arithmetic)."""
    if source.kind == target.kind:
        return target.from_si(source.to_si(value))
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
    mass = molar_mass * scale
    amount = source.to_canonical(value)
    amount = amount / mass if operation == "divide" else amount * mass
    return target.from_canonical(amount)


def convert(
    value: float, from_unit: str, to_unit: str, molar_mass: float | None = None
) -> float:
    """Convert `value` between units of one kind, or between mass and molar forms when
    `molar_mass` (g/mol) is given. Raises UnitConversionError otherwise."""
    source, target = _known(from_unit), _known(to_unit)
    mass = None if molar_mass is None else _exact(molar_mass)
    return float(convert_exact(_exact(value), source, target, mass))


def _known(unit: str) -> UnitDef:
    try:
        return unit_def(unit)
    except InvalidUnitError:
        raise UnitConversionError(f"unknown unit '{unit}'") from None


def canonical(value: float, unit: str) -> tuple[float, str]:
    """`value` expressed in the canonical unit of its kind (mg/dL -> g/L, mmol/L -> mol/L,
    cm -> m, g -> kg; %, mmol/mol, mm[Hg] and mL/min/{1.73_m2} stay)."""
    definition = _known(unit)
    return float(definition.to_canonical(_exact(value))), definition.canonical


def glucose_mmol_per_l_to_mg_per_dl(value: float) -> float:
    return convert(value, "mmol/L", "mg/dL", molar_mass=GLUCOSE_MOLAR_MASS)


def glucose_mg_per_dl_to_mmol_per_l(value: float) -> float:
    return convert(value, "mg/dL", "mmol/L", molar_mass=GLUCOSE_MOLAR_MASS)


def hba1c_percent_to_mmol_mol_exact(percent: Decimal) -> Decimal:
    """NGSP/DCCT % to IFCC mmol/mol by the IFCC-NGSP master equation (not a unit change):
    IFCC = (NGSP - 2.152) / 0.09148."""
    return (percent - _NGSP_INTERCEPT) / _NGSP_SLOPE


def hba1c_mmol_mol_to_percent_exact(mmol_mol: Decimal) -> Decimal:
    """IFCC mmol/mol to NGSP/DCCT %: NGSP = 0.09148 * IFCC + 2.152."""
    return _NGSP_SLOPE * mmol_mol + _NGSP_INTERCEPT


def hba1c_percent_to_mmol_mol(percent: float) -> float:
    return float(hba1c_percent_to_mmol_mol_exact(_exact(percent)))


def hba1c_mmol_mol_to_percent(mmol_mol: float) -> float:
    return float(hba1c_mmol_mol_to_percent_exact(_exact(mmol_mol)))


def load_ucum_units():
    """The units Diatabase meets most, as a (fragment) code system, so that $lookup and
    $validate-code give their names; UCUM itself is a grammar (see is_valid_unit)."""
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
    for code in _SPELLINGS:
        unit = unit_def(code)
        system.add(Concept(code=code, display=_DISPLAYS.get(code, unit.display),
                           properties={"kind": unit.kind, "canonical": unit.canonical}))
    return system.finalize()


_DISPLAYS = {
    "mg/dL": "milligram per deciliter", "g/dL": "gram per deciliter", "g/L": "gram per liter",
    "mg/L": "milligram per liter", "mol/L": "mole per liter", "mmol/L": "millimole per liter",
    "umol/L": "micromole per liter", "%": "percent", "mmol/mol": "millimole per mole",
    "kg": "kilogram", "g": "gram", "[lb_av]": "pound", "m": "meter", "cm": "centimeter",
    "mm": "millimeter", "[in_i]": "inch", "mm[Hg]": "millimeter of mercury",
    "kPa": "kilopascal", "mL/min/{1.73_m2}": "milliliter per minute per 1.73 square meter",
    "mg/g": "milligram per gram", "mg/mmol": "milligram per millimole",
    "kg/m2": "kilogram per square meter", "s": "second", "min": "minute", "h": "hour",
    "d": "day",
}
