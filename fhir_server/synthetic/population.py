"""Who the synthetic patients are: type, age, sex, duration, complications, treatment.

A patient is sampled from its own `random.Random`, seeded from (seed, index), so patient n
is the same whatever the population size and patients can be built in any order.

Rates used (approximate, rounded; sources named so they can be checked and tuned):

| quantity | value | source |
| --- | --- | --- |
| type 1 share | 10 % | issue 9 (France: ~6-10 % of treated diabetes, Santé publique France) |
| men, type 2 / type 1 | 56 % / 53 % | Entred 3 (2019): 55-57 % men among treated type 2 |
| age, type 2 | mean 68, sd 11, 35-95 | Entred 3: mean age ~68 years |
| age, type 1 | 10 % children 6-17, else mean 42, sd 15 | Entred / Aude (T1 cohorts) |
| duration, type 2 | gamma, mean ~11 years | Entred 2007 / 3: mean known duration 11-13 years |
| retinopathy (any) | T2 20 %, T1 35 % | Yau et al., Diabetes Care 2012 (35 % overall, 25 % T2) |
| nephropathy (DKD) | T2 25 %, T1 20 % | Entred 2007; DEMAND study (albuminuria 39 % in T2) |
| neuropathy | T2 25 %, T1 20 % | Pop-Busui et al., ADA statement 2017 (20-50 %) |
| foot ulcer (active or past) | T2 5 %, T1 3 % | Zhang et al., Ann Med 2017 (6.3 %; Europe 5.1 %) |
| CGM use | all T1, 30 % of T2 (on insulin) | issue 9; French reimbursement of CGM for insulin |
| mmol/L meters | 20 % of SMBG patients | choice (most French meters show mg/dL or g/L) |

Complication probabilities are scaled by diabetes duration (factor 0.4-1.8 around a ten
year duration), so the population rates stay close to the table.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final

TYPE1_SHARE: Final = 0.10
T2_CGM_SHARE: Final = 0.30
MMOL_METER_SHARE: Final = 0.20
MALE_SHARE: Final = {1: 0.53, 2: 0.56}
COMPLICATION_RATES: Final[dict[str, dict[int, float]]] = {
    "retinopathy": {1: 0.35, 2: 0.20},
    "nephropathy": {1: 0.20, 2: 0.25},
    "neuropathy": {1: 0.20, 2: 0.25},
    "foot_ulcer": {1: 0.03, 2: 0.05},
}

CGM_MODELS: Final = (
    # (manufacturer, model, sensor life in days, warm-up minutes, weight)
    ("Abbott Diabetes Care", "FreeStyle Libre 2", 14, 60, 50),
    ("Abbott Diabetes Care", "FreeStyle Libre 3", 14, 60, 20),
    ("Dexcom", "Dexcom G6", 10, 120, 15),
    ("Dexcom", "Dexcom G7", 10, 30, 15),
)
METER_MODELS: Final = (
    ("Abbott Diabetes Care", "FreeStyle Optium Neo"),
    ("Roche Diabetes Care", "Accu-Chek Guide"),
    ("Ascensia Diabetes Care", "Contour Next"),
    ("LifeScan", "OneTouch Verio Reflect"),
)


@dataclass(frozen=True, slots=True)
class Treatment:
    drug: str  # key of codes.DRUGS
    start: date
    end: date | None  # None: still taken at the end of the window


@dataclass(frozen=True, slots=True)
class PatientProfile:
    index: int
    diabetes_type: int  # 1 or 2
    sex: str  # "male" | "female"
    birth_date: date
    diagnosis_date: date
    control: float  # 0 (poor) .. 1 (excellent): drives mean glucose and variability
    uses_cgm: bool
    smbg_unit: str  # "mg/dL" | "mmol/L" (SMBG patients only)
    smbg_per_day: int  # 1..4
    complications: dict[str, date]  # complication -> onset date
    treatments: tuple[Treatment, ...]
    on_insulin: bool
    renal_impairment: bool  # eGFR below 30: metformin stopped
    height_m: float
    bmi: float


def patient_rng(seed: int, index: int) -> random.Random:
    # A string seed is hashed with SHA-512 by `random`, independent of PYTHONHASHSEED.
    return random.Random(f"diatabase-synthetic:{seed}:{index}")


def _birth_date(rng: random.Random, end: date, diabetes_type: int) -> date:
    if diabetes_type == 1:
        # 10 % children and adolescents, the rest adults.
        age = rng.uniform(6, 18) if rng.random() < 0.1 else min(max(rng.gauss(42, 15), 18), 85)
    else:
        age = min(max(rng.gauss(68, 11), 35), 95)
    return end - timedelta(days=int(age * 365.25) + rng.randrange(365))


def _years_between(a: date, b: date) -> float:
    return (b - a).days / 365.25


def _diagnosis_date(rng: random.Random, birth: date, end: date, diabetes_type: int) -> date:
    age = _years_between(birth, end)
    if diabetes_type == 1:
        # Onset mostly in childhood and young adulthood.
        age_dx = rng.triangular(1.5, min(age - 0.5, 45), min(12, age - 0.5))
    else:
        duration = min(rng.gammavariate(2.0, 5.5), age - 30)
        age_dx = age - max(duration, 0.3)
    return birth + timedelta(days=int(max(age_dx, 1.0) * 365.25))


def _complications(
    rng: random.Random, diabetes_type: int, diagnosis: date, end: date
) -> dict[str, date]:
    duration = _years_between(diagnosis, end)
    factor = min(max(0.4 + 0.06 * duration, 0.4), 1.8)
    found: dict[str, date] = {}
    for name, rates in COMPLICATION_RATES.items():
        p = rates[diabetes_type] * factor
        if name == "foot_ulcer" and "neuropathy" in found:
            p *= 2.5  # neuropathy is the main cause of diabetic foot ulcers
        if rng.random() < p:
            # Complications appear after some years of diabetes.
            earliest = diagnosis + timedelta(days=int(min(duration * 0.4, 5) * 365.25))
            span = max((end - earliest).days, 1)
            found[name] = earliest + timedelta(days=rng.randrange(span))
    return found


# First marketing in France/EU (approximate year): no one takes a drug before it exists.
DRUG_AVAILABLE_FROM: Final[dict[str, date]] = {
    "metformin": date(1959, 1, 1), "gliclazide": date(1972, 1, 1),
    "sitagliptin": date(2007, 6, 1), "liraglutide": date(2009, 7, 1),
    "semaglutide": date(2018, 2, 1), "empagliflozin": date(2014, 5, 1),
    "dapagliflozin": date(2012, 11, 1), "glargine": date(2000, 6, 1),
    "aspart": date(1999, 9, 1), "lispro": date(1996, 4, 1),
}


def _available(drug: str, when: date, end: date) -> date:
    return min(max(when, DRUG_AVAILABLE_FROM[drug]), end)


def _type2_treatments(
    rng: random.Random, diagnosis: date, end: date, needs_insulin: bool, egfr_low: bool
) -> tuple[Treatment, ...]:
    """Metformin first, then add-ons every few years, basal then bolus insulin when advanced."""
    duration_days = max((end - diagnosis).days, 1)
    start = diagnosis + timedelta(days=rng.randrange(0, min(90, duration_days)))
    start = _available("metformin", start, end)
    course = max((end - start).days, 1)  # add-ons and insulin come after metformin
    treatments = [Treatment("metformin", start, None)]
    # How many add-on steps: more with duration; insulin users have had most of them.
    steps = int(duration_days / 365.25 / rng.uniform(3, 7))
    if needs_insulin:
        steps = max(steps, 2)
    add_ons: list[str] = []
    options = [
        ("gliclazide", 25),
        ("sitagliptin", 25),
        (rng.choice(["empagliflozin", "dapagliflozin"]), 30),
        (rng.choice(["liraglutide", "semaglutide"]), 20),
    ]
    for _ in range(min(steps, 3)):
        # A DPP-4 inhibitor is not combined with a GLP-1 agonist (same pathway).
        glp1 = any(d in ("liraglutide", "semaglutide") for d in add_ons)
        remaining = [
            (d, w) for d, w in options if d not in add_ons and not (glp1 and d == "sitagliptin")
        ]
        add_ons.append(rng.choices([d for d, _ in remaining], [w for _, w in remaining])[0])
    step_days = course // (len(add_ons) + 2) if add_ons else course
    ended: dict[str, date] = {}
    started: dict[str, date] = {}
    for k, drug in enumerate(add_ons, start=1):
        when = start + timedelta(days=k * step_days + rng.randrange(min(60, step_days + 1)))
        when = _available(drug, when, end)
        started[drug] = when
        # A GLP-1 agonist replaces a DPP-4 inhibitor (same pathway, not combined).
        if drug in ("liraglutide", "semaglutide") and "sitagliptin" in started:
            ended["sitagliptin"] = when
    if needs_insulin:
        insulin_start = start + timedelta(days=int(course * rng.uniform(0.6, 0.9)))
        insulin_start = _available("glargine", insulin_start, end)
        started["glargine"] = insulin_start
        if "gliclazide" in started:  # the sulfonylurea is stopped when insulin starts
            ended["gliclazide"] = insulin_start
        if rng.random() < 0.35:  # basal-bolus for the most advanced
            bolus_start = insulin_start + timedelta(days=(end - insulin_start).days // 2)
            bolus = rng.choice(["aspart", "lispro"])
            started[bolus] = _available(bolus, bolus_start, end)
    if egfr_low:
        # Metformin is stopped when renal function falls (eGFR < 30 in the SmPC).
        ended["metformin"] = end - timedelta(days=rng.randrange(30, 400))
        treatments = [Treatment("metformin", start, max(ended["metformin"], start))]
    for drug, when in started.items():
        stop = ended.get(drug)
        treatments.append(Treatment(drug, min(when, end), max(stop, when) if stop else None))
    return tuple(treatments)


def _type1_treatments(rng: random.Random, diagnosis: date, end: date) -> tuple[Treatment, ...]:
    # Basal-bolus with analogue insulins since the patient's diagnosis (or their launch).
    start = max(diagnosis, date(2003, 1, 1)) + timedelta(days=rng.randrange(30))
    start = min(start, end)
    return (
        Treatment("glargine", start, None),
        Treatment(rng.choice(["aspart", "lispro"]), start, None),
    )


def sample_patient(seed: int, index: int, end: date) -> tuple[PatientProfile, random.Random]:
    """Draw one patient; also returns its generator, to continue drawing its data."""
    rng = patient_rng(seed, index)
    diabetes_type = 1 if rng.random() < TYPE1_SHARE else 2
    sex = "male" if rng.random() < MALE_SHARE[diabetes_type] else "female"
    birth = _birth_date(rng, end, diabetes_type)
    diagnosis = _diagnosis_date(rng, birth, end, diabetes_type)
    uses_cgm = diabetes_type == 1 or rng.random() < T2_CGM_SHARE
    # A skewed control level: most patients moderately controlled, some poorly.
    control = rng.betavariate(2.2, 1.8)
    complications = _complications(rng, diabetes_type, diagnosis, end)
    egfr_low = "nephropathy" in complications and rng.random() < 0.25
    if diabetes_type == 1:
        treatments = _type1_treatments(rng, diagnosis, end)
    else:
        # CGM is reimbursed for insulin-treated patients; some SMBG patients use insulin too.
        needs_insulin = uses_cgm or rng.random() < 0.08
        treatments = _type2_treatments(rng, diagnosis, end, needs_insulin, egfr_low)
    on_insulin = any(t.drug in ("glargine", "aspart", "lispro") for t in treatments)
    smbg_per_day = rng.choice((3, 4)) if on_insulin else rng.choices((1, 2, 3), (50, 35, 15))[0]
    smbg_unit = "mmol/L" if rng.random() < MMOL_METER_SHARE else "mg/dL"
    height = rng.gauss(1.73, 0.07) if sex == "male" else rng.gauss(1.61, 0.065)
    bmi = rng.gauss(25, 4) if diabetes_type == 1 else max(rng.gauss(30.5, 5.5), 21.0)
    profile = PatientProfile(
        index=index,
        diabetes_type=diabetes_type,
        sex=sex,
        birth_date=birth,
        diagnosis_date=diagnosis,
        control=control,
        uses_cgm=uses_cgm,
        smbg_unit=smbg_unit,
        smbg_per_day=smbg_per_day,
        complications=complications,
        treatments=treatments,
        on_insulin=on_insulin,
        renal_impairment=egfr_low,
        height_m=round(min(max(height, 1.45), 2.02), 2),
        bmi=min(max(bmi, 18.5), 50.0),
    )
    return profile, rng
