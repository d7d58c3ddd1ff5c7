"""Patients' rights: what the transparency figures, the objection check and SQLite's
secure_delete cost, on the generated population (bench/population.py, loaded once per
process with read, export and deid).

Rows:
- `rights transparency`: computing the public figures (two grouped queries: the resources
  by day, the `_source` index rows; the objections, the exports); resources per second,
  p50/p99 of 5 runs;
- `rights objection check`: the registry's per-request question when nothing changed (the
  newest Consent version and the Consent count), p50/p99 of 2,000 calls;
- `rights updates secure_delete on|off`: single-resource updates (each replaces its index
  rows: what secure_delete zeroes), side by side in one run.

    python -m bench.rights [--size small|medium|large] [--db URL]
"""

from __future__ import annotations

import argparse
import time

import orjson

from bench.common import Result, percentile, print_table
from bench.population import loaded
from fhir_server.rights.objections import Objections
from fhir_server.rights.transparency import Transparency
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage import open_storage

FIGURE_RUNS = 5
CHECKS = 2000
UPDATES = {"small": 100, "medium": 500, "large": 500}  # the population keeps 500 ids a type


def _timed(call, runs: int) -> list[float]:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times


def run(size: str = "small", db: str | None = None) -> list[Result]:
    population = loaded(size, db)
    settings = Settings(db_url=population.db_url, audit=False)
    service = FhirService(open_storage(population.db_url), settings)
    rows = []
    try:
        transparency = Transparency(service)
        figures = _timed(transparency.compute, FIGURE_RUNS)
        p50 = percentile(figures, 50)
        rows.append(Result(
            "rights transparency",
            f"public figures over {population.resources:,} resources, {FIGURE_RUNS} runs",
            population.resources / (p50 / 1000), "resources/s", p50, percentile(figures, 99)))
        objections = Objections(service.storage, service.search.parse)
        objections.current()
        checks = _timed(objections.current, CHECKS)
        rows.append(Result(
            "rights objection check", f"objections unchanged, {CHECKS:,} calls",
            1000 / percentile(checks, 50), "calls/s", percentile(checks, 50),
            percentile(checks, 99)))
        ids = population.sample.get("Observation", [])[: UPDATES[size]]
        writer = service.indexed.backend._writer
        for mode in ("ON", "OFF"):
            writer.execute(f"PRAGMA secure_delete={mode}")
            latencies = []
            for rid in ids:
                stored = service.storage.read("Observation", rid)
                body = orjson.loads(stored.json)
                body["status"] = "amended" if body.get("status") != "amended" else "final"
                started = time.perf_counter()
                service.resources.update("Observation", rid, body)
                latencies.append((time.perf_counter() - started) * 1000)
            rows.append(Result(
                f"rights updates secure_delete {mode.lower()}",
                f"{len(ids):,} single Observation updates (index rows replaced)",
                1000 / (sum(latencies) / len(latencies)), "updates/s",
                percentile(latencies, 50), percentile(latencies, 99)))
        writer.execute("PRAGMA secure_delete=ON")
    finally:
        service.storage.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(UPDATES), default="small")
    parser.add_argument("--db", default=None, help="database URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    print_table(run(args.size, args.db))


if __name__ == "__main__":
    main()
