"""The HTTP path's cost: the hot interactions at 8 concurrent clients, with server CPU per
request, on a closed server (a real bearer token, audit trail on, as in production) and
on an --insecure-dev one.

Workloads (one server, `diatabase serve --workers 1`, fresh copy of one small database):
- `http read`: GET /Patient/{id} over the stored patients;
- `http search patient`: GET /Observation?subject=Patient/{id}&_count=10;
- `http create`: POST /Observation (a glucose reading, Prefer: return=minimal);
- `http $validate-code`: GET /CodeSystem/$validate-code?url=ICD-10&code=... .

Load comes from `wrk` (a C load generator: the client costs the 2-core machine little) with
a Lua script per workload, one thread, 8 connections; without `wrk` (CI), from
bench/http_load.py's asyncio client. Figures: requests/s, p50 / p99 latency, and the server
process's CPU (user + system, /proc) divided by the requests answered, which stays
meaningful on a shared machine where wall-clock rates move with the neighbours' load.

`--baseline DIR` serves the same workloads from another source tree (e.g. an export of an
earlier commit) in alternating runs, so that before and after are side by side; the table
prints medians of `--runs` runs and the load average beside them.

    python -m bench.http_path [--size small|medium|large] [--baseline DIR] [--runs N]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from bench.common import ROOT, Result, cpu_seconds
from bench.common import serve as common_serve
from bench.http_load import get_request, post_request, run_requests
from bench.ingest import PATIENTS, make_bundles, observation

SIZES = {"small": (1, 1.0), "medium": (3, 6.0), "large": (5, 10.0)}  # runs, seconds each
CLIENTS = 8
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ICD10_CODES = ("E11", "E10", "E11.9", "E10.9", "I10", "E66", "E78.5", "N18.3", "E11.2", "O24")
WORKLOADS = ("read", "search patient", "create", "$validate-code")
MODES = ("token", "insecure-dev")
ROW_NAMES = [f"http {w}" for w in WORKLOADS] + [f"http {w} insecure-dev" for w in WORKLOADS]
FALLBACK_REQUESTS_PER_SECOND = 400  # how many requests the asyncio client sends per second


@dataclass
class Figure:
    rate: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float  # server CPU per request


@dataclass
class Samples:
    figures: list[Figure] = field(default_factory=list)

    def median(self, name: str) -> float:
        return statistics.median(getattr(f, name) for f in self.figures)


# -- servers ------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    headers: dict[str, str]


@contextmanager
def serve(tree: Path, db: Path, mode: str, issuer: object) -> Iterator[Server]:
    """`diatabase serve` from `tree` (its sources first on the path) on `db`, trusting the
    test issuer's tokens, audit trail on."""
    env = {"DIATABASE_AUDIT": "1",
           "DIATABASE_AUTH_ISSUER": issuer.issuer,  # type: ignore[attr-defined]
           "DIATABASE_AUTH_JWKS": str(issuer.jwks_path)}  # type: ignore[attr-defined]
    with common_serve(f"sqlite:///{db}", insecure_dev=mode == "insecure-dev", root=tree,
                      env=env) as server:
        headers = {}
        if mode == "token":
            token = issuer.token(server.url, "user/*.cruds")  # type: ignore[attr-defined]
            headers = {"Authorization": f"Bearer {token}"}
        yield Server(server.url, server.proc, headers)


def populate(tree: Path, db: Path, issuer: object) -> None:
    """The patients and a few readings each, written through a server once."""
    with serve(tree, db, "insecure-dev", issuer) as server, httpx.Client(
        base_url=server.url, timeout=300
    ) as http:
        for p in range(PATIENTS):
            http.put(f"/Patient/bench-{p}", json={"resourceType": "Patient", "id": f"bench-{p}"})
        for bundle in make_bundles(4, 250, seed=11):
            answer = http.post("/", content=bundle,
                               headers={"content-type": "application/fhir+json"})
            answer.raise_for_status()


# -- load ---------------------------------------------------------------------------------


@dataclass
class Workload:
    method: str
    targets: list[str]
    body: bytes = b""


def workloads() -> dict[str, Workload]:
    rng = random.Random(5)
    patients = [f"bench-{rng.randrange(PATIENTS)}" for _ in range(200)]
    reading = orjson.dumps(observation(rng, 1, 1_700_000_000))
    return {
        "read": Workload("GET", [f"/Patient/{p}" for p in patients]),
        "search patient": Workload(
            "GET", [f"/Observation?subject=Patient/{p}&_count=10" for p in patients]),
        "create": Workload("POST", ["/Observation"], reading),
        "$validate-code": Workload(
            "GET", [f"/CodeSystem/$validate-code?url={ICD10}&code={c}" for c in ICD10_CODES]),
    }


def lua_script(work: Workload, headers: dict[str, str]) -> str:
    """wrk's script: the targets in turn, the headers, and a last line with the figures."""
    paths = ",".join(f'"{t}"' for t in work.targets)
    lines = [f"local paths = {{{paths}}}", "local i = 0",
             'wrk.headers["Accept"] = "application/fhir+json"']
    for name, value in headers.items():
        lines.append(f'wrk.headers["{name}"] = "{value}"')
    if work.method == "POST":
        lines.append('wrk.headers["Content-Type"] = "application/fhir+json"')
        lines.append('wrk.headers["Prefer"] = "return=minimal"')
        body = work.body.decode().replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'wrk.body = "{body}"')
    lines += [
        "request = function()",
        "  i = i + 1",
        f'  return wrk.format("{work.method}", paths[(i % #paths) + 1])',
        "end",
        "done = function(summary, latency, requests)",
        '  io.write(string.format("WRK %d %d %d %d %f %f\\n", summary.requests,',
        "    summary.duration, summary.errors.status, summary.errors.connect",
        "    + summary.errors.read + summary.errors.write + summary.errors.timeout,",
        "    latency:percentile(50) / 1000, latency:percentile(99) / 1000))",
        "end",
    ]
    return "\n".join(lines) + "\n"


def load_wrk(server: Server, work: Workload, seconds: float, folder: Path) -> tuple[int, float,
                                                                                   float, float]:
    """(requests, rate, p50 ms, p99 ms) of `seconds` of wrk load."""
    script = folder / "load.lua"
    script.write_text(lua_script(work, server.headers))
    completed = subprocess.run(
        ["wrk", "-t1", f"-c{CLIENTS}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
         "-s", str(script), server.url],
        capture_output=True, text=True, timeout=seconds + 120, check=True)
    line = next(x for x in completed.stdout.splitlines() if x.startswith("WRK "))
    requests, duration_us, bad_status, broken, p50, p99 = line.split()[1:]
    if int(bad_status) or int(broken):
        raise RuntimeError(f"{work.method} {work.targets[0]}: {bad_status} answers other than "
                           f"2xx/3xx, {broken} socket errors")
    count = int(requests)
    return count, count / (int(duration_us) / 1e6), float(p50), float(p99)


def load_asyncio(server: Server, work: Workload, seconds: float) -> tuple[int, float, float,
                                                                          float]:
    extra = "".join(f"{k}: {v}\r\n" for k, v in server.headers.items())
    count = max(CLIENTS * 5, int(FALLBACK_REQUESTS_PER_SECOND * seconds))
    targets = [work.targets[i % len(work.targets)] for i in range(count)]
    if work.method == "POST":
        requests = [post_request(server.url, t, work.body).replace(
            b"\r\n\r\n", f"\r\n{extra}\r\n".encode(), 1) if extra else
            post_request(server.url, t, work.body) for t in targets]
    else:
        requests = [get_request(server.url, t, extra) for t in targets]
    figures = run_requests(server.url, requests, CLIENTS)
    wrong = {s: n for s, n in figures.statuses.items() if not 200 <= s < 300}
    if wrong:
        raise RuntimeError(f"{work.method} {work.targets[0]}: {wrong}; "
                           f"{figures.first_error[:300]!r}")
    latencies = sorted(figures.latencies_ms)
    return (figures.requests, figures.rate, latencies[len(latencies) // 2],
            latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))])


def measure(server: Server, work: Workload, seconds: float, folder: Path) -> Figure:
    use_wrk = shutil.which("wrk") is not None
    # warm: connections, caches, the token verified once, the code paths compiled
    if use_wrk:
        load_wrk(server, work, 1, folder)
    else:
        load_asyncio(server, work, 0.2)
    before = cpu_seconds(server.proc.pid)
    if use_wrk:
        count, rate, p50, p99 = load_wrk(server, work, seconds, folder)
    else:
        count, rate, p50, p99 = load_asyncio(server, work, seconds)
    spent = cpu_seconds(server.proc.pid) - before
    return Figure(rate, p50, p99, spent * 1000 / count)


# -- runs ---------------------------------------------------------------------------------


def measure_all(trees: dict[str, Path], size: str, runs: int | None = None,
                modes: tuple[str, ...] = MODES,
                names: tuple[str, ...] = WORKLOADS) -> dict[tuple[str, str, str], Samples]:
    """(tree label, mode, workload) -> samples; trees and modes alternate run by run."""
    from tests.auth_tokens import TestIssuer

    default_runs, seconds = SIZES[size]
    runs = runs or default_runs
    samples: dict[tuple[str, str, str], Samples] = {}
    work = {name: one for name, one in workloads().items() if name in names}
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        issuer = TestIssuer.create(folder)
        seed_db = folder / "seed" / "http.db"
        seed_db.parent.mkdir()
        populate(trees[list(trees)[-1]], seed_db, issuer)
        order = [(label, mode) for label in trees for mode in modes]
        for turn in range(runs):
            for label, mode in order if turn % 2 == 0 else order[::-1]:
                run_dir = folder / f"run-{turn}-{label}-{mode}"
                run_dir.mkdir()
                shutil.copy(seed_db, run_dir / "http.db")
                with serve(trees[label], run_dir / "http.db", mode, issuer) as server:
                    for name, one in work.items():
                        figure = measure(server, one, seconds, folder)
                        samples.setdefault((label, mode, name), Samples()).figures.append(figure)
                shutil.rmtree(run_dir, ignore_errors=True)
    return samples


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def results_of(samples: dict[tuple[str, str, str], Samples], label: str, runs: int,
               baseline: str | None) -> list[Result]:
    rows = []
    client = "wrk" if shutil.which("wrk") else "asyncio client"
    for mode in MODES:
        for name in WORKLOADS:
            found = samples.get((label, mode, name))
            if found is None:
                continue
            floor = f"{found.median('cpu_ms'):.3f} ms CPU/req"
            before = samples.get((baseline, mode, name)) if baseline else None
            if before is not None:
                floor += (f"; before {before.median('rate'):,.0f} req/s, "
                          f"{before.median('cpu_ms'):.3f} ms CPU/req")
            row = f"http {name}" + ("" if mode == "token" else " insecure-dev")
            rows.append(Result(row, f"{CLIENTS} clients ({client}), {mode}, median of {runs}",
                               found.median("rate"), "req/s", found.median("p50_ms"),
                               found.median("p99_ms"), floor=floor))
    return rows


def print_side_by_side(samples: dict[tuple[str, str, str], Samples], labels: list[str],
                       runs: int) -> None:
    print(f"HTTP path, {CLIENTS} clients, medians of {runs} runs "
          f"(load average after: {load_average()})")
    header = f"{'workload':<30}" + "".join(
        f"{label + ' req/s':>16}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/req':>12}"
        for label in labels)
    print(header)
    print("-" * len(header))
    for mode in MODES:
        for name in WORKLOADS:
            if not any((label, mode, name) in samples for label in labels):
                continue
            cells = ""
            for label in labels:
                found = samples.get((label, mode, name))
                if found is None:
                    cells += f"{'-':>46}"
                    continue
                cells += (f"{found.median('rate'):>16,.0f}{found.median('p50_ms'):>9.2f}"
                          f"{found.median('p99_ms'):>9.2f}{found.median('cpu_ms'):>12.3f}")
            print(f"{name + ' (' + mode + ')':<30}{cells}")


def run(size: str = "small", db: str | None = None) -> list[Result]:
    """The report's rows: this tree only (the side-by-side comparison is `main`'s)."""
    runs = SIZES[size][0]
    return results_of(measure_all({"after": ROOT}, size), "after", runs, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="small")
    parser.add_argument("--baseline", help="another source tree served in alternate runs")
    parser.add_argument("--runs", type=int, help="runs (default by size)")
    parser.add_argument("--mode", choices=MODES, help="only this server mode")
    parser.add_argument("--workload", choices=WORKLOADS, action="append",
                        help="only this workload (repeatable)")
    args = parser.parse_args(argv)
    trees = {"before": Path(args.baseline).resolve()} if args.baseline else {}
    trees["after"] = ROOT
    runs = args.runs or SIZES[args.size][0]
    print(f"load average before: {load_average()}", flush=True)
    modes = (args.mode,) if args.mode else MODES
    samples = measure_all(trees, args.size, runs, modes, tuple(args.workload or WORKLOADS))
    print_side_by_side(samples, list(trees), runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
