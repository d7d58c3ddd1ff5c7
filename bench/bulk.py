"""Bulk Data benchmark: `$export` and `$import` of the generated population, `diatabase
load` of the same files beside `$import`, and cohort evaluation at two population sizes.

- `bulk export`: the export job's work (fhir_server/jobs/bulk_export.py, system level,
  every type) into NDJSON files: resources/s and the peak RSS of the export alone (the
  process's peak is reset first), which must stay flat whatever the size;
- `bulk import` and `bulk load`: those files (on medium and large, their first
  IMPORT_SAMPLE lines: a million resources loaded six more times would take hours on this
  machine) into an empty database through the import job's work (jobs/bulk_import.py)
  and through `diatabase load` (ingest/loader.py), side by side in the same run,
  alternating, each into a fresh database, after one unmeasured run of each (the first
  run in a process pays for the validators' and the code's warming: it made the import,
  run first, look 20 % slower than the load);
- `cohort N`: `Group/$evaluate` of "type 2 diabetes, HbA1c above 8 % since December, aged
  65 or more" on N patients (each with a Condition and two HbA1c results), median of runs;
- `group export N`: the `Group/$export` work (every type) of that evaluated cohort;
- `api read`, `api search` and the same `+export`: the API's latency (`diatabase serve` on
  the population, API_CLIENTS clients) without a job, then while system `$export` jobs run
  in the same server (one kicked off again whenever the last one has finished), alternating
  rounds of each, side by side; `+export elsewhere`: the same with the jobs run by a second
  server process on the database and none by the API's (DIATABASE_JOBS_WORKERS=0).

    python -m bench.bulk [--size small|medium|large] [--db URL | --populated URL]

`--populated URL`: a SQLite database that already holds bench.population's population
(all of it or its first patients), used as it is instead of loading one.

The population is bench.population's (medium: about 1 million resources). Each row is
also printed to stderr as soon as it is measured (a medium run takes an hour or more).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx

from bench.common import Result, own_peak_rss_mb, percentile, print_table, serve
from bench.http_load import expect_ok, run_gets
from bench.population import Population, loaded, search_targets

RUNS = {"small": 1, "medium": 3, "large": 1}  # import/load runs each, after a warm-up of each
COHORT_SIZES = {"small": (50, 100), "medium": (1_000, 10_000), "large": (1_000, 10_000)}
COHORT_RUNS = 3
IMPORT_SAMPLE = {"small": None, "medium": 50_000, "large": 1_000_000}  # lines; None: all
WARM_UP_SAMPLE = 500  # lines imported and loaded once, unmeasured, before the runs
API_REQUESTS = {"small": 20, "medium": 500, "large": 500}  # per kind and phase, each round
API_ROUNDS = 2  # alternating rounds of (no job, export running)
API_CLIENTS = 2
API_BATCH = 10  # requests between two looks at the export job


def reset_peak_rss() -> None:
    from bench.run import reset_peak_rss as reset

    reset()


def service_for(db_url: str) -> Any:
    from fhir_server.service.fhir import FhirService
    from fhir_server.settings import Settings
    from fhir_server.storage import open_storage

    settings = Settings(db_url=db_url, audit=True)
    return FhirService(open_storage(db_url), settings)


class _Context:
    """What the import job's work needs of its job: parameters, a folder, progress."""

    def __init__(self, folder: Path, inputs: list[dict[str, str]]) -> None:
        self.folder = folder
        self.params = {"inputs": inputs}
        self.done = 0

    def add(self, n: int, text: str | None = None) -> None:
        self.done += n

    def progress(self, *args: Any, **kwargs: Any) -> None:
        return None


def measure_export(db_url: str, folder: Path) -> tuple[dict[str, Any], float, float]:
    from fhir_server.jobs.bulk_export import export_to
    from fhir_server.jobs.export_request import SYSTEM, parse_export_request

    service = service_for(db_url)
    try:
        request = parse_export_request(SYSTEM, [], service.registry, False)
        reset_peak_rss()
        started = time.perf_counter()
        result = export_to(service, request, folder, lambda group: iter(()),
                           lambda *a, **k: None)
        seconds = time.perf_counter() - started
        return result, seconds, own_peak_rss_mb()
    finally:
        service.storage.close()


def measure_import(files: list[Path], how: str) -> tuple[int, float, float]:
    """(resources stored, seconds, peak RSS MB) of one import into a fresh database."""
    from fhir_server.ingest.loader import Loader
    from fhir_server.jobs.bulk_import import run_import
    from fhir_server.settings import Settings

    folder = Path(tempfile.mkdtemp(prefix="diatabase-bench-import-"))
    db_url = f"sqlite:///{folder}/target.db"
    service = service_for(db_url)
    try:
        reset_peak_rss()
        started = time.perf_counter()
        if how == "import":
            inputs = [{"type": "", "url": path.as_uri()} for path in files]
            settings = Settings(db_url=db_url, import_dirs=(str(files[0].parent),))
            work = folder / "job"
            work.mkdir()
            result = run_import(_Context(work, inputs), service, settings)
            stored = sum(o["count"] for o in result["output"])
            if result["error"]:
                raise RuntimeError(f"the import rejected {result['error'][0]['count']} lines")
        else:
            report = Loader(service).load_files(files)
            stored = report.stored
            if report.failed:
                raise RuntimeError(f"the load rejected {len(report.failed)} resources")
        seconds = time.perf_counter() - started
        return stored, seconds, own_peak_rss_mb()
    finally:
        service.storage.close()
        shutil.rmtree(folder, ignore_errors=True)


def cohort_population(n: int, today: date) -> list[dict[str, Any]]:
    rng = random.Random(n)
    resources: list[dict[str, Any]] = []
    for i in range(n):
        pid = f"p{i}"
        born = f"{rng.randint(1930, 2000)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        resources.append({"resourceType": "Patient", "id": pid, "birthDate": born,
                          "gender": rng.choice(["female", "male"])})
        resources.append({"resourceType": "Condition", "id": f"{pid}-dx",
                          "subject": {"reference": f"Patient/{pid}"},
                          "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10",
                                               "code": rng.choice(["E11.9", "E10.9", "I10"])}]}})
        for k in range(2):
            resources.append({
                "resourceType": "Observation", "id": f"{pid}-a1c{k}", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
                "subject": {"reference": f"Patient/{pid}"},
                "effectiveDateTime": rng.choice(["2025-06-01", "2025-12-15", "2026-02-01"]),
                "valueQuantity": {"value": rng.choice([6.5, 7.5, 8.0, 8.5, 9.5]), "unit": "%",
                                  "system": "http://unitsofmeasure.org", "code": "%"}})
    return resources


COHORT = {
    "resourceType": "Group", "id": "bench-cohort", "type": "person", "actual": False,
    "modifierExtension": [{
        "url": "http://hl7.org/fhir/uv/bulkdata/StructureDefinition/member-filter",
        "valueExpression": {"language": "application/x-fhir-query",
                            "expression": "Condition?code:below=http://hl7.org/fhir/sid/"
                                          "icd-10|E11"}}],
    "characteristic": [
        {"code": {"coding": [{"system": "https://diatabase.org/fhir/CodeSystem/"
                                        "cohort-characteristic", "code": "fhir-query"}]},
         "valueBoolean": True, "exclude": False,
         "extension": [{"url": "https://diatabase.org/fhir/StructureDefinition/"
                               "cohort-criterion",
                        "valueExpression": {"language": "application/x-fhir-query",
                                            "expression": "Observation?code=http://loinc.org"
                                            "|4548-4&value-quantity=gt8&date=ge2025-12-01"}}]},
        {"code": {"coding": [{"system": "http://loinc.org", "code": "30525-0"}]},
         "valueRange": {"low": {"value": 65, "unit": "a", "system": "http://unitsofmeasure.org",
                                "code": "a"}}, "exclude": False},
    ],
}


@dataclass
class CohortFigures:
    evaluations: list[float]  # seconds each
    members: int
    peak_rss_mb: float
    resources: int
    exports: list[float]  # seconds of each Group/$export of the evaluated cohort
    exported: int  # resources in one such export


def measure_cohort(n: int) -> CohortFigures:
    """Evaluations of the cohort on n patients, then Group/$export work of its members."""
    from fhir_server.analytics.cohort_store import CohortStore
    from fhir_server.analytics.cohorts import Cohorts
    from fhir_server.ingest.loader import Loader
    from fhir_server.jobs.bulk_export import export_to
    from fhir_server.jobs.export_request import GROUP, parse_export_request

    folder = Path(tempfile.mkdtemp(prefix="diatabase-bench-cohort-"))
    service = service_for(f"sqlite:///{folder}/cohort.db")
    try:
        data = cohort_population(n, date.today())
        Loader(service).load_resources(data)
        cohorts = Cohorts(service, CohortStore(folder / "cohorts.db"))
        times, members = [], 0
        reset_peak_rss()
        for _ in range(COHORT_RUNS):
            started = time.perf_counter()
            evaluation = cohorts.evaluate("bench-cohort", COHORT)
            times.append(time.perf_counter() - started)
            members = evaluation.count
        exports, exported = [], 0
        for run in range(COHORT_RUNS):
            target = folder / f"export-{run}"
            target.mkdir()
            request = parse_export_request(GROUP, [], service.registry, False,
                                           group_id="bench-cohort")
            started = time.perf_counter()
            result = export_to(service, request, target,
                               lambda group: cohorts.member_batches(group, COHORT),
                               lambda *a, **k: None)
            exports.append(time.perf_counter() - started)
            exported = result["resources"]
        cohorts.store.close()
        return CohortFigures(times, members, own_peak_rss_mb(), len(data), exports, exported)
    finally:
        service.storage.close()
        shutil.rmtree(folder, ignore_errors=True)


def api_targets(http: httpx.Client, population: Population, n: int) -> dict[str, list[str]]:
    """`n` reads (Patients and Observations, by id) and `n` typical app searches."""
    ids = []
    for rtype in ("Patient", "Observation"):
        bundle = http.get(f"/{rtype}", params={"_count": "50", "_elements": "id"}).json()
        ids += [f"/{rtype}/{e['resource']['id']}" for e in bundle.get("entry", [])]
    searches = [t for targets in search_targets(population, n).values() for t in targets]
    rng = random.Random(n)
    return {"read": [rng.choice(ids) for _ in range(n)], "search": rng.sample(searches, n)}


class ExportLoad:
    """System `$export` jobs running in the server, back to back: `running()` kicks off a
    new one whenever the last one has finished."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.status_url: str | None = None
        self.started = 0
        self.finished = 0
        self.looks = 0
        self.queued = 0  # looks that found the job waiting for a worker, not running

    def running(self) -> None:
        if self.status_url is not None:
            status = self.http.get(self.status_url)
            if status.status_code == 202:
                self.looks += 1
                self.queued += status.headers.get("x-progress") == "queued"
                return
            if status.status_code != 200:
                raise RuntimeError(f"the export failed: {status.text[:300]}")
            self.finished += 1
            self.http.delete(self.status_url)  # its files (the whole export) are not wanted
        kicked = self.http.get("/$export", headers={"Prefer": "respond-async",
                                                     "Accept": "application/fhir+json"})
        if kicked.status_code != 202:
            raise RuntimeError(f"the export was not accepted: {kicked.text[:300]}")
        self.status_url = kicked.headers["content-location"]
        self.started += 1
        # Measured from when a worker runs it (another process looks for queued jobs
        # every second), not while it waits in the queue.
        deadline = time.monotonic() + 120
        while self.http.get(self.status_url).headers.get("x-progress") == "queued":
            if time.monotonic() > deadline:
                raise RuntimeError("no jobs worker took the export")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.status_url is not None:
            self.http.delete(self.status_url)
            self.status_url = None


def timed(url: str, targets: list[str], export: ExportLoad | None) -> tuple[list[float], float]:
    """The latencies of `targets` (API_CLIENTS at a time) and the seconds they took, with an
    export running throughout when `export` is given."""
    latencies: list[float] = []
    seconds = 0.0
    for start in range(0, len(targets), API_BATCH):
        if export is not None:
            export.running()
        figures = run_gets(url, targets[start:start + API_BATCH], API_CLIENTS)
        expect_ok(figures, "the API during an export")
        latencies += figures.latencies_ms
        seconds += figures.seconds
    return latencies, seconds


def measure_api_during_export(population: Population, size: str) -> list[Result]:
    """Reads and searches without a job and while exports run, alternating rounds: with
    the jobs in the API's own process (the default), then in a second server process on
    the same database, the API's process running none (DIATABASE_JOBS_WORKERS=0)."""
    n = API_REQUESTS[size]
    rows = []
    with serve(population.db_url) as server:
        rows += api_rows(server, population, n, "")
    with serve(population.db_url, env={"DIATABASE_JOBS_WORKERS": "0"}) as server, \
            serve(population.db_url):
        rows += api_rows(server, population, n, " (jobs in another process)")
    return rows


def api_rows(server: Any, population: Population, n: int, where: str) -> list[Result]:
    with httpx.Client(base_url=server.url, timeout=300) as http:
        targets = api_targets(http, population, n)
        export = ExportLoad(http)
        measured: dict[tuple[str, bool], tuple[list[float], float]] = {}
        for kind_targets in targets.values():
            timed(server.url, kind_targets[:API_BATCH], None)  # warm the code paths
        try:
            for _ in range(API_ROUNDS):
                for kind, kind_targets in targets.items():
                    for exporting in (False, True):
                        if not exporting:
                            export.stop()
                        latencies, seconds = timed(server.url, kind_targets,
                                                   export if exporting else None)
                        before, spent = measured.get((kind, exporting), ([], 0.0))
                        measured[(kind, exporting)] = (before + latencies, spent + seconds)
        finally:
            export.stop()
        peak = server.peak_rss_mb()
    rows = []
    for (kind, exporting), (latencies, seconds) in measured.items():
        if where and not exporting:
            continue  # the same as without the second process
        what = (f"while system $export jobs run{where} ({export.started} started, "
                f"{export.finished} finished, queued at {export.queued} of {export.looks} "
                "looks)" if exporting else "no job running")
        rows.append(show(Result(
            f"api {kind}{'+export' if exporting else ''}{' elsewhere' if where else ''}",
            f"{len(latencies):,} {kind}{'es' if kind.endswith('h') else 's'}, "
            f"{API_CLIENTS} clients, {what}",
            len(latencies) / seconds, "req/s", percentile(latencies, 50),
            percentile(latencies, 99), peak, "", "sqlite")))
    return rows


def sample(files: list[Path], limit: int | None, folder: Path) -> list[Path]:
    """The files themselves, or copies of their first `limit` lines in all (each file's
    share in proportion to its size, so every type is there)."""
    if limit is None:
        return files
    total = sum(p.stat().st_size for p in files)
    folder.mkdir()
    copies = []
    for path in files:
        keep = max(1, limit * path.stat().st_size // total)
        copy = folder / path.name
        with path.open("rb") as source, copy.open("wb") as target:
            for n, line in enumerate(source):
                if n == keep:
                    break
                target.write(line)
        copies.append(copy)
    return copies


def show(row: Result) -> Result:
    """A row as soon as it is measured (stderr: the table comes at the end)."""
    with contextlib.redirect_stdout(sys.stderr):
        print_table([row])
    return row


def populated(size: str, url: str) -> Population:
    """A database that already holds the population (see --populated)."""
    from fhir_server.model.resource_types import resource_types
    from fhir_server.storage import open_storage

    storage = open_storage(url)
    try:
        patients = storage.count("Patient")
        resources = sum(storage.count(t) for t in resource_types())
    finally:
        storage.close()
    return Population(url, size, patients, 0, resources)


def run(size: str = "small", db: str | None = None,
        existing: str | None = None) -> list[Result]:
    rows = []
    for n in COHORT_SIZES[size]:
        figures = measure_cohort(n)
        times = figures.evaluations
        rows.append(show(Result(
            f"cohort@{n:,}", f"$evaluate T2D + HbA1c > 8 % + 65+, {n:,} patients "
            f"({figures.resources:,} resources), {figures.members:,} members, median of "
            f"{len(times)}", 1 / statistics.median(times), "evaluations/s",
            statistics.median(times) * 1000, max(times) * 1000, figures.peak_rss_mb, "",
            "sqlite")))
        seconds = statistics.median(figures.exports)
        rows.append(show(Result(
            f"group export@{n:,}", f"Group/$export work of that cohort's {figures.members:,} "
            f"members, {figures.exported:,} resources, median of {len(figures.exports)}",
            figures.exported / seconds, "resources/s", seconds * 1000,
            max(figures.exports) * 1000, figures.peak_rss_mb, "", "sqlite")))
    population = populated(size, existing) if existing else loaded(size, db)
    rows += measure_api_during_export(population, size)
    backend = (db or "sqlite").split(":", 1)[0]
    folder = Path(tempfile.mkdtemp(prefix="diatabase-bench-bulk-"))
    try:
        result, seconds, peak = measure_export(population.db_url, folder)
        count = result["resources"]
        size_mb = sum(p.stat().st_size for p in folder.glob("*.ndjson")) / 1e6
        rows.append(show(Result(
            "bulk export", f"system $export work, {count:,} resources in "
            f"{len(result['output'])} files, {size_mb:,.0f} MB", count / seconds,
            "resources/s", None, None, peak, "", backend)))
        files = sample(sorted(folder.glob("*.ndjson")), IMPORT_SAMPLE[size], folder / "sample")
        measured: dict[str, list[tuple[int, float, float]]] = {"import": [], "load": []}
        warm = sample(files, WARM_UP_SAMPLE, folder / "warm")
        for how in ("import", "load"):
            measure_import(warm, how)
        for _ in range(RUNS[size]):
            for how in ("import", "load"):  # alternating, each into a fresh database
                measured[how].append(measure_import(files, how))
        for how, label in (("import", "$import work (file URLs, Loader, ids kept)"),
                           ("load", "diatabase load of the same files")):
            runs = measured[how]
            stored = runs[0][0]
            rate = statistics.median(n / s for n, s, _ in runs)
            rows.append(show(Result(
                f"bulk {how}", f"{label}, {stored:,} resources of the export, median of "
                f"{len(runs)}", rate, "resources/s", None, None, max(p for _, _, p in runs),
                "load: the same files" if how == "import" else "", "sqlite")))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("small", "medium", "large"), default="small")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--db", default=None, help="database URL (default: a fresh SQLite file)")
    where.add_argument("--populated", default=None,
                       help="SQLite URL of a database already holding the population")
    args = parser.parse_args()
    print_table(run(args.size, args.db, args.populated))


if __name__ == "__main__":
    main()
