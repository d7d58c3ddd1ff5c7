"""kill -9 during concurrent single creates: is every acknowledged create still there?

    python -m bench.kill9 [--size small|medium|large] [--workers N]

One SQLite file; again and again a server (`--workers N` processes, audit on,
`--insecure-dev` on 127.0.0.1) is started on it, 8 clients post glucose Observations,
and, once 20 creates were answered, after a random 0.2-2 s every process of the server
is killed with SIGKILL at once. After each kill the file is opened: `PRAGMA
integrity_check` must say ok and every create answered 201 must be readable. The table
gives the creates acknowledged, those lost (0 is the only right answer) and the kills.

A process kill keeps what the kernel was given (a power cut would not): this checks that
no answer leaves before its COMMIT, with several worker processes sharing the file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

from bench.common import ROOT, Result, free_port, wait_serving
from bench.writes import observation

SIZES = {"small": 1, "medium": 10, "large": 60}  # kills
CLIENTS = 8
WARM = 20  # creates acknowledged before the kill is timed


def start(db: Path, port: int, workers: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fhir_server.cli", "serve", "--db", f"sqlite:///{db}",
         "--port", str(port), "--log-level", "warning", "--workers", str(workers),
         "--insecure-dev"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,  # its own process group: the workers are killed with it
    )


async def post_until_gone(port: int, acknowledged: list[str], first: int) -> None:
    """CLIENTS connections posting creates until the server is gone; ids answered 201."""
    body_number = first

    async def client() -> None:
        nonlocal body_number
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return
        try:
            while True:
                body_number += 1
                body = orjson.dumps(observation(body_number))
                writer.write(
                    f"POST /Observation HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    "Content-Type: application/fhir+json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line[15:]) for line in head.split(b"\r\n")
                              if line[:15].lower() == b"content-length:")
                answer = await reader.readexactly(length)
                if head[9:12] != b"201":
                    raise RuntimeError(f"a create answered {answer[:300]!r}")
                acknowledged.append(orjson.loads(answer)["id"])
        except (OSError, asyncio.IncompleteReadError, StopIteration):
            return  # killed
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(CLIENTS)))


def one_kill(db: Path, workers: int, rng: random.Random, first: int) -> list[str]:
    port = free_port()
    proc = start(db, port, workers)
    acknowledged: list[str] = []
    try:
        wait_serving(f"http://127.0.0.1:{port}", proc)

        def killer() -> None:
            # once creates flow (a cold server on a loaded machine is slow to answer the
            # first), at a random moment: sleeping is the point here, not a wait
            deadline = time.monotonic() + 120
            while len(acknowledged) < WARM and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.2, 2.0))
            os.killpg(proc.pid, signal.SIGKILL)

        killing = threading.Thread(target=killer)
        killing.start()
        asyncio.run(post_until_gone(port, acknowledged, first))
        killing.join()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(60)
    return acknowledged


def lost_of(db: Path, ids: list[str]) -> tuple[bool, int]:
    """(integrity ok, acknowledged creates not found) in the file as the kill left it."""
    conn = sqlite3.connect(db)
    try:
        ok = conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        found = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            found |= {row[0] for row in conn.execute(
                f"SELECT id FROM resources WHERE type='Observation' AND id IN ({marks})", chunk)}
        return ok, len(set(ids) - found)
    finally:
        conn.close()


def measure(kills: int, workers: int, seed: int = 1) -> tuple[int, int, int, float]:
    """(acknowledged, lost, kills with a damaged file, seconds of load)."""
    rng = random.Random(seed)
    acknowledged = lost = damaged = 0
    loaded = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "kill9.db"
        for kill in range(kills):
            started = time.perf_counter()
            ids = one_kill(db, workers, rng, kill * 10_000_000)
            loaded += time.perf_counter() - started
            ok, missing = lost_of(db, ids)
            acknowledged += len(ids)
            lost += missing
            damaged += not ok
            print(f"kill {kill + 1}: {len(ids)} acknowledged, {missing} lost, integrity "
                  f"{'ok' if ok else 'DAMAGED'}", file=sys.stderr, flush=True)
    return acknowledged, lost, damaged, loaded


def run(size: str = "medium", db: str | None = None, workers: int = 2) -> list[Result]:
    """Rows for bench/run.py (`db` is not used: the file is killed under a server)."""
    kills = SIZES[size]
    acknowledged, lost, damaged, seconds = measure(kills, workers)
    return [Result(
        f"kill9 {workers} workers", f"{kills} kill(s) -9 under 8 clients' creates",
        acknowledged / seconds, "acknowledged/s",
        floor=f"{acknowledged:,} acknowledged, {lost} lost, {damaged} damaged file(s)")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="medium")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    kills = SIZES[args.size]
    acknowledged, lost, damaged, _ = measure(kills, args.workers)
    print(f"kill -9 x {kills}, {args.workers} worker(s), {CLIENTS} clients: "
          f"{acknowledged:,} creates acknowledged, {lost} lost, {damaged} damaged file(s)")
    return 1 if lost or damaged else 0


if __name__ == "__main__":
    raise SystemExit(main())
