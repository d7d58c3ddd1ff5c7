"""A clinician's patient list: for each patient of a practice or service (a Group, an
Organization, or every patient the caller may see), the latest HbA1c and its date, the
time in range / below range / GMI over the last 14 days, the days the CGM was worn, and
flags (time below 54 mg/dL over 1 %, below 70 over 4 %, no HbA1c in 12 months, no CGM
data for 3 days).

The CGM figures come from the daily aggregates (indexes.py), not from the readings: 14
rows per patient. The patients, their Group or Organization and their HbA1c are read
through the caller's access, as searches, so a patient-context token lists its patient
only. The 14 days end today (Europe/Paris, the aggregates' days) and are counted by
readings: a day's share of each range is its readings' share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from fhir_server.clinical.glucose import LOINC
from fhir_server.clinical.indexes import AGGREGATE_ZONE
from fhir_server.model import jsonio
from fhir_server.search.errors import SearchError

DAYS = 14
HBA1C_CODES = ("4548-4", "17856-6", "59261-8")
STALE_CGM_DAYS = 3
HBA1C_MONTHS_DAYS = 365
PAGE = 1000
SUBJECTS_IN_ONE_SEARCH = 100
SORT_KEYS = ("name", "hba1c", "hba1c_date", "tir", "tbr", "tbr54", "gmi", "wear", "flags")
FLAG_TBR54, FLAG_TBR70 = "tbr54-over-1", "tbr70-over-4"
FLAG_NO_HBA1C, FLAG_STALE_CGM = "no-hba1c-12-months", "no-cgm-3-days"


@dataclass
class PatientRow:
    id: str
    name: str
    hba1c: str | None = None  # as written: "7.1 %" or "54 mmol/mol"
    hba1c_value: float | None = None  # in %, for sorting
    hba1c_date: str | None = None
    tir: float | None = None
    tbr: float | None = None  # < 70 mg/dL, level 1 + 2
    tbr54: float | None = None
    gmi: float | None = None
    wear_days: int = 0
    last_cgm_day: str | None = None  # inside the 14 days
    flags: list[str] = field(default_factory=list)


def patient_name(resource: dict[str, Any]) -> str:
    """The patient's usual or first name as a clinician reads it, or their id."""
    names = resource.get("name") or []
    chosen = next((n for n in names if n.get("use") == "usual"), names[0] if names else None)
    if not chosen:
        return resource.get("id", "")
    if chosen.get("text"):
        return chosen["text"]
    given = " ".join(chosen.get("given") or [])
    family = (chosen.get("family") or "").upper()
    return " ".join(p for p in (given, family) if p) or resource.get("id", "")


def _all(search: Any, items: list[tuple[str, str]], rtype: str) -> list[dict[str, Any]]:
    query = search.parse(rtype, items, False)
    found, cursor = [], None
    while True:
        page = search.storage.search(query, PAGE, cursor)
        found += [jsonio.loads(s.json) for s in page.matches if s.json is not None]
        cursor = page.next_cursor
        if not cursor:
            return found


def patients(search: Any, group: str | None, organization: str | None) -> list[dict[str, Any]]:
    """The Patients listed, as the caller may see them."""
    if group:
        groups = _all(search, [("_id", group)], "Group")
        if not groups:
            raise SearchError(f"Group/{group} is not known", "group")
        ids = [
            m["entity"]["reference"].removeprefix("Patient/")
            for m in groups[0].get("member") or ()
            if (m.get("entity") or {}).get("reference", "").startswith("Patient/")
            and not m.get("inactive")
        ]
        found = []
        for i in range(0, len(ids), SUBJECTS_IN_ONE_SEARCH):
            chunk = ids[i : i + SUBJECTS_IN_ONE_SEARCH]
            found += _all(search, [("_id", ",".join(chunk))], "Patient")
        return found
    if organization:
        return _all(search, [("organization", f"Organization/{organization}")], "Patient")
    return _all(search, [], "Patient")


def latest_hba1c(search: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
    """patient id -> their newest HbA1c Observation."""
    codes = ",".join(f"{LOINC}|{c}" for c in HBA1C_CODES)
    found: dict[str, dict[str, Any]] = {}
    if len(ids) <= SUBJECTS_IN_ONE_SEARCH:
        batches = [[("subject", ",".join(f"Patient/{i}" for i in ids))]] if ids else []
    else:  # a whole practice: every HbA1c the caller may see, a few per patient
        batches = [[]]
    for extra in batches:
        for resource in _all(search, [*extra, ("code", codes), ("_sort", "-date")], "Observation"):
            patient = (resource.get("subject") or {}).get("reference", "")
            patient = patient.removeprefix("Patient/")
            if patient not in found:
                found[patient] = resource
    return found


def hba1c_percent(resource: dict[str, Any]) -> tuple[float | None, str | None]:
    quantity = resource.get("valueQuantity") or {}
    value = quantity.get("value")
    if not isinstance(value, int | float):
        return None, None
    unit = quantity.get("code") or quantity.get("unit") or "%"
    if unit == "mmol/mol":  # the IFCC-NGSP master equation
        return value / 10.929 + 2.15, f"{value:g} mmol/mol"
    return float(value), f"{value:g} %"


def cgm_figures(row: PatientRow, window: tuple[int, str, list[float]] | None) -> None:
    """TIR / TBR / GMI and days worn from the window's summed daily aggregates."""
    if window is None:
        return
    row.wear_days, row.last_cgm_day, sums = window
    n = sums[0]
    if n <= 0:
        return
    bands = sums[3:8]
    row.tir = 100 * bands[2] / n
    row.tbr = 100 * (bands[0] + bands[1]) / n
    row.tbr54 = 100 * bands[0] / n
    row.gmi = 3.31 + 0.02392 * (sums[1] / n)


def build_rows(
    search: Any,
    aggregates: Any,
    group: str | None = None,
    organization: str | None = None,
    today: date | None = None,
) -> list[PatientRow]:
    today = today or datetime.now(AGGREGATE_ZONE).date()
    listed = patients(search, group, organization)
    ids = [p["id"] for p in listed]
    first = (today - timedelta(days=DAYS - 1)).isoformat()
    windows = aggregates.window(first, today.isoformat(), ids)
    cgm_users = aggregates.cgm_patients(ids)
    hba1c = latest_hba1c(search, ids)
    rows = []
    for resource in listed:
        row = PatientRow(resource["id"], patient_name(resource))
        cgm_figures(row, windows.get(row.id))
        latest = hba1c.get(row.id)
        if latest is not None:
            row.hba1c_value, row.hba1c = hba1c_percent(latest)
            row.hba1c_date = (latest.get("effectiveDateTime") or "")[:10] or None
        if row.tbr54 is not None and row.tbr54 > 1:
            row.flags.append(FLAG_TBR54)
        if row.tbr is not None and row.tbr > 4:
            row.flags.append(FLAG_TBR70)
        year_ago = (today - timedelta(days=HBA1C_MONTHS_DAYS)).isoformat()
        if row.hba1c_date is None or row.hba1c_date < year_ago:
            row.flags.append(FLAG_NO_HBA1C)
        stale = (today - timedelta(days=STALE_CGM_DAYS)).isoformat()
        if row.id in cgm_users and (row.last_cgm_day is None or row.last_cgm_day <= stale):
            row.flags.append(FLAG_STALE_CGM)
        rows.append(row)
    return rows


def sort_rows(rows: list[PatientRow], key: str) -> list[PatientRow]:
    """By `key` (SORT_KEYS; `-key` descending); missing values last either way."""
    descending = key.startswith("-")
    name = key.removeprefix("-")
    if name not in SORT_KEYS:
        raise SearchError(f"sort must be one of {', '.join(SORT_KEYS)} (- for descending)", "sort")

    def value(row: PatientRow) -> Any:
        if name == "flags":
            return len(row.flags)
        if name == "hba1c":
            return row.hba1c_value
        if name == "wear":
            return row.wear_days
        return getattr(row, name)

    present = [r for r in rows if value(r) is not None]
    missing = [r for r in rows if value(r) is None]
    present.sort(key=lambda r: (value(r), r.name), reverse=descending)
    return present + sorted(missing, key=lambda r: r.name)
