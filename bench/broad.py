"""Broad date and `_lastUpdated` searches beside a read and a patient's readings, over HTTP.

On the generated population (bench/population.py: medium is 30 patients x 90 days, 379,456
resources, cached under bench/out/), `diatabase serve` answers, from several keep-alive
clients, each of:

  read            GET /Observation/{id}
  patient         Observation?patient=X&code=<CGM>&date=ge<last day>&_count=10
  date            Observation?date=ge2025-12-01&_count=10 (a third of the readings match)
  date -date      the same, `_sort=-date`
  date total      the same, `_total=accurate`
  lastUpdated     Observation?_lastUpdated=gt2000-01-01&_count=10 (everything matches)
  poll            Observation?_lastUpdated=gt<now>&_count=10 (nothing new)
  _id list        Patient?_id=<every patient>

Each row gives requests/s, p50/p99 latency and the server's CPU per request (user + system
of the server process: what it spent, whatever else the shared machine did). With
`--baseline REV`, the same run also serves the same database file from a checkout of REV
(bench.ingest.checkout) and alternates the two, `--rounds` times each: medians.

    python -m bench.broad                          # --size small: 4 patients x 3 days
    python -m bench.broad --size medium --baseline main --rounds 3
    python -m bench.broad --readonly-db bench/out/search-10m.db --baseline main
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench.common import ROOT, Result, cpu_seconds, percentile, print_table, serve
from bench.http_load import expect_ok, run_gets
from bench.ingest import checkout
from bench.population import load

OUT = Path(__file__).parent / "out"
SHAPES = {"small": (4, 3), "medium": (30, 90)}  # patients, days
REQUESTS = {"small": 20, "medium": 300}
CLIENTS = 4
CGM = "http://loinc.org|99504-3"
SEED = 1


def cached_population(size: str) -> Path:
    """The population database of `size`, loaded on first use (medium: ~10 minutes)."""
    OUT.mkdir(exist_ok=True)
    path = OUT / f"broad-{size}.db"
    done = OUT / f"broad-{size}.loaded"
    if not done.exists():
        for stale in OUT.glob(f"broad-{size}.db*"):
            stale.unlink()
        population = load(size, f"sqlite:///{path}", shape=SHAPES[size])
        done.write_text(f"{population.resources}\n")
    return path


def targets(path: Path, requests: int) -> dict[str, list[str]]:
    """The request paths of each row, drawn from what the database holds (read only)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        observations = [row[0] for row in conn.execute(
            "SELECT id FROM resources WHERE type='Observation' AND deleted=0 "
            "AND pk % 97 = 0 LIMIT 2000")]
        patients = [row[0] for row in conn.execute(
            "SELECT id FROM resources WHERE type='Patient' AND deleted=0 LIMIT 100")]
        newest = conn.execute(
            "SELECT max(last_updated) FROM resources WHERE type='Observation'").fetchone()[0]
    finally:
        conn.close()
    rng = random.Random(SEED)
    last_day = "2025-12-31"
    poll_after = newest + 3600  # a poll an hour after the last write: nothing new
    poll = datetime.fromtimestamp(poll_after, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    every = [f"/Observation/{rng.choice(observations)}" for _ in range(requests)]
    return {
        "read": every,
        "patient": [f"/Observation?patient={rng.choice(patients)}&code={CGM}"
                    f"&date=ge{last_day}&_count=10" for _ in range(requests)],
        "date": ["/Observation?date=ge2025-12-01&_count=10"] * requests,
        "date -date": ["/Observation?date=ge2025-12-01&_sort=-date&_count=10"] * requests,
        "date total": ["/Observation?date=ge2025-12-01&_total=accurate&_count=10"]
        * max(requests // 10, 3),
        "lastUpdated": ["/Observation?_lastUpdated=gt2000-01-01&_count=10"] * requests,
        "poll": [f"/Observation?_lastUpdated=gt{poll}&_count=10"] * requests,
        "_id list": [f"/Patient?_id={','.join(patients)}"] * requests,
    }


def measure(db_url: str, paths: dict[str, list[str]], source: Path) -> dict[str, tuple]:
    """(req/s, p50, p99, CPU ms per request) of each row, on one server."""
    figures = {}
    with serve(db_url, root=source) as server:
        pid = server.proc.pid
        for name, batch in paths.items():
            # warm the path and the page cache: with 3 requests, the first row (read)
            # of a fresh server measured at half its rate
            run_gets(server.url, batch[: max(3, len(batch) // 5)], 2)
            cpu = cpu_seconds(pid)
            result = run_gets(server.url, batch, CLIENTS)
            spent = cpu_seconds(pid) - cpu
            expect_ok(result, f"broad {name}")
            figures[name] = (result.rate, percentile(result.latencies_ms, 50),
                             percentile(result.latencies_ms, 99),
                             spent * 1000 / len(batch), server.peak_rss_mb())
    return figures


def medians(runs: list[dict[str, tuple]]) -> dict[str, tuple]:
    return {name: tuple(statistics.median(run[name][i] for run in runs) for i in range(5))
            for name in runs[0]}


def rows_of(figures: dict[str, tuple], label: str, stored: str, backend: str) -> list[Result]:
    return [Result(f"broad {name}",
                   f"{label}; {CLIENTS} clients; {stored}; {cpu:.2f} ms server CPU/request",
                   rate, "req/s", p50, p99, rss, backend=backend)
            for name, (rate, p50, p99, cpu, rss) in figures.items()]


def run(size: str = "small", db: str | None = None, baseline: str | None = None,
        rounds: int = 1) -> list[Result]:
    if db is not None:
        # the targets are drawn from the SQLite file; on MongoDB, bench.population's searches
        raise SystemExit("bench.broad measures its own SQLite population")
    own = "medium" if size in ("medium", "large") else "small"
    path = cached_population(own)
    paths = targets(path, REQUESTS[own])
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    stored = f"{conn.execute('SELECT count(*) FROM resources').fetchone()[0]:,} resources"
    conn.close()
    sides: list[tuple[str, Path]] = [("new planner", ROOT)]
    with contextlib.ExitStack() as stack:
        if baseline:
            sides.append((f"old planner ({baseline})", stack.enter_context(checkout(baseline))))
        runs: dict[str, list[dict[str, tuple]]] = {label: [] for label, _ in sides}
        for _ in range(rounds):
            for label, source in sides:  # alternated: the machine's load falls on both
                runs[label].append(measure(f"sqlite:///{path}", paths, source))
    rows = []
    for label, _ in sides:
        rows += rows_of(medians(runs[label]), f"{label}, median of {rounds}", stored, "sqlite")
    names = [f"broad {name}" for name in paths]
    return sorted(rows, key=lambda row: names.index(row.benchmark))  # old beside new


def readonly(db: Path, baseline: str | None, rounds: int, requests: int = 30) -> list[Result]:
    """The broad searches in-process on a database that must not be written (bench/
    broad_probe.py, run from each side's tree), alternated; medians of every request."""
    probe = Path(__file__).with_name("broad_probe.py")
    sides: list[tuple[str, Path]] = [("new planner", ROOT)]
    times: dict[str, dict[str, list[float]]] = {}
    since = ""
    with contextlib.ExitStack() as stack:
        if baseline:
            old = stack.enter_context(checkout(baseline))
            (old / "bench" / "broad_probe.py").write_bytes(probe.read_bytes())
            sides.append((f"old planner ({baseline})", old))
        for _ in range(rounds):
            for label, source in sides:
                out = subprocess.run(
                    [sys.executable, "-m", "bench.broad_probe", str(db.resolve()), str(requests)],
                    cwd=source, env={**os.environ, "PYTHONPATH": str(source)},
                    capture_output=True, text=True, check=True).stdout
                found = json.loads(out.splitlines()[-1])
                since = found["from"]
                for name, spent in found["times"].items():
                    times.setdefault(label, {}).setdefault(name, []).extend(spent)
    rows = []
    for label, _ in sides:
        for name, spent in times[label].items():
            p50 = percentile(spent, 50)
            rows.append(Result(f"broad@readonly {name}",
                               f"{label}; in-process, first page of _count=10, date=ge{since}; "
                               f"{len(spent)} requests", 1000 / statistics.mean(spent),
                               "req/s (one thread)", p50, percentile(spent, 99)))
    names = list(times["new planner"])
    return sorted(rows, key=lambda row: names.index(row.benchmark.split(" ", 1)[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SHAPES), default="small")
    parser.add_argument("--baseline", help="a git revision to serve side by side (e.g. main)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--readonly-db", type=Path,
                        help="measure in-process on this SQLite file, never written")
    args = parser.parse_args()
    if args.readonly_db:
        print_table(readonly(args.readonly_db, args.baseline, args.rounds))
    else:
        print_table(run(args.size, baseline=args.baseline, rounds=args.rounds))


if __name__ == "__main__":
    main()
