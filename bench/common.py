"""What the benchmarks share: a server in a subprocess, latency statistics, the result table.

Every benchmark module exposes `run(size, db=None) -> list[Result]` so that `bench/run.py`
can print one report, and a `main()` for running it alone.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
SIZES = ("small", "medium", "large")


@dataclass
class Result:
    benchmark: str
    workload: str
    throughput: float | None = None  # per second
    unit: str = "req/s"
    p50_ms: float | None = None
    p99_ms: float | None = None
    peak_rss_mb: float | None = None
    floor: str = ""  # what the same run measured as the lower bound, e.g. raw SQLite inserts
    backend: str = "sqlite"


def percentile(values: Sequence[float], q: int) -> float:
    """q-th percentile (1..99) of a sample; the value itself for a single measurement."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    """Peak RSS of a process and its children (uvicorn workers), added up, in MB."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    total = 0.0
    for one in pids:
        status = Path(f"/proc/{one}/status")
        if status.exists():
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (uvicorn workers) so far: what
    a server spent, whatever else the machine was doing meanwhile."""
    total = 0
    children = Path(f"/proc/{pid}/task/{pid}/children")
    pids = [pid, *(int(p) for p in children.read_text().split())] if children.exists() else [pid]
    for one in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def own_peak_rss_mb() -> float:
    return peak_rss_mb(os.getpid())


@dataclass
class ServerProcess:
    url: str
    proc: subprocess.Popen

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.proc.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server and its worker processes so far."""
        return cpu_seconds(self.proc.pid)


@contextmanager
def serve(
    db_url: str,
    workers: int = 1,
    extra: Sequence[str] = (),
    insecure_dev: bool = True,
    root: Path = ROOT,
    env: dict[str, str] | None = None,
) -> Iterator[ServerProcess]:
    """`diatabase serve` on a free port, until the block ends (with --insecure-dev unless
    told otherwise: the benchmarks measure the FHIR work; bench/auth.py the access control).
    `root`: the source tree the server runs from (another checkout, for before/after);
    `env`: settings given to it as environment variables."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fhir_server.cli",
            "serve",
            "--db",
            db_url,
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--workers",
            str(workers),
            *(["--insecure-dev"] if insecure_dev else []),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        # `python -m` puts the working directory first on sys.path: run from `root`
        cwd=root,
        env={**os.environ, **(env or {}), "PYTHONPATH": str(root)},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_serving(url, proc)
        yield ServerProcess(url, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            # uvicorn waits for requests still running (a slow search on a big database):
            # the figures are taken, so do not lose them to a slow shutdown.
            proc.kill()
            proc.wait(timeout=30)


def wait_serving(url: str, proc: subprocess.Popen) -> None:
    """Until the server at `url` answers (180 s at most: a loaded machine starts it slowly);
    an error if it does not, or if its process ends first."""
    deadline = time.monotonic() + 180
    while True:
        try:
            httpx.get(f"{url}/metadata", timeout=10)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the benchmark server did not start") from None
            time.sleep(0.2)


def print_table(results: Sequence[Result], title: str = "") -> None:
    if title:
        print(title)
    header = ("benchmark", "workload", "throughput", "p50 ms", "p99 ms", "peak RSS MB", "floor")
    rows = [header]
    for r in results:
        rows.append(
            (
                r.benchmark,
                r.workload,
                f"{r.throughput:,.0f} {r.unit}" if r.throughput is not None else "-",
                f"{r.p50_ms:.2f}" if r.p50_ms is not None else "-",
                f"{r.p99_ms:.2f}" if r.p99_ms is not None else "-",
                f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb is not None else "-",
                r.floor or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
