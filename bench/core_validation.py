"""The R4 core rules' cost: validation per resource, before (schema and profiles, what a
write checked until now: DIATABASE_VALIDATION=off) and after (the core rules too, the
default `strict`), side by side in one run.

CPU time of this process (`time.process_time`), median of the runs, for: glucose
Observations claiming BloodGlucose (each reading distinct, as a device import sends them:
the memo learns from the first ones), the R4 example Patient, a 100-entry transaction
Bundle of glucose Observations, and a Synthea patient Bundle (tests/data/fhir/synthea).

    python -m bench.core_validation [--size small|medium|large]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bench.common import Result, own_peak_rss_mb, print_table
from bench.validate import GLUCOSE_RULE, glucose
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage import open_storage

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "fhir"
SIZES = {"small": (1, 200), "medium": (5, 3000), "large": (7, 10000)}  # runs, readings


def _service(folder: str, mode: str) -> FhirService:
    settings = Settings(db_url=f"sqlite:///{folder}/{mode}.db", validation=mode,
                        require_profiles=(GLUCOSE_RULE,))
    return FhirService(open_storage(settings.db_url), settings)


def _cpu_per_item(check: Callable[[Any], Any], items: list, runs: int) -> float:
    """Median µs of CPU per item; the first run warms caches and memos (not counted)."""
    timings = []
    for _ in range(runs + 1):
        started = time.process_time()
        for item in items:
            check(item)
        timings.append((time.process_time() - started) / len(items) * 1e6)
    return statistics.median(timings[1:])


def _transaction(size: int) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}", "resource": glucose(i),
         "request": {"method": "POST", "url": "Observation"}} for i in range(size)]}


def workloads(readings: int) -> list[tuple[str, list]]:
    synthea = sorted((DATA / "synthea").glob("*.json"))[0]
    return [
        ("glucose Observation (BloodGlucose)", [glucose(i) for i in range(readings)]),
        ("Patient (R4 example)", [orjson.loads((DATA / "r4-examples" /
                                               "Patient-example.json").read_bytes())] * 20),
        ("transaction Bundle, 100 glucose entries", [_transaction(100)] * 3),
        (f"Synthea patient Bundle ({synthea.name.split('_')[0]})",
         [orjson.loads(synthea.read_bytes())] * 2),
    ]


def run(size: str, db: str | None = None) -> list[Result]:
    runs, readings = SIZES[size]
    results = []
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        before, after = _service(folder, "off"), _service(folder, "strict")
        for name, items in workloads(readings):
            plain = _cpu_per_item(before.resources.write_issues, copy.deepcopy(items), runs)
            core = _cpu_per_item(after.resources.write_issues, copy.deepcopy(items), runs)
            rows.append((name, plain, core))
            results.append(Result("core_validation", f"{name}: before", 1e6 / plain,
                                  "resources/s", plain / 1000, None, own_peak_rss_mb()))
            results.append(Result("core_validation", f"{name}: after", 1e6 / core,
                                  "resources/s", core / 1000, None, own_peak_rss_mb(),
                                  floor=f"+{core - plain:,.0f} µs"))
    print(f"{'resource':<45} {'before µs':>12} {'after µs':>12} {'added µs':>10}")
    for name, plain, core in rows:
        print(f"{name:<45} {plain:>12,.1f} {core:>12,.1f} {core - plain:>10,.1f}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="medium")
    args = parser.parse_args()
    print_table(run(args.size), "validation per resource (CPU), before and after the core rules")


if __name__ == "__main__":
    main()
