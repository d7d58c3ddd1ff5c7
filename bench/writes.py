"""Single creates on every core: `POST /Observation` of one glucose reading per request, at
1, 8 and 32 concurrent clients, on a server with 1 and with 2 worker processes.

    python -m bench.writes [--size small|medium|large] [--before DIR]

Each server starts on a fresh SQLite file (synchronous=FULL with group commit, the
defaults), with the audit trail on (the default: a write's event is committed with it)
and `--insecure-dev` on 127.0.0.1 (access control's own cost is bench/auth.py's). The load
comes from `wrk` (a Lua script makes each body different) when it is installed, so that
the client costs the two cores little; otherwise from bench/http_load.py's asyncio client
(its figures then include the client's share of the CPU). Server CPU per create is the
user + system time of the server's processes (workers included) over the creates.

With `--before DIR` (another checkout of the project, e.g. `git worktree add` of an older
commit) every server is started twice, once from each tree, alternately in each run, and
the table shows both side by side: the change against the code before it on the same
machine state. Figures are medians over the runs.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from bench.common import ROOT, Result, percentile, serve
from bench.http_load import post_request, run_requests
from bench.ingest import observation as ingest_observation

CLIENTS = (1, 8, 32)
WORKERS = (1, 2)
PATIENTS = 20
SIZES = {  # runs, seconds of wrk load per cell, creates per cell without wrk
    "small": (1, 1, 40),
    "medium": (3, 5, 1500),
    "large": (5, 10, 4000),
}
FHIR_JSON = {"content-type": "application/fhir+json"}

# Each request a different reading: its time and value from the request's number.
WRK_SCRIPT = """
local n = 0
thread_id = 0
local counter = 1
function setup(thread)
  thread:set("thread_id", counter)
  counter = counter + 1
end
function request()
  n = n + 1
  local body = string.format(
    '{"resourceType":"Observation","status":"final",'
    .. '"category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/'
    .. 'observation-category","code":"laboratory"}]}],'
    .. '"code":{"coding":[{"system":"http://loinc.org","code":"99504-3"}]},'
    .. '"subject":{"reference":"Patient/bench-%d"},'
    .. '"effectiveDateTime":"2025-%02d-%02dT%02d:%02d:00+00:00",'
    .. '"valueQuantity":{"value":%d,"unit":"mg/dL","system":"http://unitsofmeasure.org",'
    .. '"code":"mg/dL"}}',
    (thread_id * 7 + n) % %PATIENTS%, 1 + n % 12, 1 + n % 28, n % 24, n % 60, 40 + n % 360)
  return wrk.format("POST", "/Observation", {
    ["Content-Type"] = "application/fhir+json",
    ["Prefer"] = "return=minimal"}, body)
end
function done(summary, latency, requests)
  io.write(string.format("WRK-RESULT %d %d %d %d %.1f %.1f\\n",
    summary.requests, summary.errors.status, summary.errors.connect + summary.errors.read
      + summary.errors.write + summary.errors.timeout,
    summary.duration, latency:percentile(50), latency:percentile(99)))
end
""".replace("%PATIENTS%", str(PATIENTS))


@dataclass
class Cell:
    """One load on one server: creates/s, latency percentiles, server CPU per create."""

    rate: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float


def observation(n: int) -> dict:
    """The n-th glucose reading (bench.ingest's, a minute apart)."""
    return ingest_observation(random.Random(n), n % PATIENTS, 1_700_000_000 + n * 60)


def with_wrk(url: str, clients: int, seconds: int, script: Path) -> Cell:
    completed = subprocess.run(
        ["wrk", "-t", str(min(clients, 2)), "-c", str(clients), "-d", f"{seconds}s",
         "--timeout", "30s", "-s", str(script), url],
        capture_output=True, text=True, timeout=seconds + 120,
    )
    line = next((x for x in completed.stdout.splitlines() if x.startswith("WRK-RESULT")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result: {completed.stdout[-500:]}"
                           f"{completed.stderr[-500:]}")
    requests, bad_status, socket_errors, micros, p50, p99 = line.split()[1:]
    if int(bad_status) or int(socket_errors):
        raise RuntimeError(f"wrk: {bad_status} answers other than 2xx, {socket_errors} errors")
    return Cell(int(requests) / (int(micros) / 1e6), float(p50) / 1000, float(p99) / 1000, 0.0)


def with_asyncio(url: str, clients: int, count: int, start: int) -> Cell:
    bodies = [orjson.dumps(observation(start + i)) for i in range(count)]
    figures = run_requests(url, [post_request(url, "/Observation", b) for b in bodies], clients)
    wrong = {s: n for s, n in figures.statuses.items() if s != 201}
    if wrong:
        raise RuntimeError(f"creates answered {wrong}: {figures.first_error[:300]!r}")
    lat = figures.latencies_ms
    return Cell(figures.rate, percentile(lat, 50), percentile(lat, 99), 0.0)


def one_server(root: Path, workers: int, size: str, script: Path | None) -> dict[int, Cell]:
    """A fresh server from `root`; every client count in turn: clients -> Cell."""
    _, seconds, count = SIZES[size]
    cells: dict[int, Cell] = {}
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{Path(tmp) / 'writes.db'}"
        with serve(db, workers=workers, root=root) as server, httpx.Client(
            base_url=server.url, timeout=60
        ) as http:
            for p in range(PATIENTS):
                http.put(f"/Patient/bench-{p}", json={"resourceType": "Patient",
                                                       "id": f"bench-{p}"})
            # warm every worker's validators and caches before timing
            with_asyncio(server.url, 2 * workers, 20 * workers, 10_000_000)
            for clients in CLIENTS:
                cpu = server.cpu_seconds()
                if script is not None:
                    cell = with_wrk(server.url, clients, seconds, script)
                    creates = cell.rate * seconds
                else:
                    cell = with_asyncio(server.url, clients, count, clients * 1_000_000)
                    creates = count
                cell.cpu_ms = (server.cpu_seconds() - cpu) * 1000 / creates
                cells[clients] = cell
    return cells


def measure(size: str, before: Path | None) -> dict[tuple[str, int, int], list[Cell]]:
    """(code, workers, clients) -> a Cell per run; code "after" (this tree), "before"."""
    runs = SIZES[size][0]
    trees = [("after", ROOT)] + ([("before", before)] if before is not None else [])
    samples: dict[tuple[str, int, int], list[Cell]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        script: Path | None = None
        if shutil.which("wrk"):
            script = Path(tmp) / "post.lua"
            script.write_text(WRK_SCRIPT)
        for run in range(runs):
            for workers in WORKERS:
                order = trees if run % 2 == 0 else trees[::-1]
                for code, root in order:
                    cells = one_server(root, workers, size, script)
                    for clients, cell in cells.items():
                        samples.setdefault((code, workers, clients), []).append(cell)
                        print(f"run {run + 1} {code} workers {workers} clients {clients}: "
                              f"{cell.rate:,.0f}/s p50 {cell.p50_ms:.1f} p99 {cell.p99_ms:.1f} "
                              f"cpu {cell.cpu_ms:.2f} ms", file=sys.stderr, flush=True)
    return samples


def median_cell(cells: list[Cell]) -> Cell:
    return Cell(*(statistics.median(getattr(c, f) for c in cells)
                  for f in ("rate", "p50_ms", "p99_ms", "cpu_ms")))


def results_of(samples: dict[tuple[str, int, int], list[Cell]], client: str) -> list[Result]:
    results = []
    for workers in WORKERS:
        for clients in CLIENTS:
            after = median_cell(samples[("after", workers, clients)])
            floor = f"server CPU {after.cpu_ms:.2f} ms/create"
            if ("before", workers, clients) in samples:
                b = median_cell(samples[("before", workers, clients)])
                floor += (f"; before: {b.rate:,.0f}/s p50 {b.p50_ms:.1f} p99 {b.p99_ms:.1f}"
                          f" CPU {b.cpu_ms:.2f} ms")
            results.append(Result(
                f"writes {workers} worker{'s' if workers > 1 else ''} {clients} client"
                f"{'s' if clients > 1 else ''}",
                f"single creates, {client}", after.rate, "creates/s",
                p50_ms=after.p50_ms, p99_ms=after.p99_ms, floor=floor))
    return results


def print_comparison(samples: dict[tuple[str, int, int], list[Cell]], runs: int) -> None:
    has_before = any(code == "before" for code, _, _ in samples)
    print(f"Single creates (median of {runs} run(s); load average "
          f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())})")
    header = ["workers", "clients"]
    for code in (("before", "after") if has_before else ("after",)):
        header += [f"{code} creates/s", f"{code} p50 ms", f"{code} p99 ms", f"{code} CPU ms"]
    rows = [header]
    for workers in WORKERS:
        for clients in CLIENTS:
            row = [str(workers), str(clients)]
            for code in (("before", "after") if has_before else ("after",)):
                c = median_cell(samples[(code, workers, clients)])
                row += [f"{c.rate:,.0f}", f"{c.p50_ms:.1f}", f"{c.p99_ms:.1f}", f"{c.cpu_ms:.2f}"]
            rows.append(row)
    for code in (("before", "after") if has_before else ("after",)):
        for clients in CLIENTS:
            one = median_cell(samples[(code, 1, clients)]).rate
            two = median_cell(samples[(code, 2, clients)]).rate
            print(f"  {code}: 2 workers / 1 worker at {clients} clients: {two / one:.2f}x")
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.rjust(widths[i]) for i, cell in enumerate(row)))


def run(size: str = "medium", db: str | None = None) -> list[Result]:
    """Rows for bench/run.py (`db` is not used: each server needs a fresh file)."""
    client = "wrk" if shutil.which("wrk") else "asyncio client"
    return results_of(measure(size, None), client)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="medium")
    parser.add_argument("--before", type=Path, default=None,
                        help="another checkout to compare with, side by side")
    args = parser.parse_args(argv)
    samples = measure(args.size, args.before.resolve() if args.before else None)
    print_comparison(samples, SIZES[args.size][0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
