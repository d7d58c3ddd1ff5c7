"""Ingest benchmark: batch Bundles of glucose Observations posted over HTTP.

A real server (`diatabase serve`, in a subprocess) on a fresh SQLite file; batch Bundles of
1,000 glucose Observations for 100 patients posted by several concurrent clients. Prints
resources/s (median of the runs), p50/p99 latency per Bundle and the server's peak RSS, and,
in the same run, the rate of a plain `executemany` of the same JSON documents into SQLite:
the floor that shows what the server's layers cost.

    python -m bench.ingest                    # medium: 3 runs x 20 bundles x 1,000 observations
    python -m bench.ingest --size small       # a quick check
    python -m bench.ingest --db mongodb://localhost:27017/bench   # on MongoDB instead
    python -m bench.ingest --compare main     # BEFORE (a git ref) / AFTER (this tree)

`--compare REF` posts Bundles of 500 Observations to REF's server and this tree's in
alternating runs, with 1 and 2 workers (two clients per worker), and prints resources/s,
p50/p99 per Bundle and the servers' CPU per resource beside the load average of each run.

With a MongoDB `--db`, the floor is a plain `insert_many` of the same documents into a
scratch collection of that database.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson

from bench.common import ROOT, Result, percentile, print_table, serve

PATIENTS = 100
BUNDLE_SIZE = 1000


def observation(rng: random.Random, patient: int, when: float) -> dict:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(when))
    return {
        "resourceType": "Observation",
        "identifier": [
            {"system": "urn:bench:reading", "value": uuid.UUID(int=rng.getrandbits(128)).hex}
        ],
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
        "subject": {"reference": f"Patient/bench-{patient}"},
        "device": {"reference": f"Device/sensor-{patient}"},
        "effectiveDateTime": stamp,
        "valueQuantity": {
            "value": rng.randint(40, 400),
            "unit": "mg/dL",
            "system": "http://unitsofmeasure.org",
            "code": "mg/dL",
        },
    }


def make_bundles(count: int, size: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    start = 1_700_000_000.0
    bundles = []
    for b in range(count):
        entries = []
        for i in range(size):
            obs = observation(rng, (b * size + i) % PATIENTS, start + (b * size + i) * 300)
            entries.append({"resource": obs, "request": {"method": "POST", "url": "Observation"}})
        bundles.append(orjson.dumps({"resourceType": "Bundle", "type": "batch", "entry": entries}))
    return bundles


def run_http(
    bundles: list[bytes], clients: int, size: int, workers: int, db_url: str, root: Path = ROOT
) -> dict:
    with serve(db_url, workers, root=root) as server:
        with httpx.Client(base_url=server.url, timeout=300) as warm:
            # Create the patients and warm the per-type validators before timing.
            for p in range(PATIENTS):
                warm.put(
                    f"/Patient/bench-{p}", json={"resourceType": "Patient", "id": f"bench-{p}"}
                )
        queue = list(bundles)
        lock = threading.Lock()
        latencies: list[float] = []
        errors: list[str] = []

        def client() -> None:
            with httpx.Client(base_url=server.url, timeout=300) as http:
                while True:
                    with lock:
                        if not queue:
                            return
                        body = queue.pop()
                    t0 = time.perf_counter()
                    response = http.post(
                        "/", content=body, headers={"content-type": "application/fhir+json"}
                    )
                    latencies.append(time.perf_counter() - t0)
                    if response.status_code != 200:
                        errors.append(response.text[:200])
                    elif any(
                        not e["response"]["status"].startswith("201")
                        # orjson: the check must not take CPU from the server it measures
                        for e in orjson.loads(response.content)["entry"]
                    ):
                        errors.append("an entry was not created")

        threads = [threading.Thread(target=client) for _ in range(clients)]
        cpu = server.cpu_seconds()
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        cpu = server.cpu_seconds() - cpu
        if errors:
            raise RuntimeError(f"ingest failed: {errors[:3]}")
        return {
            "rate": len(bundles) * size / elapsed,
            "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99),
            "rss": server.peak_rss_mb(),
            "cpu_us": cpu / (len(bundles) * size) * 1e6,  # server CPU per resource
        }


def run_floor(bundles: list[bytes]) -> float:
    """Plain executemany of the same documents into SQLite (WAL, synchronous=NORMAL)."""
    docs = [
        (str(uuid.uuid4()), orjson.dumps(entry["resource"]))
        for body in bundles
        for entry in orjson.loads(body)["entry"]
    ]
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(Path(tmp) / "floor.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE r (id TEXT PRIMARY KEY, json BLOB)")
        started = time.perf_counter()
        for i in range(0, len(docs), 1000):
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO r VALUES (?, ?)", docs[i : i + 1000])
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - started
        conn.close()
    return len(docs) / elapsed


def run_mongo_floor(bundles: list[bytes], db_url: str) -> float:
    """Plain insert_many of the same documents, 1,000 a call, into a scratch collection."""
    from fhir_server.storage.mongo import client_settings

    client_url, kwargs, database, _ = client_settings(db_url)
    if db_url.startswith("mongomock:"):
        import mongomock

        client = mongomock.MongoClient()
    else:
        import pymongo

        client = pymongo.MongoClient(client_url, **kwargs)
    docs = [
        {"_id": str(uuid.uuid4()), "json": orjson.dumps(entry["resource"])}
        for body in bundles
        for entry in orjson.loads(body)["entry"]
    ]
    scratch = client[database][f"bench_floor_{uuid.uuid4().hex[:8]}"]
    try:
        started = time.perf_counter()
        for i in range(0, len(docs), 1000):
            scratch.insert_many(docs[i : i + 1000], ordered=False)
        elapsed = time.perf_counter() - started
    finally:
        scratch.drop()
        client.close()
    return len(docs) / elapsed


SIZES = {  # bundles per run, runs, concurrent clients
    "small": (3, 1, 2),
    "medium": (20, 3, 4),
    "large": (100, 3, 4),
}


def run(size: str = "medium", db: str | None = None, workers: int = 2) -> list[Result]:
    """Ingest figures; `db` is a database URL for the server (default: a fresh SQLite file
    per run). A given URL must point at an empty database."""
    bundle_count, runs, clients = SIZES[size]
    results, floors = [], []
    for run_number in range(runs):
        bundles = make_bundles(bundle_count, BUNDLE_SIZE, seed=run_number)
        with tempfile.TemporaryDirectory() as tmp:
            url = db or f"sqlite:///{Path(tmp) / 'bench.db'}"
            results.append(run_http(bundles, clients, BUNDLE_SIZE, workers, url))
        mongo = db is not None and db.startswith(("mongodb:", "mongodb+srv:", "mongomock:"))
        floors.append(run_mongo_floor(bundles, db) if mongo else run_floor(bundles))
    backend = (db or "sqlite").split(":", 1)[0].replace("mongodb+srv", "mongodb")
    floor = f"{backend} insert_many" if backend.startswith("mongo") else "sqlite executemany"
    rates = [r["rate"] for r in results]
    workload = (
        f"batch Bundles of {BUNDLE_SIZE:,} glucose Observations, {clients} clients, "
        f"{workers} workers, {bundle_count * BUNDLE_SIZE:,} resources x {runs} runs "
        f"(runs: {' / '.join(f'{r:,.0f}' for r in rates)})"
    )
    return [
        Result(
            "ingest",
            workload,
            statistics.median(rates),
            "resources/s",
            statistics.median(r["p50"] for r in results) * 1000,
            statistics.median(r["p99"] for r in results) * 1000,
            max(r["rss"] for r in results),
            f"{floor} {statistics.median(floors):,.0f} docs/s",
            backend,
        )
    ]


COMPARE_BUNDLE_SIZE = 500
COMPARE_SIZES = {"small": (2, 1), "medium": (40, 3), "large": (100, 5)}  # bundles, rounds


@contextmanager
def checkout(ref: str) -> Iterator[Path]:
    """The source tree of a git ref (`git archive`) in a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "archive", ref], cwd=ROOT, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        yield Path(tmp)


def compare(ref: str, size: str = "medium") -> list[Result]:
    """This tree beside `ref` (BEFORE) over HTTP with 1 and 2 workers: runs alternate
    (before, after, before, after...), each on a fresh SQLite file; medians of the rounds,
    with the load average of the machine at each run."""
    bundle_count, rounds = COMPARE_SIZES[size]
    runs: dict[tuple[str, int], list[dict]] = {}
    with checkout(ref) as before:
        for round_number in range(rounds):
            bundles = make_bundles(bundle_count, COMPARE_BUNDLE_SIZE, seed=round_number)
            for workers in (1, 2):
                for label, root in (("before", before), ("after", ROOT)):
                    with tempfile.TemporaryDirectory() as tmp:
                        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
                        load = os.getloadavg()[0]
                        figures = run_http(
                            bundles, 2 * workers, COMPARE_BUNDLE_SIZE, workers, url, root
                        )
                    figures["load"] = load
                    runs.setdefault((label, workers), []).append(figures)
                    print(
                        f"  {label} {workers} worker(s): {figures['rate']:,.0f} resources/s, "
                        f"{figures['cpu_us']:.0f} us server CPU/resource, load {load:.1f}",
                        file=sys.stderr,
                    )
    results = []
    for (label, workers), figures in runs.items():
        rates = [f["rate"] for f in figures]
        loads = " / ".join(f"{f['load']:.1f}" for f in figures)
        results.append(
            Result(
                f"ingest {label} {workers}w",
                f"{ref if label == 'before' else 'this tree'}: batch Bundles of "
                f"{COMPARE_BUNDLE_SIZE} glucose Observations, {2 * workers} clients, "
                f"{bundle_count * COMPARE_BUNDLE_SIZE:,} resources x {rounds} "
                f"(runs: {' / '.join(f'{r:,.0f}' for r in rates)}; server CPU "
                f"{statistics.median(f['cpu_us'] for f in figures):.0f} us/resource; load "
                f"{loads})",
                statistics.median(rates),
                "resources/s",
                statistics.median(f["p50"] for f in figures) * 1000,
                statistics.median(f["p99"] for f in figures) * 1000,
                max(f["rss"] for f in figures),
            )
        )
    return sorted(results, key=lambda r: r.benchmark.split()[-1] + r.benchmark)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="medium")
    parser.add_argument("--db", default=None, help="server database URL (default: fresh SQLite)")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument(
        "--compare", metavar="REF", default=None,
        help="a git ref to run beside this tree (BEFORE / AFTER, 1 and 2 workers)",
    )
    args = parser.parse_args()
    if args.compare:
        results = compare(args.compare, args.size)
    else:
        results = run(args.size, args.db, args.workers)
    print_table(results, f"backend: {results[0].backend}   cores: {os.cpu_count()}")


if __name__ == "__main__":
    main()
