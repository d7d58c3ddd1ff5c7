"""What the audit trail costs: ingest and search with it on and off, side by side.

Each run starts two servers in turn on fresh SQLite files, one with the trail off
(DIATABASE_AUDIT=0) and one with it on, and measures on both, in the same order:

- batch ingest: batch Bundles of glucose Observations (bench.ingest's) posted by two
  clients, resources/s (a write's event is appended in its transaction);
- single creates: one glucose Observation per POST by one client, creates/s, and by
  CLIENTS concurrent clients (device vendors posting readings one at a time; concurrent
  writes share a COMMIT, storage/sqlite_group_commit.py);
- search latency: `Observation?subject=...&_count=50` and `Observation?code=...&date=ge...`
  one at a time, p50 / p95 (a read's event is queued and stored off the request path),
  and the patient search's throughput with CLIENTS concurrent clients;
- the server's CPU time per operation (user + system of its process: steadier than wall
  times on a shared machine).

The table gives the median of the runs for each figure, on and off, and the cost.

    python -m bench.audit [--size small|medium|large]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson

from bench.common import Result, cpu_seconds, percentile, serve
from bench.http_load import get_request, post_request, run_requests
from bench.ingest import PATIENTS, make_bundles, observation

SIZES = {  # runs, bundles, bundle size, single creates, searches of each kind
    "small": (1, 1, 50, 10, 5),
    "medium": (3, 10, 1000, 400, 200),
    "large": (7, 20, 1000, 1000, 500),
}
FHIR_JSON = {"content-type": "application/fhir+json"}
CLIENTS = 8  # concurrent clients of the concurrent rows


@contextmanager
def audit_env(on: bool):
    previous = os.environ.get("DIATABASE_AUDIT")
    os.environ["DIATABASE_AUDIT"] = "1" if on else "0"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["DIATABASE_AUDIT"]
        else:
            os.environ["DIATABASE_AUDIT"] = previous


def ingest_batches(url: str, bundles: list[bytes], size: int) -> float:
    queue, lock, errors = list(bundles), threading.Lock(), []

    def client() -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            while True:
                with lock:
                    if not queue:
                        return
                    body = queue.pop()
                response = http.post("/", content=body, headers=FHIR_JSON)
                if response.status_code != 200:
                    errors.append(response.text[:200])

    threads = [threading.Thread(target=client) for _ in range(2)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"batch ingest failed: {errors[:3]}")
    return len(bundles) * size / elapsed


def single_creates(http: httpx.Client, count: int, seed: int) -> float:
    rng = random.Random(seed)
    bodies = [
        orjson.dumps(observation(rng, i % PATIENTS, 1_600_000_000 + i * 60)) for i in range(count)
    ]
    started = time.perf_counter()
    for body in bodies:
        response = http.post("/Observation", content=body, headers=FHIR_JSON)
        if response.status_code != 201:
            raise RuntimeError(f"create failed: {response.text[:200]}")
    return count / (time.perf_counter() - started)


def concurrent(url: str, requests: list[bytes], expected: int) -> float:
    """Requests per second over CLIENTS connections (the asyncio client of http_load: it
    costs less CPU than the server it measures)."""
    figures = run_requests(url, requests, CLIENTS)
    wrong = {status: n for status, n in figures.statuses.items() if status != expected}
    if wrong:
        raise RuntimeError(f"answers other than {expected}: {wrong}: {figures.first_error[:200]!r}")
    return figures.rate


def concurrent_creates(url: str, count: int, seed: int) -> float:
    rng = random.Random(seed)
    bodies = [
        orjson.dumps(observation(rng, i % PATIENTS, 1_650_000_000 + i * 60)) for i in range(count)
    ]
    return concurrent(url, [post_request(url, "/Observation", body) for body in bodies], 201)


def concurrent_searches(url: str, count: int, seed: int) -> float:
    rng = random.Random(seed)
    targets = [
        f"/Observation?subject=Patient/bench-{rng.randrange(PATIENTS)}&_count=50"
        for _ in range(count)
    ]
    return concurrent(url, [get_request(url, target) for target in targets], 200)


def search_latencies(http: httpx.Client, count: int, seed: int) -> dict[str, list[float]]:
    rng = random.Random(seed)
    queries = {
        "patient": lambda: (
            f"/Observation?subject=Patient/bench-{rng.randrange(PATIENTS)}&_count=50"
        ),
        "code+date": lambda: (
            "/Observation?code=http://loinc.org|99504-3"
            f"&date=ge2023-11-{rng.randint(15, 28):02d}&_count=50"
        ),
    }
    timings: dict[str, list[float]] = {name: [] for name in queries}
    for _ in range(count):
        for name, make in queries.items():
            url = make()
            started = time.perf_counter()
            response = http.get(url)
            timings[name].append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"search failed: {response.text[:200]}")
    return timings


def one_run(on: bool, size: str, seed: int) -> dict[str, float]:
    _, bundles_n, bundle_size, creates_n, searches_n = SIZES[size]
    bundles = make_bundles(bundles_n, bundle_size, seed=seed)
    with tempfile.TemporaryDirectory() as tmp, audit_env(on):
        db = f"sqlite:///{Path(tmp) / 'audit-bench.db'}"
        with serve(db) as server, httpx.Client(base_url=server.url, timeout=300) as http:
            # the patients, and a first Bundle to warm the validators, before timing
            for p in range(PATIENTS):
                patient = {"resourceType": "Patient", "id": f"bench-{p}"}
                http.put(f"/Patient/bench-{p}", json=patient)
            http.post("/", content=make_bundles(1, 50, seed=seed + 1000)[0], headers=FHIR_JSON)
            pid = server.proc.pid
            cpu = cpu_seconds(pid)
            figures = {"batch": ingest_batches(server.url, bundles, bundle_size)}
            cpu, spent = cpu_seconds(pid), cpu_seconds(pid) - cpu
            figures["batch cpu"] = spent * 1000 / (bundles_n * bundle_size) * 1000
            figures["single"] = single_creates(http, creates_n, seed)
            cpu, spent = cpu_seconds(pid), cpu_seconds(pid) - cpu
            figures["single cpu"] = spent * 1000 / creates_n
            figures["single x8"] = concurrent_creates(server.url, creates_n, seed)
            cpu = cpu_seconds(pid)
            for name, values in search_latencies(http, searches_n, seed).items():
                figures[f"{name} p50"] = percentile(values, 50)
                figures[f"{name} p95"] = percentile(values, 95)
                # one client, one search after another: the rate is their count over their time
                figures[f"{name} rate"] = len(values) / (sum(values) / 1000)
            http.get("/metadata")  # the searches' events are stored within the linger
            time.sleep(0.5)
            figures["search cpu"] = (cpu_seconds(pid) - cpu) * 1000 / (2 * searches_n)
            figures["search x8"] = concurrent_searches(server.url, 2 * searches_n, seed)
    return figures


def measure(size: str) -> dict[str, dict[str, float]]:
    """figure -> {"off": median, "on": median} over the runs (off and on alternate)."""
    runs = SIZES[size][0]
    samples: dict[str, dict[str, list[float]]] = {}
    for run_number in range(runs):
        order = (False, True) if run_number % 2 == 0 else (True, False)
        for on in order:
            figures = one_run(on, size, seed=run_number)
            shown = ", ".join(f"{k} {v:,.2f}" for k, v in figures.items())
            print(f"run {run_number + 1} audit {'on' if on else 'off'}: {shown}", file=sys.stderr)
            for figure, value in figures.items():
                samples.setdefault(figure, {"off": [], "on": []})["on" if on else "off"].append(
                    value
                )
    return {
        figure: {mode: statistics.median(values) for mode, values in by_mode.items()}
        for figure, by_mode in samples.items()
    }


WORKLOADS = {
    "batch": ("ingest: batch Bundles", "resources/s"),
    "single": ("ingest: single creates", "creates/s"),
    "single x8": (f"ingest: single creates, {CLIENTS} clients", "creates/s"),
    "patient p50": ("search by patient p50", "ms"),
    "patient p95": ("search by patient p95", "ms"),
    "code+date p50": ("search code+date p50", "ms"),
    "code+date p95": ("search code+date p95", "ms"),
    "search x8": (f"search by patient, {CLIENTS} clients", "searches/s"),
    "batch cpu": ("server CPU per 1,000 batched", "ms"),
    "single cpu": ("server CPU per single create", "ms"),
    "search cpu": ("server CPU per search", "ms"),
}


def cost(figure: str, off: float, on: float) -> float:
    """The trail's cost in %: throughput lost, or latency added."""
    if WORKLOADS[figure][1] == "ms":
        return (on - off) / off * 100
    return (off - on) / off * 100


def print_comparison(figures: dict[str, dict[str, float]], runs: int) -> None:
    print(f"Audit trail cost (median of {runs} runs, audit off and on in each)")
    header = ("workload", "audit off", "audit on", "cost")
    rows = [header]
    for figure, (label, unit) in WORKLOADS.items():
        off, on = figures[figure]["off"], figures[figure]["on"]
        fmt = "{:,.2f} " if unit == "ms" else "{:,.0f} "
        rows.append(
            (
                label,
                fmt.format(off) + unit,
                fmt.format(on) + unit,
                f"{cost(figure, off, on):+.1f} %",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


def run(size: str = "medium", db: str | None = None) -> list[Result]:
    """Rows for bench/run.py (`db` is not used: each server needs a fresh file)."""
    return results_of(measure(size))


def results_of(figures: dict[str, dict[str, float]]) -> list[Result]:
    results = []
    for figure in ("batch", "single", "single x8", "search x8"):
        label, unit = WORKLOADS[figure]
        off, on = figures[figure]["off"], figures[figure]["on"]
        results.append(
            Result(
                f"audit {label}",
                "audit on",
                on,
                unit,
                floor=f"off {off:,.0f} {unit} ({cost(figure, off, on):+.1f} %)",
            )
        )
    for name in ("patient", "code+date"):
        p50, p95 = figures[f"{name} p50"], figures[f"{name} p95"]
        results.append(
            Result(
                f"audit search {name}",
                "audit on, one client",
                figures[f"{name} rate"]["on"],
                "searches/s",
                p50_ms=p50["on"],
                floor=f"off p50 {p50['off']:.2f} ms, p95 {p95['off']:.2f} -> {p95['on']:.2f} ms",
            )
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="medium")
    args = parser.parse_args(argv)
    print_comparison(measure(args.size), SIZES[args.size][0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
