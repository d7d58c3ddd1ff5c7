"""Every benchmark of the project, on generated data, in one table.

    python -m bench.run [--size small|medium|large] [--db URL] [--only NAME,...]

Each module in GROUPS exposes `run(size, db) -> list[Result]`; this runs them in turn, each
group in a child process of its own (servers in further subprocesses), and prints one
table: workload, throughput, p50/p99, peak RSS (the benchmark's process, or its server's),
and the floor measured in the same run where one applies. A benchmark that fails gets a
FAILED row (the traceback goes to stderr) and the exit status is 1; speed is never asserted.

`--db` is the database of the population (load, search@N, read, export, deid) and of the
ingest benchmark; it must be empty. By default every benchmark uses fresh SQLite files
(bench.search always builds its own).
Sizes: small is a smoke run (well under two minutes); medium loads about 1 million generated
resources, large about 10 million (with the ingest rate per million and the search latency
at 1 million and at 10 million).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import os
import platform
import sqlite3
import subprocess
import sys
import time
import traceback
from pathlib import Path

from bench.common import SIZES, Result, print_table

# Order matters: `population` loads the generated data that `read`, `export`, `bulk`,
# `deid` and `rights` reuse, so these run in one process; every other module runs in its
# own, so that each peak RSS is that benchmark's own. Modules that are not there are
# skipped with a note.
GROUPS = (
    ("generate",),
    ("population", "read", "export", "bulk", "deid", "rights"),
    ("search",),
    ("broad",),
    ("ingest",),
    ("devices",),
    ("durability",),
    ("writes",),
    ("kill9",),
    ("audit",),
    ("validate",),
    ("core_validation",),
    ("extract",),
    ("fulltext",),
    ("terminology",),
    ("terminology_lib",),
    ("mappers",),
    ("mappers_hl7",),
    ("mappers_csv",),
    ("compression",),
    ("auth",),
    ("clinical",),
    ("analytics",),
    ("subscriptions",),
    ("http_path",),
)
BENCHMARKS = tuple(name for group in GROUPS for name in group)
CHILD_MARK = "BENCH-RESULTS-JSON "


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


def run_here(names: list[str], size: str, db: str | None) -> list[Result]:
    """Run `names` in this process; a failing benchmark gets a FAILED row."""
    results: list[Result] = []
    for name in names:
        try:
            rows, seconds = run_one(name, size, db)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            rows, seconds = [Result(name, f"FAILED: {exc}"[:200])], 0.0
        results += rows
        print(f"  {name}: {len(rows)} row(s) in {seconds:.1f} s", file=sys.stderr, flush=True)
    return results


def run_group(names: list[str], size: str, db: str | None) -> list[Result]:
    """Run `names` in a child process (its own peak RSS); rows come back as JSON."""
    command = [sys.executable, "-m", "bench.run", "--child", ",".join(names), "--size", size]
    if db:
        command += ["--db", db]
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)}
    completed = subprocess.run(command, cwd=root, env=env, stdout=subprocess.PIPE, text=True)
    for line in completed.stdout.splitlines():
        if line.startswith(CHILD_MARK):
            return [Result(**row) for row in json.loads(line[len(CHILD_MARK):])]
    return [Result(name, f"FAILED: the benchmark process exited with {completed.returncode}")
            for name in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--db", default=None, help="database URL (default: fresh SQLite files)")
    parser.add_argument("--only", default="", help="comma-separated benchmark modules")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        rows = run_here(args.child.split(","), args.size, args.db)
        print(CHILD_MARK + json.dumps([dataclasses.asdict(r) for r in rows]), flush=True)
        return 0
    wanted = tuple(n for n in args.only.split(",") if n) or BENCHMARKS
    unknown = set(wanted) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    present = available(wanted)
    missing = [n for n in wanted if n not in present]

    print(f"Diatabase benchmarks, size {args.size}: {machine()}", flush=True)
    results: list[Result] = []
    started = time.perf_counter()
    for group in GROUPS:
        names = [n for n in group if n in present]
        if names:
            results += run_group(names, args.size, args.db)
    print()
    print_table(results)
    print()
    if missing:
        print(f"not present: {', '.join(missing)}")
    print(f"total {time.perf_counter() - started:.0f} s; load average at the end: "
          f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 1 if any(r.workload.startswith("FAILED") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
