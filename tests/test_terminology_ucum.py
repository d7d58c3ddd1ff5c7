"""UCUM unit normalisation and conversions, with exact decimal answers."""

import pytest

from terminology.ucum import (
    CREATININE_MOLAR_MASS,
    GLUCOSE_MOLAR_MASS,
    UnitConversionError,
    canonical,
    convert,
    glucose_mg_per_dl_to_mmol_per_l,
    glucose_mmol_per_l_to_mg_per_dl,
    hba1c_mmol_mol_to_percent,
    hba1c_percent_to_mmol_mol,
    is_valid_unit,
    normalize_unit,
)


@pytest.mark.parametrize(
    ("spelling", "ucum"),
    [
        ("mg/dl", "mg/dL"),
        ("MG/DL", "mg/dL"),
        ("mmol/l", "mmol/L"),
        ("g/l", "g/L"),
        ("µmol/l", "umol/L"),
        ("μmol/L", "umol/L"),
        ("mmHg", "mm[Hg]"),
        ("mm Hg", "mm[Hg]"),
        ("ml/min/1,73m²", "mL/min/{1.73_m2}"),
        ("mL/min/1.73 m2", "mL/min/{1.73_m2}"),
        ("kg/m²", "kg/m2"),
        ("  % ", "%"),
        ("MMOL/MOL", "mmol/mol"),
    ],
)
def test_normalize_unit_spellings(spelling, ucum):
    assert normalize_unit(spelling) == ucum
    assert is_valid_unit(normalize_unit(spelling))


def test_unknown_unit_is_left_alone_and_invalid():
    assert normalize_unit(" furlongs ") == "furlongs"
    assert not is_valid_unit("furlongs")
    assert not is_valid_unit("MG/DL")  # UCUM is case-sensitive: M is mega, G gauss, D none
    assert is_valid_unit("mg/dL")
    assert is_valid_unit("mg/dl")  # UCUM's litre is both `l` and `L`
    assert not is_valid_unit("mmHg")  # its millimetre of mercury is mm[Hg]


def test_glucose_molar_to_mass_is_exact():
    assert convert(10, "mmol/L", "mg/dL", molar_mass=GLUCOSE_MOLAR_MASS) == 180.156
    assert convert(180.156, "mg/dL", "mmol/L", molar_mass=GLUCOSE_MOLAR_MASS) == 10.0
    assert glucose_mmol_per_l_to_mg_per_dl(5.5) == 99.0858
    assert glucose_mg_per_dl_to_mmol_per_l(90.078) == 5.0
    assert convert(1, "g/L", "mmol/L", molar_mass=180.156) == pytest.approx(5.5507449)


def test_same_kind_conversions_are_exact():
    assert convert(126, "mg/dL", "g/L") == 1.26
    assert convert(1.26, "g/L", "mg/dL") == 126.0
    assert convert(72.5, "kg", "g") == 72500.0
    assert convert(172, "cm", "m") == 1.72
    assert convert(7.2, "mmol/L", "umol/L") == 7200.0
    assert convert(120, "mm[Hg]", "kPa") == 15.99864  # 1 mm[Hg] = 133.3220 Pa (UCUM)
    assert convert(2, "d", "h") == 48.0


def test_albumin_creatinine_ratio_needs_creatinine_molar_mass():
    assert convert(30, "mg/g", "mg/mmol", molar_mass=CREATININE_MOLAR_MASS) == 3.3936
    assert convert(3.3936, "mg/mmol", "mg/g", molar_mass=CREATININE_MOLAR_MASS) == 30.0


def test_mass_to_molar_without_molar_mass_fails():
    with pytest.raises(UnitConversionError, match="molar mass"):
        convert(5, "mmol/L", "mg/dL")


@pytest.mark.parametrize(
    ("source", "target"),
    [("%", "mmol/mol"), ("mg/dL", "kg"), ("cm", "mm[Hg]"), ("mg/dL", "%")],
)
def test_incompatible_units_fail(source, target):
    with pytest.raises(UnitConversionError, match="cannot convert"):
        convert(1, source, target, molar_mass=GLUCOSE_MOLAR_MASS)


def test_unknown_unit_fails():
    with pytest.raises(UnitConversionError, match="unknown unit"):
        convert(1, "bananas", "g")


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (126, "mg/dL", (1.26, "g/L")),
        (7, "mmol/L", (0.007, "mol/L")),
        (53, "mmol/mol", (53.0, "mmol/mol")),
        (7.1, "%", (7.1, "%")),
        (72500, "g", (72.5, "kg")),
        (172, "cm", (1.72, "m")),
        (135, "mmHg", (135.0, "mm[Hg]")),
        (88, "mL/min/1.73m2", (88.0, "mL/min/{1.73_m2}")),
        (24.3, "kg/m2", (24.3, "kg/m2")),
    ],
)
def test_canonical_forms(value, unit, expected):
    assert canonical(value, unit) == expected


def test_hba1c_master_equation_is_not_a_unit_change():
    assert round(hba1c_percent_to_mmol_mol(7.0)) == 53
    assert round(hba1c_percent_to_mmol_mol(6.5)) == 48
    assert hba1c_mmol_mol_to_percent(53) == pytest.approx(7.00044)
