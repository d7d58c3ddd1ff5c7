"""`diatabase serve` as a subprocess, for tests that need the real process: its CPU time,
its memory, signals, and what the operating system sees of it (fsyncs, kill -9)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import free_port

ROOT = Path(__file__).parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class ServedProcess:
    """The server on `db_path`, with `env` (DIATABASE_* limits) over the test's environment;
    `prefix` runs it under another command (strace)."""

    def __init__(
        self,
        db_path: Path,
        env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = (),
        log_path: Path | None = None,
    ) -> None:
        self.db_path = db_path
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.prefix = prefix
        self.log_path = log_path or db_path.with_suffix(".log")
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The server's own pid (under strace, the traced child's)."""
        assert self.proc is not None
        if not self.prefix:
            return self.proc.pid
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return int(children.split()[0])

    def start(self) -> ServedProcess:
        for _attempt in range(5):
            self.port = free_port()
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(
                    [
                        *self.prefix,
                        sys.executable,
                        "-m",
                        "fhir_server.cli",
                        "serve",
                        "--port",
                        str(self.port),
                        "--db",
                        f"sqlite:///{self.db_path}",
                        "--log-level",
                        "warning",
                        "--insecure-dev",  # these tests measure the server, not its access
                    ],
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_ready():
                return self
        raise AssertionError("no free port for the server")

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{self.url}/metadata", timeout=60)
                return True
            except httpx.TransportError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.proc.kill()
                    self.proc.wait()
                    output = self.log_path.read_text(errors="replace")
                    if "address already in use" in output:
                        return False
                    raise AssertionError(output) from None
                time.sleep(0.2)

    def cpu_seconds(self) -> float:
        """User and system CPU time of the server process so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def rss_bytes(self) -> int:
        return int(Path(f"/proc/{self.pid}/statm").read_text().split()[1]) * PAGE

    def peak_rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        os.kill(self.pid, signum)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.prefix:
            # Killing the tracer (strace) alone detaches the server it traces, which then
            # ran on after the test: the server goes first.
            with contextlib.suppress(OSError, ValueError, IndexError):
                os.kill(self.pid, signal.SIGKILL)
        self.proc.kill()
        self.proc.wait(timeout=60)

    def __enter__(self) -> ServedProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stored_database(path: Path, resources: list[dict]) -> Path:
    """A database at `path` holding `resources` (stored with their ids), for a server."""
    from fhir_server.ingest.loader import Loader
    from fhir_server.service.fhir import FhirService
    from fhir_server.settings import Settings
    from fhir_server.storage import open_storage

    url = f"sqlite:///{path}"
    service = FhirService(open_storage(url), Settings(db_url=url))
    Loader(service).load_resources(resources, where="test")
    service.storage.close()
    # The whole database in the one file, so that a copy of it holds every row: part of it
    # is still in the write-ahead log (this thread's reader connection stays open, so
    # closing the storage did not checkpoint), and a copy of the file alone missed it.
    with contextlib.closing(sqlite3.connect(path)) as db:
        busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0, "the database could not be checkpointed"
    return path


def raw_get(port: int, path_and_query: str) -> socket.socket:
    """A GET sent on a raw socket, its answer never read (close the socket to abandon it)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(
        f"GET {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/fhir+json"
        "\r\n\r\n".encode()
    )
    return sock


def wait_until(
    condition: Callable[[], bool], seconds: float = 120, what: str = "", every: float = 0.05
) -> None:
    """Poll `condition` every `every` seconds until true; fail after `seconds` (generous:
    a busy CI machine)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(every)


def wait_until_idle(server: ServedProcess, window: float = 0.5, seconds: float = 120) -> float:
    """Wait until the server used under 5 % of a core over `window`; its CPU time then."""
    deadline = time.monotonic() + seconds
    before = server.cpu_seconds()
    while True:
        time.sleep(window)  # a measuring window, not a wait for something to happen
        now = server.cpu_seconds()
        if now - before < 0.05 * window:
            return now
        if time.monotonic() > deadline:
            raise AssertionError("the server never went idle")
        before = now
