"""Assemble each synthetic patient's resources; stream them as dicts or write NDJSON.

Determinism: no wall clock, no uuid4. Every patient draws from its own generator seeded
from (seed, index) and ids are `<kind>-<seed>-<index>[-<n>]`, so the same parameters give
byte-identical files. The only state shared between patients is the set of INS numbers
already given, to keep them unique (a collision bumps the NIR order number).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import orjson

from . import codes
from . import resources as build
from .cgm import SLOTS_PER_DAY, CGMRenderer, SensorSession, plan_sessions
from .france import Identity, ins_key, make_identity
from .glucose import params_for, paris_utc_offset_hours, simulate
from .population import CGM_MODELS, METER_MODELS, PatientProfile, sample_patient

#: The window ends on this day when no end date is given (never "today": determinism).
DEFAULT_END_DATE = date(2025, 12, 31)
CONSULTATION_EVERY_DAYS = 91  # quarterly follow-up, as French guidelines recommend
SMBG_STEP_MINUTES = 30  # SMBG patients need their curve only at a few times a day
METER_LOW, METER_HIGH = 20, 600  # meters show "LO" / "HI" outside (mg/dL)
# Times of SMBG checks (local hours) in the order a patient adds them.
SMBG_TIMES = (7.2, 19.3, 12.3, 22.5)

Resource = build.Resource


@dataclass(slots=True)
class PatientOutput:
    resources: list[Resource]  # every resource but the CGM readings, referenced ones first
    curve: list[float]  # the modelled glucose (mg/dL) the CGM readings are taken from
    sessions: list[SensorSession]  # CGM sensors (empty for SMBG patients)
    renderer: CGMRenderer | None

    def cgm_chunks(self) -> Iterator[list[str]]:
        """NDJSON lines of the CGM readings, one sensor at a time (a year is ~60 MB)."""
        if self.renderer is None:
            return
        for session in self.sessions:
            yield self.renderer.lines(session, self.curve)


def gmi_percent(mean_mgdl: float) -> float:
    """Glucose Management Indicator (Bergenstal et al., Diabetes Care 2018)."""
    return 3.31 + 0.02392 * mean_mgdl


def _local(day: date, hour: float) -> datetime:
    """A Paris local time on `day`, as a naive UTC datetime."""
    return datetime(day.year, day.month, day.day) + timedelta(
        hours=hour - paris_utc_offset_hours(day)
    )


def _bump_ins(ins: str) -> str:
    order = int(ins[10:13]) % 999 + 1
    nir13 = f"{ins[:10]}{order:03d}"
    return nir13 + ins_key(nir13)


def _creatinine_for_egfr(egfr: float, age: float, female: bool) -> float:
    """Invert CKD-EPI 2009 (no race factor, as in France): the creatinine (mg/dL) for an eGFR."""
    kappa, alpha = (0.7, -0.329) if female else (0.9, -0.411)
    scale = 141 * 0.993**age * (1.018 if female else 1.0)
    ratio = egfr / scale
    return kappa * (ratio ** (1 / alpha) if ratio >= 1 else ratio ** (-1 / 1.209))


def ckd_epi_2009(creatinine: float, age: float, female: bool) -> float:
    kappa, alpha = (0.7, -0.329) if female else (0.9, -0.411)
    r = creatinine / kappa
    value = 141 * min(r, 1) ** alpha * max(r, 1) ** -1.209 * 0.993**age
    return value * (1.018 if female else 1.0)


class _PatientBuilder:
    def __init__(
        self, seed: int, index: int, first_day: date, days: int, used_ins: set[str]
    ) -> None:
        self.seed, self.index, self.first_day, self.days = seed, index, first_day, days
        self.end_day = first_day + timedelta(days=days - 1)
        self.profile, self.rng = sample_patient(seed, index, self.end_day)
        who = make_identity(self.rng, self.profile.sex, self.profile.birth_date)
        ins = who.ins
        while ins in used_ins:
            ins = _bump_ins(ins)
        used_ins.add(ins)
        self.identity = Identity(
            who.family, who.given, who.line, who.postal_code, who.city, who.departement, ins
        )
        self.pid = f"p-{seed}-{index}"
        self.cid = f"cond-{seed}-{index}-0"
        self._n_obs = 0

    def _obs_id(self, kind: str) -> str:
        self._n_obs += 1
        return f"{kind}-{self.seed}-{self.index}-{self._n_obs}"

    def build(self) -> PatientOutput:
        p, rng = self.profile, self.rng
        step = 5 if p.uses_cgm else SMBG_STEP_MINUTES
        curve = simulate(rng, params_for(p), self.first_day, self.days, step)
        out: list[Resource] = [build.patient(self.pid, p, self.identity)]
        sessions: list[SensorSession] = []
        renderer = None
        meter_id = None
        if p.uses_cgm:
            model = rng.choices(CGM_MODELS, weights=[m[4] for m in CGM_MODELS])[0]
            n_slots = self.days * SLOTS_PER_DAY
            sessions = plan_sessions(rng, self.seed, self.index, n_slots, model)
            renderer = CGMRenderer(self.seed, self.index, self.pid, self.first_day, self.days)
            for s in sessions:
                out.append(build.device(
                    s.device_id, self.pid, s.manufacturer, s.model, s.serial,
                    "Continuous glucose monitoring sensor", active=s.end >= n_slots,
                ))
        else:
            meter_id = f"dev-{self.seed}-{self.index}-m"
            manufacturer, model_name = rng.choice(METER_MODELS)
            serial = "".join(rng.choice("0123456789ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(10))
            out.append(build.device(
                meter_id, self.pid, manufacturer, model_name, serial, "Blood glucose meter",
                active=True,
            ))
        out.extend(self._conditions())
        out.extend(
            build.medication_statement(f"med-{self.seed}-{self.index}-{k}", self.pid, self.cid, t)
            for k, t in enumerate(p.treatments)
        )
        out.extend(self._encounters_and_labs(curve, step))
        if meter_id:
            out.extend(self._smbg(curve, meter_id))
        return PatientOutput(out, curve, sessions, renderer)

    def _conditions(self) -> list[Resource]:
        p = self.profile
        out = [build.diabetes_condition(self.cid, self.pid, p)]
        for k, (kind, onset) in enumerate(p.complications.items(), start=1):
            healed = None
            if kind == "foot_ulcer" and self.rng.random() < 0.6:  # most ulcers heal
                healed = onset + timedelta(days=self.rng.randint(30, 180))
                if healed > self.end_day:
                    healed = None
            out.append(build.complication_condition(
                f"cond-{self.seed}-{self.index}-{k}", self.pid, kind, onset, healed
            ))
        return out

    def _hospital_stays(self) -> list[Resource]:
        p, rng = self.profile, self.rng
        rate = 0.08 + 0.05 * len(p.complications) + (0.05 if p.diabetes_type == 1 else 0.0)
        reasons = ["Déséquilibre glycémique", "Hypoglycémie sévère", "Infection"]
        if p.diabetes_type == 1:
            reasons.append("Acidocétose diabétique")
        if "foot_ulcer" in p.complications:
            reasons += ["Plaie du pied diabétique"] * 3
        if "nephropathy" in p.complications:
            reasons.append("Insuffisance rénale aiguë")
        stays: list[Resource] = []
        free_from = 0
        for d in range(self.days):
            if d < free_from or rng.random() >= rate / 365:
                continue
            length = rng.randint(2, 9)
            if d + length >= self.days:
                break
            day = self.first_day + timedelta(days=d)
            start = _local(day, rng.uniform(8, 20))
            end = _local(day + timedelta(days=length), rng.uniform(10, 16))
            stays.append(build.encounter(
                f"hosp-{self.seed}-{self.index}-{len(stays)}", self.pid, self.cid, True,
                start, end, rng.choice(reasons),
            ))
            free_from = d + length + 1
        return stays

    def _encounters_and_labs(self, curve: list[float], step: int) -> list[Resource]:
        p, rng = self.profile, self.rng
        out: list[Resource] = list(self._hospital_stays())
        female = p.sex == "female"
        per_day = 1440 // step
        # Per-patient baselines, then visit-to-visit variation.
        age = (self.end_day - p.birth_date).days / 365.25
        egfr_base = 105 - 0.9 * max(age - 30, 0) + rng.gauss(0, 10)
        if "nephropathy" in p.complications:
            egfr_base -= rng.uniform(15, 45)
        if p.renal_impairment:
            egfr_base = rng.uniform(18, 29)
        egfr_base = min(max(egfr_base, 8), 130)
        uacr_median = 120.0 if "nephropathy" in p.complications else 10.0
        sbp, dbp = rng.gauss(134, 14), rng.gauss(78, 9)
        tc, tg = rng.gauss(185, 35), rng.lognormvariate(math.log(140), 0.4)
        hdl = max(rng.gauss(56 if female else 47, 11), 25)

        span = min(CONSULTATION_EVERY_DAYS, self.days)
        first = rng.randrange(span)
        for k, d in enumerate(range(first, self.days, CONSULTATION_EVERY_DAYS)):
            day = self.first_day + timedelta(days=d)
            start = _local(day, rng.uniform(8.5, 17.5)).replace(microsecond=0)
            eid = f"enc-{self.seed}-{self.index}-{k}"
            out.append(build.encounter(
                eid, self.pid, self.cid, False, start,
                start + timedelta(minutes=rng.choice((20, 30, 45))), "Suivi du diabète",
            ))
            when = build.iso_utc(start)
            # HbA1c reflects the mean glucose of the last 90 days (what the window holds).
            midnight_utc = datetime(day.year, day.month, day.day)
            slot = d * per_day + int((start - midnight_utc).total_seconds() // 60 // step)
            window = curve[max(0, slot - 90 * per_day): slot + 1]
            noise = min(max(rng.gauss(0, 0.1), -0.2), 0.2)
            hba1c = round(gmi_percent(sum(window) / len(window)) + noise, 1)
            out.append(build.observation(
                self._obs_id("obs"), self.pid, codes.HBA1C, hba1c, when,
                profile=codes.PROFILE_HBA1C, encounter_id=eid,
            ))
            weight = round(p.height_m**2 * (p.bmi + rng.gauss(0, 0.4)), 1)
            out.append(build.observation(
                self._obs_id("obs"), self.pid, codes.WEIGHT, weight, when,
                category=build.VITAL, encounter_id=eid,
            ))
            out.append(build.observation(
                self._obs_id("obs"), self.pid, codes.BMI, round(weight / p.height_m**2, 1),
                when, category=build.VITAL, encounter_id=eid,
            ))
            out.append(build.blood_pressure(
                self._obs_id("obs"), self.pid, round(sbp + rng.gauss(0, 6)),
                round(dbp + rng.gauss(0, 4)), when, eid,
            ))
            if k % 4 == 0:  # yearly check-up
                out.extend(self._yearly_labs(when, eid, egfr_base, age, female, uacr_median,
                                             tc, tg, hdl))
        return out

    def _yearly_labs(
        self, when: str, eid: str, egfr_base: float, age: float, female: bool,
        uacr_median: float, tc: float, tg: float, hdl: float,
    ) -> list[Resource]:
        rng = self.rng
        target = min(max(egfr_base + rng.gauss(0, 3), 5), 140)
        creatinine = round(_creatinine_for_egfr(target, age, female), 2)
        egfr = round(ckd_epi_2009(creatinine, age, female))
        uacr = round(rng.lognormvariate(math.log(uacr_median), 0.6), 1)
        tg_v = round(tg * rng.lognormvariate(0, 0.1))
        hdl_v = round(hdl + rng.gauss(0, 3))
        ldl_v = max(round(tc + rng.gauss(0, 8) - hdl_v - tg_v / 5), 30)
        tc_v = round(ldl_v + hdl_v + tg_v / 5)  # Friedewald, so the four values agree
        values = (
            (codes.CREATININE, creatinine), (codes.EGFR, egfr), (codes.UACR, uacr),
            (codes.CHOLESTEROL, tc_v), (codes.HDL, hdl_v), (codes.LDL, ldl_v),
            (codes.TRIGLYCERIDES, tg_v),
        )
        return [
            build.observation(self._obs_id("obs"), self.pid, loinc, value, when, encounter_id=eid)
            for loinc, value in values
        ]

    def _smbg(self, curve: list[float], meter_id: str) -> list[Resource]:
        p, rng = self.profile, self.rng
        per_day = 1440 // SMBG_STEP_MINUTES
        mmol = p.smbg_unit == "mmol/L"
        loinc = codes.SMBG_MOLES if mmol else codes.SMBG_MASS
        out: list[Resource] = []
        for d in range(self.days):
            if rng.random() < 0.1:  # forgotten days
                continue
            day = self.first_day + timedelta(days=d)
            n = min(max(p.smbg_per_day + rng.choice((-1, 0, 0, 0, 1)), 1), 4)
            for hour in sorted(SMBG_TIMES[:n]):
                moment = _local(day, hour + rng.uniform(-0.5, 0.5))
                moment = moment.replace(microsecond=0)
                offset_min = (moment - datetime(day.year, day.month, day.day)).total_seconds() / 60
                slot = min(max(d * per_day + int(offset_min // SMBG_STEP_MINUTES), 0),
                           len(curve) - 1)
                # Meter accuracy: ISO 15197 allows +-15 %; a 5 % sd is typical.
                mgdl = round(curve[slot] * (1 + rng.gauss(0, 0.05)))
                comparator = None
                if mgdl < METER_LOW:
                    mgdl, comparator = METER_LOW, "<"
                elif mgdl > METER_HIGH:
                    mgdl, comparator = METER_HIGH, ">"
                value: float | int = round(mgdl / codes.MGDL_PER_MMOL, 1) if mmol else mgdl
                out.append(build.observation(
                    self._obs_id("bg"), self.pid, loinc, value, build.iso_utc(moment),
                    profile=codes.PROFILE_BLOOD_GLUCOSE, device_id=meter_id,
                    comparator=comparator,
                ))
        return out


def _check(patients: int, days: int) -> None:
    if patients < 0:
        raise ValueError("patients must be >= 0")
    if days < 1:
        raise ValueError("days must be >= 1")


def iter_patients(
    patients: int, days: int, seed: int, end_date: date | None = None
) -> Iterator[PatientOutput]:
    """Each patient's output in turn (the common source of `generate` and `write_ndjson`)."""
    _check(patients, days)
    end = end_date or DEFAULT_END_DATE
    first_day = end - timedelta(days=days - 1)
    used_ins: set[str] = set()
    for index in range(patients):
        yield _PatientBuilder(seed, index, first_day, days, used_ins).build()


def generate(
    patients: int, days: int, seed: int, end_date: date | None = None
) -> Iterator[Resource]:
    """Resources as dicts, patient by patient, every resource after those it references."""
    for out in iter_patients(patients, days, seed, end_date):
        yield from out.resources
        loads = orjson.loads
        for chunk in out.cgm_chunks():
            for line in chunk:
                yield loads(line)


def write_ndjson(
    out_dir: str | Path, patients: int, days: int, seed: int, end_date: date | None = None
) -> dict[str, int]:
    """Write one `<ResourceType>.ndjson` per type into out_dir; return the count per type."""
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    counts: dict[str, int] = {}
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE

    def handle(resource_type: str):  # type: ignore[no-untyped-def]
        fh = files.get(resource_type)
        if fh is None:
            fh = files[resource_type] = open(  # noqa: SIM115 - closed in the finally below
                directory / f"{resource_type}.ndjson", "wb", buffering=1 << 20
            )
            counts[resource_type] = 0
        return fh

    try:
        for out in iter_patients(patients, days, seed, end_date):
            for resource in out.resources:
                rt = resource["resourceType"]
                handle(rt).write(dumps(resource, option=newline))
                counts[rt] += 1
            for chunk in out.cgm_chunks():
                if chunk:
                    handle("Observation").write("".join(chunk).encode())
                    counts["Observation"] += len(chunk)
    finally:
        for fh in files.values():
            fh.close()
    return dict(sorted(counts.items()))


def profile_of(seed: int, index: int, end_date: date | None = None) -> PatientProfile:
    """The sampled profile of one patient (cheap: no glucose, no resources)."""
    return sample_patient(seed, index, end_date or DEFAULT_END_DATE)[0]


__all__ = [
    "DEFAULT_END_DATE", "PatientOutput", "generate", "gmi_percent", "iter_patients",
    "profile_of", "write_ndjson",
]
