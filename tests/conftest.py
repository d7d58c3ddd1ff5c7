"""Shared fixtures: a real Diatabase server (uvicorn on 127.0.0.1, a free port) per backend.

`server` starts one server per test module on a fresh database, so that tests in a module
share it (they use their own identifiers) and modules never see each other's data.

The backend is SQLite unless the environment says otherwise:
- `MONGODB_URI=mongodb://host:27017`: the MongoDB backend on that real server (a fresh
  database per module, dropped at exit);
- `DIATABASE_TEST_BACKEND=mongomock`: the MongoDB backend on mongomock, in memory (this is
  how tests/test_mongo_http.py runs the HTTP suites on the MongoDB backend in CI).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from fhir_server.app import create_app
from fhir_server.limits import Limits
from fhir_server.settings import Settings
from tests.r4_bodies import BodyCheck

DATA = Path(__file__).parent / "data"
# fhirpy's upstream suite runs in a pytest of its own against a server of ours
# (tests/test_fhirpy_upstream.py), not in this session
collect_ignore = ["fhirpy_upstream"]


R4_BODIES = pytest.StashKey[BodyCheck]()
R4_TOTALS = pytest.StashKey[dict]()


def pytest_configure(config: pytest.Config) -> None:
    """Every response any test receives through httpx goes through `BodyCheck` (see
    tests/r4_bodies.py): FHIR JSON that an independent R4 parser refuses fails that test."""
    checker = BodyCheck()
    config.stash[R4_BODIES] = checker
    config.stash[R4_TOTALS] = {}
    original_send = httpx.Client.send

    def send(self: httpx.Client, request: httpx.Request, **options: object) -> httpx.Response:
        response = original_send(self, request, **options)
        if not options.get("stream"):
            checker.check(response)
        return response

    patcher = pytest.MonkeyPatch()
    patcher.setattr(httpx.Client, "send", send)
    config.add_cleanup(patcher.undo)
    config.add_cleanup(checker.close)


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    summary = config.stash[R4_BODIES].summary()
    if hasattr(config, "workeroutput"):  # an xdist worker: the controller adds them up
        config.workeroutput["r4_bodies"] = summary
        return
    _add_totals(config, summary)
    if config.stash[R4_TOTALS].get("failures") and session.exitstatus == pytest.ExitCode.OK:
        # a body refused where no test could fail for it (a test's helper thread)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    summary = getattr(node, "workeroutput", {}).get("r4_bodies")
    if summary:
        _add_totals(node.config, summary)  # type: ignore[attr-defined]


def _add_totals(config: pytest.Config, summary: dict) -> None:
    totals = config.stash[R4_TOTALS]
    for key, value in summary.items():
        if isinstance(value, bool):
            totals[key] = totals.get(key, False) or value
        else:
            totals[key] = totals.get(key, 0 if isinstance(value, int) else []) + value


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    totals = terminalreporter.config.stash[R4_TOTALS]
    if not totals.get("fhir_bodies"):
        return
    fhirjs = (
        f"FHIR.js valid {totals['fhirjs_valid']}"
        if totals["fhirjs_available"]
        else "FHIR.js not run (no node or tests/node/node_modules)"
    )
    terminalreporter.write_line(
        f"R4 bodies: {totals['fhir_bodies']} FHIR JSON responses, fhirclient parsed "
        f"{totals['fhirclient_parsed']} ({totals['too_deep_for_fhirclient']} nested too deep "
        f"for it), {fhirjs}; {totals['not_fhir']} other responses"
    )
    for failure in totals["failures"][:20]:
        terminalreporter.write_line(f"  not R4: {failure}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningServer:
    """uvicorn serving `create_app(settings)` in a background thread.

    The listening socket is bound here and handed to uvicorn, so no other process can
    take the port between choosing it and listening on it."""

    def __init__(self, settings: Settings) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.app = create_app(settings)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RunningServer:
        self.thread.start()
        # generous: on a loaded 2-core machine an app's start-up can take many seconds
        deadline = time.monotonic() + 120
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.socket.close()


def database_url(tmp_path: Path) -> str:
    from tests import storage_backends

    if storage_backends.MONGODB_URI:
        txmode = None if storage_backends.real_mongodb_supports_transactions() else "single-writer"
        return storage_backends.real_mongodb_url(txmode)
    if os.environ.get("DIATABASE_TEST_BACKEND", "sqlite") == "mongomock":
        return storage_backends.mongomock_url()
    return f"sqlite:///{tmp_path / 'diatabase.db'}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    # --insecure-dev: the suites of the FHIR API run without access control; the access
    # control itself is tested with real tokens (tests/auth_tokens.py, test_auth_*.py).
    settings = Settings(
        db_url=database_url(tmp_path_factory.mktemp("db")),
        max_body_bytes=2_000_000,
        insecure_dev=True,
        # Time budgets are tested with servers of their own (test_limits_budget.py); here a
        # loaded 2-core machine must not turn a slow search into a 400 or drop a total.
        limits=Limits(search_seconds=300, total_count_seconds=60),
    )
    with RunningServer(settings) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[httpx.Client]:
    # generous: a search at the limits can take tens of seconds on a loaded 2-core machine
    with httpx.Client(base_url=server.url, timeout=120) as http:
        yield http
