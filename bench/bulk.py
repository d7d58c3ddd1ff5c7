"""Bulk Data benchmark: `$export` and `$import` of the generated population, `diatabase
load` of the same files beside `$import`, and cohort evaluation at two population sizes.

- `bulk export`: the export job's work (fhir_server/jobs/bulk_export.py, system level,
  every type) into NDJSON files: resources/s and the peak RSS of the export alone (the
  process's peak is reset first), which must stay flat whatever the size;
- `bulk import` and `bulk load`: those files (on medium and large, their first
  IMPORT_SAMPLE lines: a million resources loaded twice more would take most of an hour
  on this machine) into an empty database through the import job's work
  (jobs/bulk_import.py) and through `diatabase load` (ingest/loader.py), side by side in
  the same run, alternating, each into a fresh database;
- `cohort N`: `Group/$evaluate` of "type 2 diabetes, HbA1c above 8 % since December, aged
  65 or more" on N patients (each with a Condition and two HbA1c results), median of runs.

    python -m bench.bulk [--size small|medium|large] [--db URL]

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
from datetime import date
from pathlib import Path
from typing import Any

from bench.common import Result, own_peak_rss_mb, print_table
from bench.population import loaded

RUNS = {"small": 1, "medium": 1, "large": 1}  # import/load runs each (medium: minutes each)
COHORT_SIZES = {"small": (50, 100), "medium": (1_000, 10_000), "large": (1_000, 10_000)}
COHORT_RUNS = 3
IMPORT_SAMPLE = {"small": None, "medium": 200_000, "large": 1_000_000}  # lines; None: all


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


def measure_cohort(n: int) -> tuple[list[float], int, float, int]:
    """(seconds per evaluation, members, peak RSS MB, resources) on n patients."""
    from fhir_server.analytics.cohort_store import CohortStore
    from fhir_server.analytics.cohorts import Cohorts
    from fhir_server.ingest.loader import Loader

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
        cohorts.store.close()
        return times, members, own_peak_rss_mb(), len(data)
    finally:
        service.storage.close()
        shutil.rmtree(folder, ignore_errors=True)


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


def run(size: str = "small", db: str | None = None) -> list[Result]:
    rows = []
    for n in COHORT_SIZES[size]:
        times, members, peak, resources = measure_cohort(n)
        rows.append(show(Result(
            f"cohort@{n:,}", f"$evaluate T2D + HbA1c > 8 % + 65+, {n:,} patients "
            f"({resources:,} resources), {members:,} members, median of {len(times)}",
            1 / statistics.median(times), "evaluations/s",
            statistics.median(times) * 1000, max(times) * 1000, peak, "", "sqlite")))
    population = loaded(size, db)
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
    parser.add_argument("--db", default=None, help="database URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    print_table(run(args.size, args.db))


if __name__ == "__main__":
    main()
