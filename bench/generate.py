"""Generator throughput: resources written to NDJSON per second (median of 3 runs).

    python bench/generate.py [--patients 40] [--days 14] [--runs 3]

Prints a table: one row per run size, with resources, bytes written, resources per second
of wall time (what the issue's 100,000/s target is about) and per second of CPU time (the
same figure without the other processes sharing the machine). The second row is a longer
window for fewer patients, where CGM readings are an even larger share of the output.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Result, own_peak_rss_mb  # noqa: E402
from fhir_server.synthetic import write_ndjson  # noqa: E402

SIZES = {"small": (5, 3, 1), "medium": (40, 14, 3), "large": (100, 30, 3)}  # patients, days, runs


def measure(patients: int, days: int, runs: int) -> tuple[int, int, float, float]:
    """Same seed every run (same output), so the runs differ only by the machine's noise."""
    wall, cpu, total, size = [], [], 0, 0
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            started, started_cpu = time.perf_counter(), time.process_time()
            counts = write_ndjson(tmp, patients=patients, days=days, seed=1)
            elapsed, elapsed_cpu = time.perf_counter() - started, time.process_time() - started_cpu
            total = sum(counts.values())
            size = sum(p.stat().st_size for p in Path(tmp).glob("*.ndjson"))
            wall.append(total / elapsed)
            cpu.append(total / elapsed_cpu)
    return total, size, statistics.median(wall), statistics.median(cpu)


def run(size: str = "small", db: str | None = None) -> list[Result]:
    """Generator throughput for the report (`db` is unused: NDJSON files only)."""
    patients, days, runs = SIZES[size]
    total, written, rate, cpu_rate = measure(patients, days, runs)
    return [Result(
        "generate",
        f"{patients} patients x {days} days to NDJSON, {total:,} resources, "
        f"{written / 1e6:,.1f} MB, median of {runs}; {cpu_rate:,.0f} per CPU second",
        rate, "resources/s", peak_rss_mb=own_peak_rss_mb(), backend="ndjson")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sizes = [(args.patients, args.days), (max(args.patients // 4, 1), args.days * 4)]
    print(f"{'patients':>8} {'days':>5} {'resources':>10} {'MB':>7} {'resources/s':>12} "
          f"{'per CPU s':>10}")
    for patients, days in sizes:
        total, size, rate, cpu_rate = measure(patients, days, args.runs)
        print(f"{patients:>8} {days:>5} {total:>10,} {size / 1e6:>7.1f} {rate:>12,.0f} "
              f"{cpu_rate:>10,.0f}")


if __name__ == "__main__":
    main()
