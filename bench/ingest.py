"""Ingest benchmark: batch Bundles of glucose Observations posted over HTTP.

A real server (`diatabase serve`, in a subprocess) on a fresh SQLite file; batch Bundles of
1,000 glucose Observations for 100 patients posted by several concurrent clients. Prints
resources/s (median of the runs), p50/p99 latency per Bundle and the server's peak RSS, and,
in the same run, the rate of a plain `executemany` of the same JSON documents into SQLite:
the floor that shows what the server's layers cost.

    python bench/ingest.py                    # 3 runs x 20 bundles x 1,000 observations
    python bench/ingest.py --bundles 5 --runs 1 --clients 2     # a quick check
    python bench/ingest.py --db mongodb://localhost:27017/bench   # on MongoDB instead

With `--db`, the server uses that database (it should be empty: the runs add to it) and the
floor is a plain `insert_many` of the same documents into a scratch collection of it.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import orjson

PATIENTS = 100


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def backend_name(db_url: str | None) -> str:
    return "sqlite" if db_url is None else db_url.split(":", 1)[0].replace("mongodb+srv", "mongodb")


class Server:
    def __init__(self, db: str, workers: int) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fhir_server.cli",
                "serve",
                "--db",
                db,
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--workers",
                str(workers),
            ],
            stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{self.url}/metadata", timeout=5)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("server did not start") from None
                time.sleep(0.1)

    def peak_rss_mb(self) -> float:
        """Peak RSS of the server process and its workers, added up."""
        pids = [self.proc.pid]
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        if children.exists():
            pids += [int(p) for p in children.read_text().split()]
        total = 0.0
        for pid in pids:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        return total

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def run_http(
    bundles: list[bytes], clients: int, size: int, workers: int, db_url: str | None
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(db_url or f"sqlite:///{Path(tmp) / 'bench.db'}", workers)
        try:
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
                            for e in response.json()["entry"]
                        ):
                            errors.append("an entry was not created")

            threads = [threading.Thread(target=client) for _ in range(clients)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - started
            if errors:
                raise RuntimeError(f"ingest failed: {errors[:3]}")
            return {
                "rate": len(bundles) * size / elapsed,
                "p50": statistics.median(latencies),
                "p99": statistics.quantiles(latencies, n=100)[98]
                if len(latencies) > 1
                else latencies[0],
                "rss": server.peak_rss_mb(),
            }
        finally:
            server.stop()


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
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=int, default=20, help="bundles per run")
    parser.add_argument("--size", type=int, default=1000, help="observations per bundle")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument(
        "--db",
        default=None,
        help="database URL for the server (default: a fresh SQLite file per run), "
        "e.g. mongodb://localhost:27017/bench",
    )
    args = parser.parse_args()
    backend = backend_name(args.db)

    results = []
    floors = []
    for run in range(args.runs):
        bundles = make_bundles(args.bundles, args.size, seed=run)
        results.append(run_http(bundles, args.clients, args.size, args.workers, args.db))
        floors.append(run_floor(bundles) if args.db is None else run_mongo_floor(bundles, args.db))
    rates = [r["rate"] for r in results]
    print(
        f"backend: {backend}   bundles/run: {args.bundles} x {args.size} observations   "
        f"clients: {args.clients}   workers: {args.workers}   runs: {args.runs}   "
        f"cores: {os.cpu_count()}"
    )
    print(f"{'measure':<44}{'value':>14}")
    print(f"{'server ingest, resources/s (median)':<44}{statistics.median(rates):>14,.0f}")
    print(
        f"{'server ingest, resources/s (all runs)':<44}{' / '.join(f'{r:,.0f}' for r in rates):>14}"
    )
    print(
        f"{'latency per bundle p50 (s)':<44}{statistics.median(r['p50'] for r in results):>14.3f}"
    )
    print(
        f"{'latency per bundle p99 (s)':<44}{statistics.median(r['p99'] for r in results):>14.3f}"
    )
    print(f"{'server peak RSS (MB)':<44}{max(r['rss'] for r in results):>14.0f}")
    floor = "sqlite executemany" if args.db is None else f"{backend} insert_many"
    print(f"{f'floor: {floor}, docs/s (median)':<44}{statistics.median(floors):>14,.0f}")


if __name__ == "__main__":
    main()
