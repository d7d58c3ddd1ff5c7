"""Single creates and bulk ingest, durable (synchronous=FULL + group commit) against the
SQLite settings before it (NORMAL: a power cut may lose the last acknowledged commits).

    python -m bench.durability [--size small|medium|large]

Three servers on fresh files, side by side in one run:
- `NORMAL`: one COMMIT per write, the log fsynced only at checkpoints (the former default);
- `FULL`: one COMMIT and one fsync per write (`?group_commit=off`);
- `FULL+group`: writes that arrive together share a COMMIT and its fsync (the default).
Single creates (`POST /Observation`, `Prefer: return=minimal`) at 1, 8 and 32 concurrent
clients, and transaction Bundles of 1,000 Observations from 2 clients. Each figure is the
median of the runs; p95 is in the workload column.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import orjson

from bench.common import Result, percentile, print_table, serve
from bench.http_load import post_request, run_requests

MODES = (
    ("NORMAL", "?synchronous=normal"),
    ("FULL", "?group_commit=off"),
    ("FULL+group", ""),
)
CLIENTS = (1, 8, 32)
SIZES = {  # warm-up creates, creates per client count, Bundles of 1,000, runs
    "small": (10, 32, 1, 1),
    "medium": (100, 400, 4, 3),
    "large": (100, 4000, 20, 3),
}
BUNDLE_SIZE = 1000


def observation(i: int) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
        "subject": {"reference": f"Patient/bench-{i % 100}"},
        "effectiveDateTime": f"2024-06-{1 + i % 28:02d}T08:{i % 60:02d}:00+02:00",
        "valueQuantity": {
            "value": 80 + i % 120,
            "unit": "mg/dL",
            "system": "http://unitsofmeasure.org",
            "code": "mg/dL",
        },
    }


def bundle(start: int) -> bytes:
    entries = [
        {"resource": observation(start + i), "request": {"method": "POST", "url": "Observation"}}
        for i in range(BUNDLE_SIZE)
    ]
    return orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})


def measure(
    url: str, warm: int, creates: int, bundles: int
) -> dict[str, tuple[float, float, float, float]]:
    """(per second, p50, p95, p99 ms) per workload, on a running server."""
    figures = {}
    # A fresh server's first creates are slower (code paths warming up); the 1-client
    # figures come first and should not measure that
    first = [post_request(url, "/Observation", orjson.dumps(observation(i))) for i in range(warm)]
    run_requests(url, first, 1)
    for clients in CLIENTS:
        requests = [
            post_request(url, "/Observation", orjson.dumps(observation(i)))
            for i in range(creates)
        ]
        load = run_requests(url, requests, clients)
        if set(load.statuses) != {201}:
            raise RuntimeError(f"creates answered {load.statuses}; the first error: "
                               f"{load.first_error.decode(errors='replace')}")
        figures[f"creates x{clients}"] = (
            load.rate,
            percentile(load.latencies_ms, 50),
            percentile(load.latencies_ms, 95),
            percentile(load.latencies_ms, 99),
        )
    posts = [post_request(url, "/", bundle(i * BUNDLE_SIZE)) for i in range(bundles)]
    load = run_requests(url, posts, 2)
    if set(load.statuses) != {200}:
        raise RuntimeError(f"Bundles answered {load.statuses}; the first error: "
                               f"{load.first_error.decode(errors='replace')}")
    figures["bulk"] = (
        load.rate * BUNDLE_SIZE,
        percentile(load.latencies_ms, 50),
        percentile(load.latencies_ms, 95),
        percentile(load.latencies_ms, 99),
    )
    return figures


def run(size: str = "medium", db: str | None = None) -> list[Result]:
    """`db` is ignored: every mode needs its own fresh SQLite file."""
    warm, creates, bundles, runs = SIZES[size]
    samples: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
    rss: dict[str, float] = {}
    for _ in range(runs):
        for mode, options in MODES:  # interleaved: each run sees the same machine load
            with tempfile.TemporaryDirectory() as tmp:
                url = f"sqlite:///{Path(tmp) / 'durable.db'}{options}"
                with serve(url) as server:
                    for workload, figure in measure(server.url, warm, creates, bundles).items():
                        samples.setdefault((workload, mode), []).append(figure)
                    rss[mode] = max(rss.get(mode, 0.0), server.peak_rss_mb())
    results = []
    for workload in [f"creates x{c}" for c in CLIENTS] + ["bulk"]:
        for mode, _ in MODES:
            runs_of = samples[(workload, mode)]
            rate, p50, p95, p99 = (statistics.median(f[i] for f in runs_of) for i in range(4))
            what = (
                f"single creates, {workload.split('x')[1]} clients"
                if workload != "bulk"
                else f"transaction Bundles of {BUNDLE_SIZE:,}, 2 clients"
            )
            results.append(
                Result(
                    f"durability {mode}",
                    f"{what}, p95 {p95:.1f} ms",
                    rate,
                    "resources/s" if workload == "bulk" else "creates/s",
                    p50,
                    p99,
                    rss[mode],
                )
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="medium")
    args = parser.parse_args()
    print_table(run(args.size))


if __name__ == "__main__":
    main()
