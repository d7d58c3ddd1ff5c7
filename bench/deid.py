"""De-identification speed: export throughput and facade search overhead, in one run.

    python -m bench.deid                      # quick: 20,000 resources
    python -m bench.deid --resources 500000   # the figure the issue asks for

Builds a fresh SQLite database of synthetic diabetes patients (CGM readings every 5
minutes, a device, a condition, an HbA1c each), then measures

1. the pseudonymizing engine alone (stored JSON in memory -> pseudonymized JSON),
2. a whole export (`run_export`: storage read + engine + NDJSON + hashes + signature),
3. filling the recipient's view store (`diatabase deid views`: every resource made once),
   and an export that copies its rows,
4. search latency over HTTP (`diatabase serve`, one process; this process is the client):
   the same searches on the clinical API and on /deid/ (median and p90 of repeated runs,
   alternated) and the overhead, without and then with the view store.

Prints a table; not a pass/fail test. Single-threaded: figures are per core.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.common import serve
from fhir_server.deid.export import run_export
from fhir_server.deid.facade import served_types
from fhir_server.deid.keys import signing_key
from fhir_server.deid.recipients import Recipients
from fhir_server.deid.views import ViewStore, fill, fingerprint, view_path
from fhir_server.gc_tuning import tune_for_server
from fhir_server.ingest.loader import Loader
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage import open_storage

SECRET = "bench-master-secret-0123456789"
API_KEY = "bench-key"


def synthetic(total: int, seed: int = 1) -> tuple[list[dict[str, Any]], list[str]]:
    rnd = random.Random(seed)
    per_patient = 504
    patients = max(10, total // per_patient)
    readings = max(1, total // patients - 4)
    resources, patient_ids = [], []
    for n in range(patients):
        pid, did = (
            str(uuid.UUID(int=rnd.getrandbits(128))),
            str(uuid.UUID(int=rnd.getrandbits(128))),
        )
        patient_ids.append(pid)
        resources.append(
            {
                "resourceType": "Patient",
                "id": pid,
                "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": f"{n:015d}"}],
                "name": [{"family": f"Family{n}", "given": [f"Given{n}"]}],
                "telecom": [{"system": "phone", "value": f"+33 6 00 00 {n % 100:02d} 00"}],
                "gender": "female" if n % 2 else "male",
                "birthDate": f"19{40 + n % 60}-0{1 + n % 9}-1{n % 10}",
                "address": [{"line": [f"{n} rue X"], "city": "Lyon", "postalCode": "69003"}],
            }
        )
        resources.append(
            {
                "resourceType": "Device",
                "id": did,
                "serialNumber": f"SN{n:08d}",
                "patient": {"reference": f"Patient/{pid}"},
            }
        )
        resources.append(
            {
                "resourceType": "Condition",
                "id": str(uuid.UUID(int=rnd.getrandbits(128))),
                "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9"}]},
                "subject": {"reference": f"Patient/{pid}"},
                "onsetDateTime": "2015-06-01T09:30:00+02:00",
            }
        )
        resources.append(
            {
                "resourceType": "Observation",
                "id": str(uuid.UUID(int=rnd.getrandbits(128))),
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
                "subject": {"reference": f"Patient/{pid}"},
                "effectiveDateTime": "2024-02-20",
                "valueQuantity": {
                    "value": 7.4,
                    "unit": "%",
                    "system": "http://unitsofmeasure.org",
                    "code": "%",
                },
            }
        )
        start = datetime(2024, 3, 1, tzinfo=UTC) + timedelta(seconds=rnd.randint(0, 86_400))
        for k in range(readings):
            resources.append(
                {
                    "resourceType": "Observation",
                    "id": str(uuid.UUID(int=rnd.getrandbits(128))),
                    "status": "final",
                    "category": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                    "code": "laboratory",
                                }
                            ]
                        }
                    ],
                    "code": {"coding": [{"system": "http://loinc.org", "code": "99504-3"}]},
                    "subject": {"reference": f"Patient/{pid}"},
                    "device": {"reference": f"Device/{did}"},
                    "effectiveDateTime": (start + timedelta(minutes=5 * k)).isoformat(),
                    "valueQuantity": {
                        "value": round(rnd.uniform(60, 250), 1),
                        "unit": "mg/dL",
                        "system": "http://unitsofmeasure.org",
                        "code": "mg/dL",
                    },
                }
            )
    return resources, patient_ids


def timed(http: httpx.Client, url: str, headers: dict[str, str]) -> float:
    start = time.perf_counter()
    response = http.get(url, headers=headers)
    elapsed = time.perf_counter() - start
    assert response.status_code == 200, response.text[:300]
    return elapsed


def deid_settings(folder: Path, db_url: str) -> tuple[Settings, Path]:
    recipients_file = folder / "recipients.json"
    recipients_file.write_text(
        json.dumps(
            [{"id": "bench", "api_key_sha256": hashlib.sha256(API_KEY.encode()).hexdigest()}]
        )
    )
    settings = Settings(
        db_url=db_url, deid_secret=SECRET, deid_recipients=str(recipients_file), max_count=1000
    )
    return settings, recipients_file


def measure(folder: Path, db_url: str, patient_ids: list[str], repeat: int) -> dict[str, Any]:
    """Engine, export, view-store and facade-search figures on the database at `db_url`."""
    settings, recipients_file = deid_settings(folder, db_url)
    service = FhirService(open_storage(db_url), settings)
    tune_for_server()  # as `diatabase deid export` does
    recipients = Recipients.load(recipients_file, SECRET.encode())
    # the first 100,000 only: a 10 M population's JSON would take ~7 GB in a list
    raws = [s.json for s in itertools.islice(service.storage.iter_current("Observation"), 100_000)]
    engine = recipients.fresh_engine("bench")
    started = time.process_time()
    for raw in raws:
        engine.transform_bytes(raw)
    engine_rate = len(raws) / (time.process_time() - started)
    del raws

    started, cpu = time.perf_counter(), time.process_time()
    manifest = run_export(
        service, recipients.fresh_engine("bench"), folder / "export", signing_key(SECRET.encode())
    )
    export_seconds = time.perf_counter() - started
    export_cpu = time.process_time() - cpu
    exported = sum(item["count"] for item in manifest["output"])

    # The recipient's view store, as `diatabase deid views` fills it.
    engine = recipients.fresh_engine("bench")
    store = ViewStore(view_path(folder / "views", "bench"), fingerprint(engine))
    filled = fill(service, engine, store, served_types())
    view_mb = sum(f.stat().st_size for f in (folder / "views").iterdir()) / 1e6
    # An export that copies the store's rows (the same files, see test_deid_views.py).
    cpu = time.process_time()
    copied = run_export(
        service,
        recipients.fresh_engine("bench"),
        folder / "export-views",
        signing_key(SECRET.encode()),
        views=store,
    )
    copied_cpu = time.process_time() - cpu
    assert copied["output"] == manifest["output"]
    store.close()
    service.storage.close()

    names = recipients.engine("bench").pseudonyms
    rows = search_rows(db_url, recipients_file, names, patient_ids, repeat, None)
    rows += search_rows(db_url, recipients_file, names, patient_ids, repeat, folder / "views")
    return {
        "engine_rate": engine_rate,
        "exported": exported,
        "export_seconds": export_seconds,
        "export_cpu": export_cpu,
        "kanon": manifest["kAnonymity"],
        "fill": filled,
        "view_mb": view_mb,
        "copied_cpu": copied_cpu,
        "rows": rows,
    }


def search_rows(
    db_url: str,
    recipients_file: Path,
    names: Any,
    patient_ids: list[str],
    repeat: int,
    views: Path | None,
) -> list[tuple[str, list[float], list[float]]]:
    """The same searches on the clinical API and on /deid/ (alternated), on a
    `diatabase serve` process of its own (this process is the client), without or with
    the recipient's view store."""
    suffix = ", view store" if views else ""
    extra = ["--deid-recipients", str(recipients_file)]
    if views:
        extra += ["--deid-views", str(views)]
    os.environ["DIATABASE_DEID_SECRET"] = SECRET  # for the server process only
    key = {"Authorization": f"Bearer {API_KEY}"}
    runs = min(repeat, len(patient_ids))
    rows = []
    with (
        serve(db_url, extra=extra) as server,
        httpx.Client(base_url=server.url, timeout=120) as http,
    ):
        # The same warm-up for both APIs, on patients the cold runs do not use when there
        # are enough: first requests pay for imports, caches and cold pages.
        for pid in patient_ids[-min(20, max(1, len(patient_ids) - runs)) :]:
            pseudonym = names.pseudonym("Patient", pid)
            timed(http, f"/Observation?subject=Patient/{pid}&_count=100", {})
            timed(http, f"/deid/Observation?subject=Patient/{pseudonym}&_count=100", key)
        # Cold: a different patient each run, so the facade's transform cache cannot help.
        clinical, deid = [], []
        for run, pid in enumerate(patient_ids[:runs]):
            pseudonym = names.pseudonym("Patient", pid)
            pair = [
                (clinical, f"/Observation?subject=Patient/{pid}&_count=100", {}),
                (deid, f"/deid/Observation?subject=Patient/{pseudonym}&_count=100", key),
            ]
            # Alternate which goes first: the second benefits from SQLite's page cache.
            for times, url, headers in pair if run % 2 else pair[::-1]:
                times.append(timed(http, url, headers))
        rows.append((f"subject=P&_count=100 (cold{suffix})", clinical, deid))
        pid = patient_ids[0]
        pseudonym = names.pseudonym("Patient", pid)
        warm = [
            (
                "subject=P&_count=100 (repeated",
                f"/Observation?subject=Patient/{pid}&_count=100",
                f"/deid/Observation?subject=Patient/{pseudonym}&_count=100",
            ),
            (
                "code=99504-3&_count=50 (repeated",
                "/Observation?code=99504-3&_count=50",
                "/deid/Observation?code=99504-3&_count=50",
            ),
            (
                # Checked on the de-identified view (post-filter): extraction and matching
                # of every candidate's pseudonymized JSON; every reading matches.
                "date=ge2000&_count=50 (repeated",
                "/Observation?code=99504-3&date=ge2000&_count=50",
                "/deid/Observation?code=99504-3&date=ge2000&_count=50",
            ),
            ("Patient read (repeated", f"/Patient/{pid}", f"/deid/Patient/{pseudonym}"),
        ]
        for label, clinical_url, deid_url in warm:
            timed(http, clinical_url, {})
            timed(http, deid_url, key)
            clinical, deid = [], []
            for _ in range(repeat):
                clinical.append(timed(http, clinical_url, {}))
                deid.append(timed(http, deid_url, key))
            rows.append((f"{label}{suffix})", clinical, deid))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resources", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=30, help="runs of each search")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="diatabase-bench-deid-"))
    db_url = f"sqlite:///{folder / 'bench.db'}"
    resources, patient_ids = synthetic(args.resources)
    service = FhirService(open_storage(db_url), deid_settings(folder, db_url)[0])
    started = time.perf_counter()
    report = Loader(service).load_resources(resources)
    load_seconds = time.perf_counter() - started
    assert not report.failed, report.failed[:3]
    total = len(resources)
    del resources
    service.storage.close()
    figures = measure(folder, db_url, patient_ids, args.repeat)
    engine_rate, exported = figures["engine_rate"], figures["exported"]
    export_seconds, export_cpu = figures["export_seconds"], figures["export_cpu"]
    rows = figures["rows"]

    print(
        f"\nDiatabase de-identification benchmark: {total:,} resources stored "
        f"(loaded in {load_seconds:.1f} s), one core\n"
    )
    print(f"{'measure':<44} {'value':>14}")
    print(f"{'engine alone, CPU (Observation, resources/s)':<44} {engine_rate:>14,.0f}")
    print(f"{'export: resources written':<44} {exported:>14,}")
    print(f"{'export: seconds':<44} {export_seconds:>14.2f}")
    print(f"{'export: resources/s, wall clock':<44} {exported / export_seconds:>14,.0f}")
    print(f"{'export: resources/s per CPU second':<44} {exported / export_cpu:>14,.0f}")
    kanon = figures["kanon"]
    print(
        f"{'export: patients released / suppressed':<44} "
        f"{kanon['released']:>9} / {kanon['suppressed']:<3}"
    )
    filled = figures["fill"]
    print(f"{'view store: resources made':<44} {filled.written:>14,}")
    print(f"{'view store: seconds':<44} {filled.seconds:>14.2f}")
    fill_rate = filled.written / filled.cpu_seconds
    print(f"{'view store: resources/s per CPU second':<44} {fill_rate:>14,.0f}")
    print(f"{'view store: MB on disk':<44} {figures['view_mb']:>14,.0f}")
    copied_rate = exported / figures["copied_cpu"]
    print(f"{'export from the store: per CPU second':<44} {copied_rate:>14,.0f}")
    print()
    print(f"{'search (median / p90 ms)':<48} {'clinical':>15} {'facade':>15} {'overhead':>9}")
    for label, clinical, deid in rows:
        c50, d50 = statistics.median(clinical) * 1000, statistics.median(deid) * 1000
        c90 = statistics.quantiles(clinical, n=10)[-1] * 1000
        d90 = statistics.quantiles(deid, n=10)[-1] * 1000
        print(
            f"{label:<48} {c50:>7.2f} / {c90:>5.2f} {d50:>7.2f} / {d90:>5.2f} "
            f"{(d50 / c50 - 1) * 100:>8.0f}%"
        )
    print(f"\n(database and export in {folder}; delete it when done)")


REPORT_REPEAT = {"small": 5, "medium": 30, "large": 30}


def run(size: str = "small", db: str | None = None) -> list:
    """De-identification figures for bench/run.py, on the generated population of `size`
    (bench/population.py, shared with read and export) instead of this module's own data."""
    from bench.common import Result, own_peak_rss_mb, percentile
    from bench.population import SEED, loaded

    population = loaded(size, db)
    patient_ids = [f"p-{SEED}-{n}" for n in range(population.patients)]
    with tempfile.TemporaryDirectory(prefix="diatabase-bench-deid-") as tmp:
        figures = measure(Path(tmp), population.db_url, patient_ids, REPORT_REPEAT[size])
    kanon = figures["kanon"]
    results = [
        Result("deid engine", "pseudonymize stored Observation JSON in memory (CPU time)",
               figures["engine_rate"], "resources/s", peak_rss_mb=own_peak_rss_mb()),
        Result("deid export", f"run_export of {figures['exported']:,} resources: storage read, "
               f"engine, NDJSON, hashes, signature; {kanon['released']} patients released, "
               f"{kanon['suppressed']} suppressed; "
               f"{figures['exported'] / figures['export_cpu']:,.0f} per CPU second",
               figures["exported"] / figures["export_seconds"], "resources/s",
               peak_rss_mb=own_peak_rss_mb()),
        Result("deid view store", f"fill the recipient's view store: {figures['fill'].written:,} "
               f"resources, {figures['view_mb']:,.0f} MB; "
               f"{figures['fill'].written / figures['fill'].cpu_seconds:,.0f} per CPU second",
               figures["fill"].written / figures["fill"].seconds, "resources/s",
               peak_rss_mb=own_peak_rss_mb()),
    ]
    for label, clinical, deid in figures["rows"]:
        clinical_ms = [t * 1000 for t in clinical]
        deid_ms = [t * 1000 for t in deid]
        overhead = (percentile(deid_ms, 50) / percentile(clinical_ms, 50) - 1) * 100
        results.append(Result(
            "deid search", f"/deid/ facade {label}, 1 client, {len(deid_ms)} requests; "
            f"clinical API p50 {percentile(clinical_ms, 50):.2f} ms, overhead {overhead:+.0f}%",
            1000 / (sum(deid_ms) / len(deid_ms)), "req/s", percentile(deid_ms, 50),
            percentile(deid_ms, 99), own_peak_rss_mb(),
            f"clinical p50 {percentile(clinical_ms, 50):.2f} ms"))
    return results


if __name__ == "__main__":
    main()
