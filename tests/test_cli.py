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
    assert run("load", "--db", db, str(ROOT / "examples")) == 0
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


def test_serve_starts_and_answers_metadata(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fhir_server.cli",
            "serve",
            "--port",
            str(port),
            "--db",
            f"sqlite:///{tmp_path / 'served.db'}",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/metadata", timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        assert response.status_code == 200
        assert response.json()["fhirVersion"] == "4.0.1"
        assert (tmp_path / "served.db").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
