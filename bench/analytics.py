"""SQL on FHIR views: rows/s of the runner (compiled FHIRPath and fhirpathpy alone),
`ViewDefinition/$run` over HTTP, and `views materialize` (time, Parquet size).

    python -m bench.analytics [--size small|medium|large]

Sizes (Observations): runner 2,000 / 1,000,000 / 1,000,000 (generated in memory, no
storage); fhirpathpy alone at most 20,000 (it is ~50x slower); $run over HTTP and the
materialisation over a SQLite store of 2,000 / 100,000 / 1,000,000. Medians of 3 runs.
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


def _load(service: Any, n: int) -> None:
    for i in range(n):
        resource = observation(i)
        service.resources.update("Observation", resource["id"], resource)


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

    from fhir_server.analytics.materialize import Materializer, StoreSource
    from fhir_server.app import create_app
    from fhir_server.service.fhir import FhirService
    from fhir_server.settings import Settings
    from fhir_server.storage import open_storage

    stored = STORE_SIZES[size]
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'bench.db'}"
        settings = Settings(db_url=url, insecure_dev=True, audit=False)
        service = FhirService(open_storage(url), settings)
        _load(service, stored)
        out = Path(folder) / "views"
        materializer = Materializer(out, StoreSource(service.storage))
        full = materializer.materialize(VIEW)
        _load(service, max(1, stored // 100))  # 1 % of the readings written again
        update = materializer.materialize(VIEW)
        materializer.close()
        results.append(Result("analytics", f"materialize, first run ({stored:,} rows, Parquet "
                              f"{full.parquet_bytes / 1e6:.2f} MB)", stored / full.seconds,
                              "rows/s"))  # fmt: skip
        results.append(
            Result(
                "analytics",
                f"materialize, update ({update.changed_resources:,} "
                f"resources re-read, {update.seconds:.2f} s)",
                update.changed_resources / update.seconds,
                "resources/s",
            )
        )
        config = uvicorn.Config(create_app(settings, service), host="127.0.0.1", port=0,
                                log_level="warning")  # fmt: skip
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 120
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        body = {"resourceType": "Parameters", "parameter": [
            {"name": "viewResource", "resource": VIEW}]}  # fmt: skip
        for fmt in ("ndjson", "csv", "parquet"):
            rates, sizes = [], []
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as http:
                for _ in range(ROUNDS):
                    started = time.perf_counter()
                    answer = http.post("/ViewDefinition/$run", params={"_format": fmt},
                                       json=body)  # fmt: skip
                    elapsed = time.perf_counter() - started
                    assert answer.status_code == 200, answer.text[:300]
                    rates.append(stored / elapsed)
                    sizes.append(len(answer.content))
            results.append(Result("analytics", f"$run over HTTP, {fmt} ({stored:,} stored, "
                                  f"{statistics.median(sizes) / 1e6:.1f} MB)",
                                  statistics.median(rates), "rows/s"))  # fmt: skip
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
