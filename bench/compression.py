"""Compression benchmark: the same GETs with and without `Accept-Encoding: gzip`.

The server gzips responses of 1 KiB and more for clients that accept it (level 6). This
measures what that costs the server and saves the network, side by side in one run, for
the CapabilityStatement (~500 KB of JSON) and for a searchset of 100 Observations: requests
per second, latency percentiles, and bytes on the wire per answer (the floor column).

    python -m bench.compression [--size small|medium|large]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import httpx

from bench.common import Result, percentile, print_table, serve
from bench.http_load import expect_ok, run_gets

REQUESTS = {"small": 40, "medium": 400, "large": 2000}
RUNS = 3
CLIENTS = 2
GZIP = "Accept-Encoding: gzip\r\n"


def _observations(url: str, count: int) -> None:
    entries = [
        {
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
                "subject": {"reference": "Patient/bench"},
                "effectiveDateTime": f"2024-03-{1 + i % 28:02d}T08:00:00+01:00",
                "valueQuantity": {"value": 90 + i % 60, "unit": "mg/dL",
                                  "system": "http://unitsofmeasure.org", "code": "mg/dL"},
            },
            "request": {"method": "POST", "url": "Observation"},
        }
        for i in range(count)
    ]
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": entries}
    httpx.post(url, json=bundle, timeout=120).raise_for_status()


def _wire_bytes(url: str, target: str, gzip: bool) -> int:
    headers = {"Accept-Encoding": "gzip" if gzip else "identity"}
    with httpx.stream("GET", url + target, headers=headers, timeout=60) as response:
        return sum(len(chunk) for chunk in response.iter_raw())


def run(size: str = "small", db: str | None = None) -> list[Result]:
    count = REQUESTS[size]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        db_url = db or f"sqlite:///{Path(folder) / 'compression.db'}"
        with serve(db_url) as server:
            _observations(server.url, 100)
            for name, target in (
                ("metadata", "/metadata"),
                ("search 100", "/Observation?_count=100"),
            ):
                for gzip in (False, True):
                    headers = GZIP if gzip else ""
                    run_gets(server.url, [target] * 5, 1, headers)  # warm up
                    figures = [run_gets(server.url, [target] * count, CLIENTS, headers)
                               for _ in range(RUNS)]
                    for one in figures:
                        expect_ok(one, name)
                    latencies = [ms for one in figures for ms in one.latencies_ms]
                    wire = _wire_bytes(server.url, target, gzip)
                    rows.append(Result(
                        f"compression {name}",
                        f"GET {target}, {'gzip' if gzip else 'identity'}, {count} requests x "
                        f"{RUNS} runs, {CLIENTS} clients",
                        statistics.median(one.rate for one in figures), "req/s",
                        percentile(latencies, 50), percentile(latencies, 99),
                        server.peak_rss_mb(), f"{wire:,} bytes on the wire"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(REQUESTS), default="small")
    args = parser.parse_args()
    print_table(run(args.size))


if __name__ == "__main__":
    main()
