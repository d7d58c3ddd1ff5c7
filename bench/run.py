"""Every benchmark of the project, on generated data, in one table.

    python -m bench.run [--size small|medium|large] [--db URL] [--only NAME,...]

Each module in BENCHMARKS exposes `run(size, db) -> list[Result]`; this runs them in turn
in this process (servers in subprocesses), resetting the peak-RSS counter before each, and
prints one table: workload, throughput, p50/p99, peak RSS, and the floor measured in the
same run where one applies. A benchmark that fails gets a FAILED row (the traceback goes to
stderr) and the exit status is 1; speed is never asserted.

`--db` is the database of the population (load, search, read, export) and of the ingest
benchmark; it must be empty. By default every benchmark uses fresh SQLite files.
Sizes: small is a smoke run (well under two minutes); medium loads about 1 million generated
resources, large about 10 million (with the ingest rate per million and the search latency
at 1 million and at 10 million).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import platform
import sqlite3
import sys
import time
import traceback
from pathlib import Path

from bench.common import SIZES, Result, print_table

# Order matters: `population` loads the generated data that `read` and `export` reuse.
# Modules that are not there yet (merged later) are skipped with a note.
BENCHMARKS = (
    "generate",
    "population",
    "read",
    "export",
    "search",
    "deid",
    "ingest",
    "validate",
    "extract",
    "terminology",
    "terminology_lib",
    "mappers",
    "mappers_hl7",
    "mappers_csv",
)


def reset_peak_rss() -> None:
    """Start each benchmark's peak RSS afresh (Linux: writing 5 to clear_refs resets VmHWM)."""
    with contextlib.suppress(OSError):  # then peak RSS is the process's peak so far
        Path("/proc/self/clear_refs").write_text("5")


def available(names: tuple[str, ...]) -> list[str]:
    here = Path(__file__).resolve().parent
    return [name for name in names if (here / f"{name}.py").exists()]


def run_one(name: str, size: str, db: str | None) -> tuple[list[Result], float]:
    module = importlib.import_module(f"bench.{name}")
    reset_peak_rss()
    started = time.perf_counter()
    rows = module.run(size, db)
    if not rows:
        raise RuntimeError(f"bench.{name} returned no result")
    return rows, time.perf_counter() - started


def machine() -> str:
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version}, load average {load}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--db", default=None, help="database URL (default: fresh SQLite files)")
    parser.add_argument("--only", default="", help="comma-separated benchmark modules")
    args = parser.parse_args(argv)
    wanted = tuple(n for n in args.only.split(",") if n) or BENCHMARKS
    unknown = set(wanted) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    names = available(wanted)
    missing = [n for n in wanted if n not in names]

    print(f"Diatabase benchmarks, size {args.size}: {machine()}", flush=True)
    results: list[Result] = []
    failed = False
    started = time.perf_counter()
    for name in names:
        try:
            rows, seconds = run_one(name, args.size, args.db)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            rows, seconds, failed = [Result(name, f"FAILED: {exc}"[:200])], 0.0, True
        results += rows
        print(f"  {name}: {len(rows)} row(s) in {seconds:.1f} s", file=sys.stderr, flush=True)
    print()
    print_table(results)
    print()
    if missing:
        print(f"not present (yet): {', '.join(missing)}")
    print(f"total {time.perf_counter() - started:.0f} s; load average at the end: "
          f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
