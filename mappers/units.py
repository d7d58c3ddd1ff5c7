"""Units as labs and devices write them, to UCUM codes.

A deliberately small table of the units seen in diabetes and general lab feeds; the
`terminology` package holds the full UCUM knowledge, and the mappers do not import it.
Lookups ignore case and spaces and read `µ`/`μ` as `u`, because senders write `mg/dl`,
`MG/DL`, `mmol/l` or `µmol/L` for the same unit. UCUM itself is case-sensitive, so the
code returned is always the canonical spelling.
"""

from __future__ import annotations

UCUM_SYSTEM = "http://unitsofmeasure.org"

# canonical UCUM code -> spellings met in the wild (lower-cased, spaces removed).
_SPELLINGS: dict[str, tuple[str, ...]] = {
    "mg/dL": ("mg/dl", "mg%", "mgdl", "mg/100ml"),
    "mmol/L": ("mmol/l", "mmoll"),
    "mmol/mol": ("mmol/mol",),
    "g/L": ("g/l",),
    "g/dL": ("g/dl",),
    "mg/L": ("mg/l",),
    "ug/L": ("ug/l", "mcg/l"),
    "ug/dL": ("ug/dl", "mcg/dl"),
    "ng/mL": ("ng/ml",),
    "ng/dL": ("ng/dl",),
    "pg/mL": ("pg/ml",),
    "umol/L": ("umol/l", "micromol/l"),
    "nmol/L": ("nmol/l",),
    "pmol/L": ("pmol/l",),
    "mol/L": ("mol/l",),
    "meq/L": ("meq/l",),
    "mg/mmol": ("mg/mmol",),
    "mg/g": ("mg/g",),
    "mg/(24.h)": ("mg/24h", "mg/24hr"),
    "%": ("%", "percent", "pct"),
    "U/L": ("u/l",),
    "[IU]/L": ("iu/l", "ui/l"),
    "m[IU]/L": ("miu/l", "mui/l"),
    "u[IU]/mL": ("uiu/ml", "uui/ml"),
    "[IU]": ("iu", "ui"),
    "10*9/L": ("10*9/l", "10^9/l", "giga/l", "giga.l-1", "x10e9/l"),
    "10*12/L": ("10*12/l", "10^12/l", "tera/l", "tera.l-1", "x10e12/l"),
    "10*3/uL": ("10*3/ul", "10^3/ul", "k/ul", "x10e3/ul", "thou/ul"),
    "10*6/uL": ("10*6/ul", "10^6/ul", "x10e6/ul"),
    "fL": ("fl",),
    "pg": ("pg",),
    "mL/min/{1.73_m2}": ("ml/min/1.73m2", "ml/min/1.73m^2", "ml/min/1,73m2"),
    "mL/min": ("ml/min",),
    "kg": ("kg",),
    "g": ("g",),
    "cm": ("cm",),
    "m": ("m",),
    "kg/m2": ("kg/m2", "kg/m^2"),
    "mm[Hg]": ("mmhg", "mm[hg]", "mm hg"),
    "/min": ("/min", "bpm", "beats/min"),
    "Cel": ("cel", "°c", "degc"),
    "s": ("s", "sec"),
    "min": ("min",),
    "h": ("h", "hr", "hour"),
    "d": ("d", "day", "days"),
    "mL": ("ml",),
    "L": ("l",),
}

_LOOKUP: dict[str, str] = {}
for _code, _spellings in _SPELLINGS.items():
    for _spelling in (_code, *_spellings):
        _LOOKUP[_spelling.lower().replace(" ", "")] = _code


def _key(unit: str) -> str:
    return unit.strip().replace("µ", "u").replace("μ", "u").replace(" ", "").lower()


def to_ucum(unit: str | None) -> str | None:
    """The UCUM code for a unit as written, or None when it is not in the table."""
    if not unit:
        return None
    return _LOOKUP.get(_key(unit))


def quantity(value: float | int, unit: str | None) -> dict:
    """A FHIR Quantity; coded in UCUM when the unit is known, else the unit text only."""
    result: dict = {"value": value}
    if unit:
        result["unit"] = unit
        code = to_ucum(unit)
        if code:
            result["system"] = UCUM_SYSTEM
            result["code"] = code
    return result
