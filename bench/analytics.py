"""SQL on FHIR views: rows/s of the runner (compiled FHIRPath and fhirpathpy alone),
`ViewDefinition/$run` over HTTP, and `views materialize` (time, Parquet size).

    python -m bench.analytics [--size small|medium|large]

Sizes: the runner over 2,000 / 1,000,000 / 1,000,000 Observations (generated in memory,
no storage); fhirpathpy alone over at most 20,000 (it is much slower); a SQLite store of
60 / 3,000 / 30,000 patients with about 2,000 / 100,000 / 1,000,000 Observations (CGM
readings and HbA1c) for $run over HTTP, the materialisation of the shipped views and
$evaluate-measure of the shipped indicators. Medians of 3 runs.
Prints a table; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.common import Result, own_peak_rss_mb, print_table

RUNNER_SIZES = {"small": 2_000, "medium": 1_000_000, "large": 1_000_000}
STORE_SIZES = {"small": 2_000, "medium": 100_000, "large": 1_000_000}
PATIENTS = {"small": 60, "medium": 3_000, "large": 30_000}
FHIRPATHPY_CAP = 20_000
ROUNDS = 3

VIEW: dict[str, Any] = {
    "resourceType": "ViewDefinition",
    "name": "glucose",
    "status": "active",
    "resource": "Observation",
    "select": [{"column": [
        {"name": "id", "path": "getResourceKey()"},
        {"name": "patient", "path": "subject.getReferenceKey(Patient)"},
        {"name": "code", "path": "code.coding.where(system = 'http://loinc.org').code.first()"},
        {"name": "value", "path": "value.ofType(Quantity).value", "type": "decimal"},
        {"name": "unit", "path": "value.ofType(Quantity).code"},
        {"name": "effective", "path": "effective.ofType(dateTime)", "type": "dateTime"},
    ]}],
    "where": [{"path": "status = 'final'"}],
}  # fmt: skip


def observation(i: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"obs-{i}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "99504-3"}]},
        "subject": {"reference": f"Patient/p-{i % 1000}"},
        "effectiveDateTime": f"2024-03-{1 + i % 28:02d}T08:{i % 60:02d}:00+01:00",
        "valueQuantity": {"value": 80 + i % 200, "unit": "mg/dL",
                          "system": "http://unitsofmeasure.org", "code": "mg/dL"},
    }  # fmt: skip


def _observations(n: int) -> Iterator[dict[str, Any]]:
    return (observation(i) for i in range(n))


def _runner_rate(n: int, slow: bool) -> float:
    from fhir_server.analytics import fhirpath, viewdefinition
    from fhir_server.analytics.runner import run_view

    original = viewdefinition.compile_path
    if slow:
        viewdefinition.compile_path = lambda e, v=frozenset(): fhirpath.compile_slow(e)
    try:
        view = viewdefinition.compile_view(VIEW)
        rates = []
        for _ in range(ROUNDS):
            started = time.perf_counter()
            rows = sum(1 for _ in run_view(view, _observations(n)))
            rates.append(rows / (time.perf_counter() - started))
    finally:
        viewdefinition.compile_path = original
    return statistics.median(rates)


def cohort(patients: int, observations: int) -> Iterator[dict[str, Any]]:
    """Patients (sex, age, postal code), a diabetes Condition for 5 in 6, 0-3 HbA1c in
    2024, and CGM readings for one patient in 3, about `observations` Observations."""
    wearers = max(1, patients // 3)
    per_wearer = max(1, observations // wearers)
    postal = ("75011", "13001", "69003", "20090", "97400", "33000", "59000")
    for i in range(patients):
        pid = f"p-{i}"
        yield {"resourceType": "Patient", "id": pid, "gender": ("male", "female")[i % 2],
               "birthDate": f"{1940 + i % 70}-06-15",
               "address": [{"postalCode": postal[i % len(postal)]}]}  # fmt: skip
        if i % 6 != 5:
            yield {"resourceType": "Condition", "id": f"c-{i}",
                   "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10",
                                        "code": "E11.9"}]},
                   "subject": {"reference": f"Patient/{pid}"}}  # fmt: skip
        for k in range(i % 4):
            yield {"resourceType": "Observation", "id": f"h-{i}-{k}", "status": "final",
                   "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
                   "subject": {"reference": f"Patient/{pid}"},
                   "effectiveDateTime": f"2024-{3 + 3 * k:02d}-10T09:00:00+01:00",
                   "valueQuantity": {"value": 6.5 + (i % 5) * 0.6, "unit": "%",
                                     "system": "http://unitsofmeasure.org",
                                     "code": "%"}}  # fmt: skip
        if i % 3 == 0:
            for k in range(per_wearer):
                reading = observation(i * per_wearer + k)
                reading["subject"] = {"reference": f"Patient/{pid}"}
                yield reading


def _median_seconds(call: Any) -> float:
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run(size: str = "small", db: str | None = None) -> list[Result]:
    results = []
    n = RUNNER_SIZES[size]
    results.append(
        Result(
            "analytics",
            f"runner, compiled FHIRPath ({n:,} Observations)",
            _runner_rate(n, slow=False),
            "rows/s",
            peak_rss_mb=own_peak_rss_mb(),
        )
    )
    slow_n = min(n, FHIRPATHPY_CAP)
    results.append(Result("analytics", f"runner, fhirpathpy alone ({slow_n:,} Observations)",
                          _runner_rate(slow_n, slow=True), "rows/s"))  # fmt: skip

    import uvicorn

    from fhir_server.analytics.indicators import shipped_indicators
    from fhir_server.analytics.materialize import Materializer, StoreSource
    from fhir_server.app import create_app
    from fhir_server.ingest.loader import Loader
    from fhir_server.service.fhir import FhirService
    from fhir_server.settings import Settings
    from fhir_server.storage import open_storage

    stored, patients = STORE_SIZES[size], PATIENTS[size]
    views = [r for r in shipped_indicators() if r["resourceType"] == "ViewDefinition"]
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'bench.db'}"
        out = Path(folder) / "views"
        settings = Settings(db_url=url, insecure_dev=True, audit=False, views_dir=str(out),
                            validation="off")  # fmt: skip
        service = FhirService(open_storage(url), settings)
        Loader(service).load_resources(cohort(patients, stored))

        materializer = Materializer(out, StoreSource(service.storage))
        started = time.perf_counter()
        rows = sum(materializer.materialize(v).rows for v in views)
        first = time.perf_counter() - started
        size_mb = sum(p.stat().st_size for p in out.glob("*.parquet")) / 1e6
        results.append(
            Result(
                "analytics",
                f"materialize the shipped views, first run ({rows:,} "
                f"rows, Parquet {size_mb:.2f} MB)",
                rows / first,
                "rows/s",
            )
        )
        Loader(service).load_resources(observation(i) for i in range(max(1, stored // 100)))
        started = time.perf_counter()
        changed = sum(materializer.materialize(v).changed_resources for v in views)
        update = time.perf_counter() - started
        materializer.close()
        results.append(
            Result(
                "analytics",
                f"materialize, update ({changed:,} resources re-read, {update:.2f} s)",
                changed / update,
                "resources/s",
            )
        )

        config = uvicorn.Config(create_app(settings, service), host="127.0.0.1", port=0,
                                log_level="warning")  # fmt: skip
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 180
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        body = {"resourceType": "Parameters", "parameter": [
            {"name": "viewResource", "resource": VIEW}]}  # fmt: skip
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as http:
            total = sum(1 for _ in http.post("/ViewDefinition/$run", params={"_format": "ndjson"},
                                             json=body).iter_lines())  # fmt: skip
            for fmt in ("ndjson", "csv", "parquet"):
                sizes = []

                def run_once(fmt: str = fmt, sizes: list = sizes) -> None:
                    answer = http.post("/ViewDefinition/$run", params={"_format": fmt}, json=body)
                    assert answer.status_code == 200, answer.text[:300]
                    sizes.append(len(answer.content))

                seconds = _median_seconds(run_once)
                results.append(Result("analytics", f"$run over HTTP, {fmt} ({total:,} rows, "
                                      f"{statistics.median(sizes) / 1e6:.1f} MB)",
                                      total / seconds, "rows/s"))  # fmt: skip
            period = {"periodStart": "2024-01-01", "periodEnd": "2024-12-31"}
            for measure in ("hba1c-twice", "hba1c-above-8", "tir-above-70", "no-hba1c"):
                latencies = []

                def evaluate(measure: str = measure, latencies: list = latencies) -> None:
                    started = time.perf_counter()
                    answer = http.get(f"/Measure/{measure}/$evaluate-measure", params=period)
                    assert answer.status_code == 200, answer.text[:300]
                    latencies.append((time.perf_counter() - started) * 1000)

                _median_seconds(evaluate)
                results.append(Result("analytics", f"$evaluate-measure {measure} ({patients:,} "
                                      "patients, stratified)", 1000 / statistics.median(
                                          latencies), "req/s",
                                      p50_ms=statistics.median(latencies),
                                      p99_ms=max(latencies)))  # fmt: skip
        server.should_exit = True
        thread.join(timeout=60)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", choices=tuple(RUNNER_SIZES), default="small")
    args = parser.parse_args()
    print_table(run(args.size))


if __name__ == "__main__":
    main()
