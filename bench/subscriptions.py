"""What subscriptions cost the write path, and how fast notifications arrive: CGM batch
ingest with 0, 10 and 1,000 active subscriptions, side by side.

Each configuration runs a fresh server (SQLite, its own file) with 1,000 patients and N
R4 subscriptions `Observation?patient=Patient/X&code=http://loinc.org|99504-3` (rest-hook,
full resource, to a receiver in this process on 127.0.0.1), one per patient for the first
N patients. Batch Bundles of CGM readings (bench.ingest's) spread over the 1,000 patients
(20 at the small size) are posted by two clients: with 1,000 subscriptions every reading
is a notification, with 10 one in a hundred. Figures:

- ingest: resources/s of the batches, and the server's CPU per 1,000 resources (matching
  and the outbox rows are in the write transaction; delivery runs in the same process);
- latency: from the answer of the Bundle that wrote a reading to the arrival of its
  notification at the receiver, p50 / p99 (delivery keeps up, or the queue grows).

With 1,000 subscriptions the run is made twice: delivery in the server process (the
default), and apart (`diatabase subscriptions deliver`, DIATABASE_SUBSCRIPTION_DELIVERY=0
on the server): there the server's CPU is the write path's alone, matching and outbox.

The median of the runs is shown; the cost is against 0 subscriptions in the same run.

    python -m bench.subscriptions [--size small|medium|large]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import orjson

from bench.common import Result, cpu_seconds, percentile, serve
from bench.ingest import observation

CGM = "http://loinc.org|99504-3"
SIZES = {  # runs, bundles, bundle size, subscription counts, patients
    "small": (1, 1, 20, (0, 2, 20), 20),
    "medium": (3, 10, 1000, (0, 10, 1000), 1000),
    "large": (5, 20, 1000, (0, 10, 1000), 1000),
}
Config = tuple[int, bool]  # subscriptions, delivery in a process of its own
FHIR_JSON = {"content-type": "application/fhir+json"}


class Receiver:
    """Arrival times of notifications by resource id (R4 rest-hook PUT [endpoint]/Type/id)."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.lock = threading.Lock()
        arrivals, lock = self.arrivals, self.lock

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # connections kept open, as a real receiver's

            def do_PUT(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                with lock:
                    arrivals.setdefault(self.path.rsplit("/", 1)[-1], time.perf_counter())
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        # a listen backlog for the worker's parallel senders (the default 5 drops SYNs,
        # which come back a second later)
        server_class = type("Receiving", (ThreadingHTTPServer,), {"request_queue_size": 128})
        self.server = server_class(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self) -> int:
        with self.lock:
            return len(self.arrivals)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def bundles(count: int, size: int, seed: int, patients: int) -> list[tuple[bytes, list[int]]]:
    """Batch Bundles of CGM readings, each with the patient number of its entries."""
    import random

    rng = random.Random(seed)
    made = []
    for b in range(count):
        entries, owners = [], []
        for i in range(size):
            n = b * size + i
            owners.append(rng.randrange(patients))
            obs = observation(rng, owners[-1], 1_700_000_000.0 + n * 300)
            entries.append({"resource": obs, "request": {"method": "POST", "url": "Observation"}})
        body = orjson.dumps({"resourceType": "Bundle", "type": "batch", "entry": entries})
        made.append((body, owners))
    return made


def setup(http: httpx.Client, receiver: Receiver, subscriptions: int, patients: int) -> None:
    patients = [{"resource": {"resourceType": "Patient", "id": f"bench-{p}"},
                 "request": {"method": "PUT", "url": f"Patient/bench-{p}"}}
                for p in range(patients)]
    http.post("/", json={"resourceType": "Bundle", "type": "batch", "entry": patients})
    if not subscriptions:
        return
    entries = [{"resource": {
        "resourceType": "Subscription", "status": "requested", "reason": "bench",
        "criteria": f"Observation?patient=Patient/bench-{p}&code={CGM}",
        "channel": {"type": "rest-hook", "endpoint": receiver.url,
                    "payload": "application/fhir+json"}},
        "request": {"method": "POST", "url": "Subscription"}} for p in range(subscriptions)]
    answer = http.post("/", json={"resourceType": "Bundle", "type": "batch", "entry": entries})
    answer.raise_for_status()
    deadline = time.monotonic() + 600
    while http.get("/Subscription", params={"status": "active", "_summary": "count"}).json()[
        "total"
    ] < subscriptions:
        if time.monotonic() > deadline:
            raise RuntimeError("the subscriptions were not activated")
        time.sleep(0.2)


def ingest(url: str, bodies: list[tuple[bytes, list[int]]],
           watched: int) -> tuple[float, dict[str, float], int]:
    """resources/s; id -> when the answer that created it arrived, for the readings of
    the first `watched` patients (those with a subscription); resources written."""
    queue, lock, errors = list(bodies), threading.Lock(), []
    answered: dict[str, float] = {}
    total = [0]

    def client() -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            while True:
                with lock:
                    if not queue:
                        return
                    body, owners = queue.pop()
                response = http.post("/", content=body, headers=FHIR_JSON)
                now = time.perf_counter()
                if response.status_code != 200:
                    errors.append(response.text[:200])
                    return
                ids = [e["response"]["location"].split("/")[1]
                       for e in response.json()["entry"]]
                with lock:
                    for rid, owner in zip(ids, owners, strict=True):
                        if owner < watched:
                            answered[rid] = now
                    total[0] += len(ids)

    threads = [threading.Thread(target=client) for _ in range(2)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"batch ingest failed: {errors[:3]}")
    return total[0] / elapsed, answered, total[0]


@contextmanager
def deliverer(db: str, apart: bool) -> Iterator[subprocess.Popen | None]:
    """`diatabase subscriptions deliver` beside the server, when delivery is apart."""
    if not apart:
        yield None
        return
    env = {**os.environ, "DIATABASE_SUBSCRIPTION_POLL_SECONDS": "0.05",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fhir_server.cli", "subscriptions", "deliver", "--db", db],
        env=env, stdout=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def one_run(config: Config, size: str, seed: int) -> dict[str, float]:
    subscriptions, apart = config
    _, bundles_n, bundle_size, _, patients = SIZES[size]
    bodies = bundles(bundles_n, bundle_size, seed, patients)
    receiver = Receiver()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            db = f"sqlite:///{Path(tmp) / 'subscriptions-bench.db'}"
            os.environ["DIATABASE_SUBSCRIPTION_HTTP_LOOPBACK"] = "1"
            os.environ["DIATABASE_SUBSCRIPTION_DELIVERY"] = "0" if apart else "1"
            with serve(db) as server, deliverer(db, apart), httpx.Client(
                base_url=server.url, timeout=600
            ) as http:
                setup(http, receiver, subscriptions, patients)
                # a first Bundle warms the validators, before timing
                http.post("/", content=bundles(1, 20, seed + 1000, patients)[0][0],
                          headers=FHIR_JSON)
                cpu = cpu_seconds(server.proc.pid)
                rate, answered, written = ingest(server.url, bodies, subscriptions)
                spent = cpu_seconds(server.proc.pid) - cpu
                # every notification of the timed batches, waited for (delivery may lag)
                wanted = list(answered)
                deadline = time.monotonic() + 600
                while not all(rid in receiver.arrivals for rid in wanted):
                    if time.monotonic() > deadline:
                        raise RuntimeError("notifications did not all arrive")
                    time.sleep(0.05)
                latencies = [max(receiver.arrivals[rid] - answered[rid], 0.0) * 1000
                             for rid in wanted]
                # delivered per second: from the first write's answer to the last arrival
                span = (max(receiver.arrivals[rid] for rid in wanted)
                        - min(answered[rid] for rid in wanted)) if wanted else 0.0
    finally:
        receiver.close()
    figures = {"rate": rate, "cpu": spent * 1000 / written * 1000}
    if latencies:
        figures["p50"] = percentile(latencies, 50)
        figures["p99"] = percentile(latencies, 99)
        figures["notifications"] = float(len(latencies))
        figures["delivered"] = len(latencies) / span if span > 0 else float(len(latencies))
    return figures


def configs(size: str) -> list[Config]:
    counts = SIZES[size][3]
    return [*((n, False) for n in counts), (counts[-1], True)]


def label(config: Config) -> str:
    n, apart = config
    return f"{n:,} subscriptions" + (", delivery apart" if apart else "")


def measure(size: str) -> dict[Config, dict[str, float]]:
    runs = SIZES[size][0]
    order = configs(size)
    samples: dict[Config, dict[str, list[float]]] = {c: {} for c in order}
    for run_number in range(runs):
        for config in order if run_number % 2 == 0 else reversed(order):
            figures = one_run(config, size, seed=run_number)
            shown = ", ".join(f"{k} {v:,.1f}" for k, v in figures.items())
            print(f"run {run_number + 1}, {label(config)}: {shown}", file=sys.stderr)
            for key, value in figures.items():
                samples[config].setdefault(key, []).append(value)
    return {c: {k: statistics.median(v) for k, v in by.items()} for c, by in samples.items()}


def results_of(figures: dict[Config, dict[str, float]]) -> list[Result]:
    base = figures[(0, False)]
    results = []
    for config, f in figures.items():
        rate_cost = (base["rate"] - f["rate"]) / base["rate"] * 100
        # CPU time comes in 10 ms ticks: a small run on a fast machine may count none
        cpu_cost = (f"{(f['cpu'] - base['cpu']) / base['cpu'] * 100:+.1f} %"
                    if base["cpu"] else "no CPU tick counted without subscriptions")
        results.append(Result(
            "subscriptions ingest", f"CGM batches, {label(config)}", f["rate"], "resources/s",
            floor=f"{rate_cost:+.1f} % rate vs 0; server CPU {f['cpu']:,.0f} ms per 1,000 "
            f"({cpu_cost})",
        ))
    for config, f in figures.items():
        if "p50" in f:
            results.append(Result(
                "subscriptions latency", f"{label(config)}, {f['notifications']:,.0f} "
                "notifications", f["delivered"], "notifications/s",
                p50_ms=f["p50"], p99_ms=f["p99"],
            ))
    return results


def run(size: str = "medium", db: str | None = None) -> list[Result]:
    """Rows for bench/run.py (`db` is not used: each configuration needs a fresh file)."""
    return results_of(measure(size))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="medium")
    args = parser.parse_args(argv)
    from bench.common import print_table

    print_table(run(args.size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
