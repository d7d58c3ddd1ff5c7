"""The `diatabase` command: load (files, folders, NDJSON, re-loads) and serve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fhir_server.cli import main
from fhir_server.storage import open_storage
from tests.conftest import free_port

ROOT = Path(__file__).parent.parent


def run(*argv: str) -> int:
    return main(list(argv))


def test_load_example_twice_creates_nothing_new(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    assert run("load", "--db", db, str(ROOT / "examples" / "patient-story.json")) == 0
    assert "9 created, 0 updated, 0 rejected" in capsys.readouterr().out
    # (examples/requests/ holds request bodies for the README's walk-through, not data)
    assert run("load", "--db", db, str(ROOT / "examples" / "patient-story.json")) == 0
    assert "0 created, 9 updated, 0 rejected" in capsys.readouterr().out
    store = open_storage(db)
    assert store.count("Observation") == 5
    assert store.count("Patient") == 1
    store.close()


def test_load_ndjson_collection_and_bad_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    lines = [
        {"resourceType": "Patient", "id": "n1", "gender": "male"},
        {"resourceType": "Patient", "gender": "female"},
        {"resourceType": "Patient", "gender": "not-a-gender"},
    ]
    ndjson = tmp_path / "patients.ndjson"
    ndjson.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    collection = tmp_path / "collection.json"
    collection.write_text(
        json.dumps(
            {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [
                    {"resource": {"resourceType": "Organization", "id": "org1", "name": "CHU"}}
                ],
            }
        )
    )
    assert run("load", "--db", db, str(ndjson), str(collection)) == 1  # one line rejected
    captured = capsys.readouterr()
    assert "3 created, 0 updated, 1 rejected" in captured.out
    assert "patients.ndjson:3" in captured.err
    store = open_storage(db)
    assert store.read("Patient", "n1") is not None
    assert store.read("Organization", "org1") is not None
    assert store.count("Patient") == 2
    store.close()


def test_load_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no such file"):
        run("load", "--db", f"sqlite:///{tmp_path / 'x.db'}", str(tmp_path / "missing.json"))


def serve(tmp_path: Path, *options: str) -> tuple[subprocess.Popen, int]:
    """`diatabase serve` in a subprocess, once it answers /metadata (on another free port
    if another process took the one chosen before the server could listen on it)."""
    for _attempt in range(5):
        port = free_port()
        proc = _start_serve(tmp_path, port, options)
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/metadata", timeout=60)
                return proc, port
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    output = proc.stdout.read().decode() if proc.stdout else ""
                    if "address already in use" in output:
                        break
                    raise AssertionError(output) from None
                time.sleep(0.2)
    raise AssertionError("no free port for the server")


def _start_serve(tmp_path: Path, port: int, options: tuple[str, ...]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fhir_server.cli",
            "serve",
            "--port",
            str(port),
            "--db",
            f"sqlite:///{tmp_path / 'served.db'}",
            *options,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    output, _ = proc.communicate(timeout=120)
    return output.decode()


def test_serve_starts_and_answers_metadata(tmp_path: Path) -> None:
    proc, port = serve(tmp_path, "--log-level", "warning")
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/metadata", timeout=60)
        assert response.status_code == 200
        assert response.json()["fhirVersion"] == "4.0.1"
        assert (tmp_path / "served.db").exists()
    finally:
        stop(proc)


def test_the_access_log_leaves_queries_out(tmp_path: Path) -> None:
    """What a search looks for (an INS, a name) must not reach the log files."""
    proc, port = serve(tmp_path, "--insecure-dev")  # default log level: access lines written
    try:
        response = httpx.get(
            f"http://127.0.0.1:{port}/Patient",
            params={"identifier": "urn:oid:1.2.250.1.213.1.4.10|1234567890123", "name": "Hélène"},
            timeout=60,
        )
        assert response.status_code == 200
    finally:
        output = stop(proc)
    assert '"GET /Patient?... HTTP/1.1" 200' in output
    assert "1234567890123" not in output and "name=" not in output
