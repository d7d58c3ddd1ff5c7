"""A generated diabetes population loaded in-process, and the scale check on it.

The population comes from `fhir_server.synthetic` (seed 1) and goes through the same path as
`diatabase generate --load`: the `Loader`, one storage transaction per chunk of 500
resources, validation and index extraction included, no HTTP. Rows:

- `load`: resources/s over the whole load, p50/p99 per 500-resource chunk, database size on
  disk, and as floor a plain SQLite `executemany` of the same documents in the same run;
- `load step k`: the rate of each successive step (100,000 resources on medium, 1,000,000 on
  large): does ingest slow down as the database grows?
- `search@N`: typical app searches over HTTP (`diatabase serve` on that database, 4
  clients) once N resources are stored: at the end, and on large also at 1 million.

    python -m bench.population [--size small|medium|large] [--db URL]

medium is about 1 million resources (100 patients x 95 days), large about 10 million
(315 patients x 365 days: a third of the generated patients wear a CGM).
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.common import Result, own_peak_rss_mb, percentile, print_table, serve
from bench.http_load import expect_ok, run_gets

SEED = 1
POPULATIONS = {  # patients, days, resources per load step, search checkpoints (resources)
    "small": (8, 3, 0, ()),
    "medium": (100, 95, 100_000, ()),
    "large": (315, 365, 1_000_000, (1_000_000,)),  # 260 patients gave 8,253,142
}
SEARCH_CLIENTS = 4
SEARCH_ROUNDS = {"small": 2, "medium": 10, "large": 10}  # requests per query shape


@dataclass
class Population:
    """A database holding the generated population, and what loading it measured."""

    db_url: str
    size: str
    patients: int
    days: int
    resources: int = 0
    seconds: float = 0.0
    chunk_ms: list[float] = field(default_factory=list)
    steps: list[tuple[int, int, float]] = field(default_factory=list)  # from, to, rate
    searches: list[Result] = field(default_factory=list)
    sample: dict[str, list[str]] = field(default_factory=dict)  # type -> some ids
    peak_rss_mb: float = 0.0

    def disk_mb(self) -> float | None:
        if not self.db_url.startswith("sqlite:///"):
            return None
        path = Path(self.db_url.removeprefix("sqlite:///"))
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        return sum(f.stat().st_size for f in files if f.exists()) / 1e6


def _generated(patients: int, days: int) -> Iterator[dict[str, Any]]:
    from fhir_server.synthetic import generate

    return generate(patients, days, SEED)


def _sampling(resources: Iterator[dict[str, Any]], sample: dict[str, list[str]],
              every: int = 97, keep: int = 500) -> Iterator[dict[str, Any]]:
    """Pass the resources through, keeping a spread of ids per type for the read bench."""
    for n, resource in enumerate(resources):
        ids = sample.setdefault(resource["resourceType"], [])
        if len(ids) < keep and (n % every == 0 or len(ids) < 5):
            ids.append(resource["id"])
        yield resource


def load(size: str, db_url: str,
         at_checkpoint: Callable[[Population, int], None] | None = None,
         shape: tuple[int, int] | None = None) -> Population:
    """Generate and load the population of `size` (or `shape`: patients, days) into
    `db_url`, timing every chunk."""
    from fhir_server.gc_tuning import tune_for_server
    from fhir_server.ingest.loader import Loader
    from fhir_server.service.fhir import FhirService
    from fhir_server.settings import Settings
    from fhir_server.storage import open_storage

    patients, days, step, checkpoints = (*shape, 0, ()) if shape else POPULATIONS[size]
    population = Population(db_url, size, patients, days)
    settings = Settings.from_env(db_url=db_url)
    service = FhirService(open_storage(db_url), settings)
    tune_for_server()  # as `diatabase load` does
    pending_checkpoints = list(checkpoints)
    now = time.perf_counter()
    state = {"chunk": now, "step_time": now, "step_count": 0, "paused": 0.0}

    def progress(count: int) -> None:
        now = time.perf_counter()
        population.chunk_ms.append((now - state["chunk"]) * 1000)
        population.resources += count
        stored = population.resources
        if step and stored - state["step_count"] >= step:
            rate = (stored - state["step_count"]) / (now - state["step_time"])
            population.steps.append((state["step_count"], stored, rate))
            state["step_count"], state["step_time"] = stored, now
        if pending_checkpoints and stored >= pending_checkpoints[0]:
            pending_checkpoints.pop(0)
            if at_checkpoint:
                at_checkpoint(population, stored)
            # Measuring at the checkpoint is not loading time.
            paused = time.perf_counter() - now
            state["paused"] += paused
            state["step_time"] += paused
        state["chunk"] = time.perf_counter()

    loader = Loader(service, on_progress=progress)
    started = time.perf_counter()
    try:
        report = loader.load_resources(_sampling(_generated(patients, days), population.sample),
                                       where="population")
    finally:
        service.storage.close()
    population.seconds = time.perf_counter() - started - state["paused"]
    population.peak_rss_mb = own_peak_rss_mb()
    if report.failed:
        raise RuntimeError(f"{len(report.failed)} generated resources rejected: "
                           f"{report.failed[:3]}")
    return population


def sqlite_floor(patients: int, days: int) -> float:
    """Documents/s of a plain executemany of the same generated documents into SQLite
    (WAL, synchronous=NORMAL, 1,000 a transaction); generating them is not timed."""
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(Path(tmp) / "floor.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE r (type TEXT, id TEXT, json BLOB, PRIMARY KEY (type, id))")
        spent, total, batch = 0.0, 0, []
        dumps = orjson.dumps

        def flush() -> float:
            started = time.perf_counter()
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO r VALUES (?, ?, ?)", batch)
            conn.execute("COMMIT")
            batch.clear()
            return time.perf_counter() - started

        for resource in _generated(patients, days):
            batch.append((resource["resourceType"], resource["id"], dumps(resource)))
            total += 1
            if len(batch) == 1000:
                spent += flush()
        if batch:
            spent += flush()
        conn.close()
    return total / spent


def search_targets(population: Population, rounds: int) -> dict[str, list[str]]:
    """Typical app searches, `rounds` of each over different patients."""
    from fhir_server.synthetic.generator import DEFAULT_END_DATE

    last_day = DEFAULT_END_DATE.isoformat()
    patients = [f"p-{SEED}-{n}" for n in range(population.patients)]
    picks = [patients[(n * 7) % len(patients)] for n in range(rounds)]
    return {
        "one patient's glucose on the last day": [
            f"/Observation?subject=Patient/{p}&code=http://loinc.org|99504-3,"
            f"http://loinc.org|41653-7,http://loinc.org|15074-8&date=ge{last_day}&_count=300"
            for p in picks],
        "latest HbA1c of a patient": [
            f"/Observation?patient={p}&code=http://loinc.org|4548-4&_sort=-date&_count=1"
            for p in picks],
        "type 2 diabetes Conditions (ICD-10 E11.x)": [
            "/Condition?code:below=http://hl7.org/fhir/sid/icd-10|E11&_count=50"] * rounds,
        "hypoglycaemias < 54 mg/dL of a patient": [
            f"/Observation?subject=Patient/{p}&value-quantity=lt54||mg/dL&_count=100"
            for p in picks],
        "a patient's Conditions and medications (_revinclude)": [
            f"/Patient?_id={p}&_revinclude=Condition:subject"
            f"&_revinclude=MedicationStatement:subject" for p in picks],
    }


def measure_searches(population: Population, stored: int) -> list[Result]:
    rounds = SEARCH_ROUNDS[population.size]
    rows = []
    with serve(population.db_url) as server:
        for label, targets in search_targets(population, rounds).items():
            run_gets(server.url, targets[:1], 1)  # warm the query's code path
            figures = run_gets(server.url, targets, SEARCH_CLIENTS)
            expect_ok(figures, label)
            rows.append(Result(
                f"search@{stored / 1e6:.1f}M" if stored >= 100_000 else f"search@{stored:,}",
                f"{label}, {len(targets)} requests, {SEARCH_CLIENTS} clients",
                figures.rate, "req/s",
                percentile(figures.latencies_ms, 50), percentile(figures.latencies_ms, 99),
                server.peak_rss_mb()))
    return rows


_LOADED: dict[tuple[str, str | None], Population] = {}


def loaded(size: str, db: str | None = None, with_searches: bool = False) -> Population:
    """The population of `size`, loaded once per process (the read and export benches reuse
    it): into `db`, or into a SQLite file removed when the process ends."""
    key = (size, db)
    if key not in _LOADED:
        url = db
        if url is None:
            folder = tempfile.mkdtemp(prefix="diatabase-bench-")
            atexit.register(shutil.rmtree, folder, True)
            url = f"sqlite:///{folder}/population.db"

        def checkpoint(population: Population, stored: int) -> None:
            if with_searches:
                population.searches += measure_searches(population, stored)

        population = load(size, url, checkpoint)
        if with_searches:
            population.searches += measure_searches(population, population.resources)
        _LOADED[key] = population
    return _LOADED[key]


def run(size: str = "small", db: str | None = None) -> list[Result]:
    fresh = (size, db) not in _LOADED
    population = loaded(size, db, with_searches=True)
    if not fresh and not population.searches:
        population.searches = measure_searches(population, population.resources)
    floor = sqlite_floor(population.patients, population.days)
    disk = population.disk_mb()
    backend = (db or "sqlite").split(":", 1)[0]
    rows = [Result(
        "load",
        f"{population.resources:,} generated resources ({population.patients} patients x "
        f"{population.days} days), Loader in-process, 500 a transaction"
        + (f"; {disk:,.0f} MB on disk" if disk is not None else "")
        + f"; {population.seconds:,.0f} s",
        population.resources / population.seconds, "resources/s",
        statistics.median(population.chunk_ms), percentile(population.chunk_ms, 99),
        population.peak_rss_mb, f"sqlite executemany {floor:,.0f} docs/s", backend)]
    for k, (first, last, rate) in enumerate(population.steps, start=1):
        rows.append(Result(f"load step {k}",
                           f"resources {first:,} to {last:,}", rate, "resources/s",
                           backend=backend))
    return rows + population.searches


def stage_breakdown(patients: int = 20, days: int = 3) -> list[tuple[str, float]]:
    """Where the Loader's time goes: CPU µs per generated resource for each stage run on its
    own over the same resources (profile + schema validation, index extraction), and for
    the whole load into a fresh SQLite file; the rest is storage and bookkeeping."""
    from fhir_server.ingest.loader import Loader
    from fhir_server.service.fhir import FhirService
    from fhir_server.settings import Settings
    from fhir_server.storage import open_storage

    resources = list(_generated(patients, days))
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/stages.db"
        service = FhirService(open_storage(url), Settings.from_env(db_url=url))
        try:
            Loader(service).load_resources(resources[:200])  # warm every type's code path
            stages = []
            for label, stage in (("validation (schema + profiles)", service.resources.validate),
                                 ("index extraction", service.extractor.extract)):
                started = time.process_time()
                for resource in resources:
                    stage(resource)
                stages.append((label, (time.process_time() - started) / len(resources) * 1e6))
            started = time.process_time()
            Loader(service).load_resources(resources[200:])
            whole = (time.process_time() - started) / (len(resources) - 200) * 1e6
        finally:
            service.storage.close()
    rest = whole - sum(us for _, us in stages)
    return [("whole load (Loader, 500 a transaction)", whole), *stages,
            ("the rest: SQLite writes, reads for versioning, bookkeeping", rest)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(POPULATIONS), default="small")
    parser.add_argument("--db", default=None, help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--stages", action="store_true",
                        help="print where the Loader's time goes instead (CPU µs/resource)")
    args = parser.parse_args()
    if args.stages:
        for label, micros in stage_breakdown():
            print(f"{label:<60} {micros:8.0f} µs/resource")
        return
    print_table(run(args.size, args.db), f"population: {args.size}")


if __name__ == "__main__":
    main()
