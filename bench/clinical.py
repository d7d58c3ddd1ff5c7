"""Diabetes care: `$lastn` on a patient with a year of 5-minute readings, CGM metrics over
14 and 90 days, the AGP rendered as HTML and PDF, the patient list at N patients.

    python -m bench.clinical [--size small|medium]

In-process, through the services the HTTP routes call (FhirService, CgmService, the list
builder): the figures are the clinical work, not HTTP. Medians of RUNS runs.

- readings: one patient's CGM every 5 minutes (small 10 days, medium a year: 105,120)
  plus five HbA1c, loaded through the services (so the code catalogue and the daily
  aggregates are kept as in production);
- the patient list: N patients (small 50, medium 1,000) with 90 days of daily aggregates
  each and an HbA1c; the aggregates are written directly (a day's row is what 288 readings
  leave there), since loading 26 million readings takes hours on one machine; the list's
  own work (patients, HbA1c search, aggregates, rows, HTML) is what is measured.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from bench.common import Result, own_peak_rss_mb, print_table
from fhir_server.clinical.agp_text import TEXT
from fhir_server.clinical.indexes import DAY_FIELDS
from fhir_server.clinical.lastn import lastn
from fhir_server.clinical.patient_list import build_rows, sort_rows
from fhir_server.clinical.service import CgmRequest, CgmService
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage import open_storage
from fhir_server.ui.agp_page import AgpReport
from fhir_server.ui.pages import render

READING_DAYS = {"small": 10, "medium": 365, "large": 365}
LIST_PATIENTS = {"small": 50, "medium": 1000, "large": 1000}
RUNS = 5
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
END = date(2025, 12, 31)


def observation(pid: str, code: str, when: datetime, value: float, unit: str) -> dict:
    return {
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": when.isoformat(),
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
        "device": {"reference": "Device/bench-sensor"},
    }


def load_readings(svc: FhirService, days: int) -> None:
    res = svc.resources
    res.update("Patient", "p1", {"resourceType": "Patient", "id": "p1",
                                 "name": [{"family": "Bench", "given": ["Year"]}]})
    start = datetime.combine(END - timedelta(days=days - 1), datetime.min.time(), UTC)
    batch = []
    for i in range(days * 288):
        value = 140 + 60 * ((i % 288) / 288 - 0.5) + (i * 37 % 41) - 20
        batch.append(res.prepare_create("Observation", observation(
            "p1", "99504-3", start + timedelta(minutes=5 * i), round(value), "mg/dL")))
        if len(batch) == 5000:
            with res.storage.transaction() as tx:
                res.create_prepared_many(tx, batch)
            batch = []
    for k in range(5):
        batch.append(res.prepare_create("Observation", observation(
            "p1", "4548-4", start + timedelta(days=70 * k), 7 + k / 10, "%")))
    with res.storage.transaction() as tx:
        res.create_prepared_many(tx, batch)


def load_list(svc: FhirService, patients: int, today: date) -> None:
    res = svc.resources
    prepared = []
    for n in range(patients):
        pid = f"l{n}"
        res.update("Patient", pid, {"resourceType": "Patient", "id": pid,
                                    "name": [{"family": f"Patient{n}", "given": ["List"]}]})
        prepared.append(res.prepare_create("Observation", observation(
            pid, "4548-4", datetime.combine(today - timedelta(days=n % 400), datetime.min.time(),
                                            UTC), 6.5 + n % 30 / 10, "%")))
    with res.storage.transaction() as tx:
        res.create_prepared_many(tx, prepared)
    rows = []
    for n in range(patients):
        for d in range(90):
            low = n % 7
            rows.append((f"l{n}", (today - timedelta(days=d)).isoformat(),
                         288, 288 * 150.0, 288 * 150.0 ** 2, low // 3, low, 288 - 2 * low - 20,
                         20 + low - low // 3, 0))
    conn = svc.indexed.backend._connect()
    with conn:
        conn.executemany(
            f"INSERT OR REPLACE INTO cgm_days VALUES (?, ?, {', '.join('?' for _ in DAY_FIELDS)})",
            rows)
    conn.close()


def timed(work, runs: int = RUNS) -> list[float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        work()
        times.append((time.perf_counter() - t) * 1000)
    return times


def row(name: str, workload: str, times: list[float]) -> Result:
    median = statistics.median(times)
    return Result(name, workload, 1000 / median if median else None, "ops/s", median,
                  max(times), own_peak_rss_mb())


def run(size: str = "small", db: str | None = None) -> list[Result]:
    days = READING_DAYS[size]
    patients = LIST_PATIENTS[size]
    results = []
    with tempfile.TemporaryDirectory() as folder:
        url = db or f"sqlite:///{Path(folder) / 'clinical.db'}"
        svc = FhirService(open_storage(url), Settings(db_url=url))
        t = time.perf_counter()
        load_readings(svc, days)
        load_s = time.perf_counter() - t
        readings = days * 288
        results.append(Result("clinical load", f"{readings:,} CGM readings + 5 HbA1c, one "
                              "patient, through the services (catalogue and aggregates kept)",
                              readings / load_s, "res/s", None, None, own_peak_rss_mb()))
        for keep in (1, 3):
            items = [("patient", "p1"), ("code", f"{LOINC}|4548-4,{LOINC}|99504-3"),
                     ("max", str(keep))]
            results.append(row("clinical $lastn", f"max={keep}, patient with {readings:,} "
                               "readings and 5 HbA1c", timed(
                lambda items=items: lastn(svc.search, items, "", False, None,
                                          svc.indexed.clinical))))
        cgm = CgmService(svc)
        end = END.isoformat()
        for span in (14, 90):
            start = (END - timedelta(days=span - 1)).isoformat()
            request = CgmRequest(start, end)
            found = cgm.metrics("p1", request).readings
            results.append(row("clinical $cgm-metrics", f"{span} days ({found:,} readings "
                               "read, metrics computed)", timed(
                lambda request=request: cgm.metrics("p1", request), 3)))
        metrics = cgm.metrics("p1", CgmRequest((END - timedelta(days=13)).isoformat(), end))
        report = AgpReport.of(metrics, "Year BENCH", "en", "mg/dL")
        links = {"pdf_url": "x", "png_url": "y", "list_url": None}
        results.append(row("clinical AGP html", "14 days, 3 SVG charts + metrics panel",
                           timed(lambda: report.html(links), 3)))
        results.append(row("clinical AGP pdf", "14 days, one A4 page",
                           timed(lambda: report.page("pdf"), 3)))
        today = END
        load_list(svc, patients, today)
        t = TEXT["en"]

        def patient_list() -> None:
            rows = sort_rows(build_rows(svc.search, svc.indexed.clinical, today=today), "-tbr")
            render("patients.html", lang="en", title="x", t=t, rows=rows, columns=[],
                   sort_links={}, base="", query="", days=14, severe=set(),
                   fmt=lambda v: "-" if v is None else f"{v:.1f}")

        results.append(row("clinical patient list", f"{patients:,} patients x 90 days of "
                           "aggregates, latest HbA1c, sorted, HTML", timed(patient_list)))
        svc.storage.close()
    return results


def main() -> None:
    size = sys.argv[sys.argv.index("--size") + 1] if "--size" in sys.argv else "small"
    print_table(run(size))


if __name__ == "__main__":
    main()
