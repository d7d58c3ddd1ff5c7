"""HTTP hygiene of a server holding health data: headers, content types, CORS, the Host
header, owner-only files, the combined de-identification mode closed like the rest, and
--insecure-dev refused away from loopback. Real servers on 127.0.0.1."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import pytest

from fhir_server.cli import main
from fhir_server.deid.context import default_export_dir
from fhir_server.settings import Settings
from tests.auth_tokens import TestIssuer, bearer
from tests.conftest import RunningServer
from tests.deid_data import write_recipients

DEID_KEY = "hygiene-recipient-key-0123456789"


def test_patient_data_is_not_cached_nor_sniffed(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        created = http.post("/Patient", json={"resourceType": "Patient"})
        read = http.get(f"/Patient/{created.json()['id']}")
        for response in (created, read, http.get("/Patient")):
            assert response.headers["cache-control"] == "no-store"
            assert response.headers["x-content-type-options"] == "nosniff"
        metadata = http.get("/metadata")
        assert metadata.headers["x-content-type-options"] == "nosniff"
        assert "no-store" not in metadata.headers.get("cache-control", "")


def test_writes_without_a_content_type_are_refused(server: RunningServer) -> None:
    """Fails on the old code, which accepted a body of no declared type: the simple request
    a page of another origin can make a browser send, a transaction with a DELETE in it."""
    bundle = (b'{"resourceType":"Bundle","type":"transaction","entry":[{"request":'
              b'{"method":"DELETE","url":"Patient/x"}}]}')
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for method, path in (("POST", "/"), ("POST", "/Patient"), ("PUT", "/Patient/x")):
            response = http.request(method, path, content=bundle)
            assert response.status_code == 415, (method, path, response.text)
            assert response.json()["resourceType"] == "OperationOutcome"
        forged = http.post("/", content=bundle, headers={"Content-Type": "text/plain"})
        assert forged.status_code == 415


def test_cors_is_closed_unless_configured(server: RunningServer, tmp_path: Path) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}
    closed = httpx.options(f"{server.url}/Patient", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    issuer = TestIssuer.create(tmp_path)
    settings = issuer.settings(db_url=f"sqlite:///{tmp_path / 'db'}",
                               cors_origins=("https://app.example",))
    with RunningServer(settings) as running:
        allowed = httpx.options(f"{running.url}/Patient", headers=preflight)
        assert allowed.status_code == 204
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert "Authorization" in allowed.headers["access-control-allow-headers"]
        other = httpx.options(f"{running.url}/Patient",
                              headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        token = issuer.token(running.url, "user/Patient.rs")
        answer = httpx.get(f"{running.url}/Patient",
                           headers={**bearer(token), "Origin": "https://app.example"})
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == "https://app.example"
        assert httpx.get(f"{running.url}/metadata").json()["rest"][0]["security"]["cors"]


def test_host_header_is_checked(server: RunningServer, tmp_path: Path) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 reaches the server with
    its own Host name, which the server refuses."""
    rebound = httpx.get(f"{server.url}/Patient", headers={"Host": "evil.example"})
    assert rebound.status_code == 421
    assert rebound.json()["resourceType"] == "OperationOutcome"
    local = httpx.get(f"{server.url}/Patient", headers={"Host": f"localhost:{server.port}"})
    assert local.status_code == 200
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'db'}", insecure_dev=True,
                        base_url="https://fhir.example.org/fhir")
    with RunningServer(settings) as running:
        assert httpx.get(f"{running.url}/metadata",
                         headers={"Host": "fhir.example.org"}).status_code == 200
        assert httpx.get(f"{running.url}/metadata",
                         headers={"Host": "other.example.org"}).status_code == 421


def test_database_files_are_owner_only(tmp_path: Path) -> None:
    """Fails on the old code: the database, -wal and -shm were 0644 (world-readable)."""
    db = tmp_path / "private.db"
    settings = Settings(db_url=f"sqlite:///{db}", insecure_dev=True)
    with RunningServer(settings) as running:
        assert httpx.post(f"{running.url}/Patient",
                          json={"resourceType": "Patient"}).status_code == 201
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}.lock")):
            assert path.exists(), path
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_export_folder_defaults_beside_the_database_not_in_tmp() -> None:
    """Fails on the old code, whose exports went to a shared temporary folder."""
    assert default_export_dir("sqlite:////srv/diatabase/data.db") == (
        "/srv/diatabase/data.db.deid-exports"
    )
    assert not default_export_dir("mongodb://db/diatabase").startswith("/tmp")


def test_combined_mode_closes_the_clinical_api(tmp_path: Path) -> None:
    """--deid-recipients without --deid-only: the facade keeps its own keys, the clinical
    API on the same port needs a token like anywhere else."""
    issuer = TestIssuer.create(tmp_path)
    recipients = write_recipients(tmp_path / "recipients.json", {"r1": DEID_KEY},
                                  {"r1": {"kAnonymity": {"k": 1}}})
    settings = issuer.settings(
        db_url=f"sqlite:///{tmp_path / 'db'}",
        deid_secret="combined-mode-secret-0123456789",
        deid_recipients=str(recipients),
        deid_export_dir=str(tmp_path / "exports"),
    )
    with RunningServer(settings) as running:
        assert httpx.get(f"{running.url}/Patient").status_code == 401
        assert httpx.get(f"{running.url}/Patient",
                         headers={"Authorization": f"Bearer {DEID_KEY}"}).status_code == 401
        assert httpx.get(f"{running.url}/deid/Patient",
                         headers={"Authorization": f"Bearer {DEID_KEY}"}).status_code == 200
        assert httpx.get(f"{running.url}/deid/Patient").status_code == 401
        token = issuer.token(running.url, "user/Patient.rs")
        assert httpx.get(f"{running.url}/Patient", headers=bearer(token)).status_code == 200


def test_insecure_dev_is_refused_away_from_loopback(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["serve", "--insecure-dev", "--host", "0.0.0.0",
              "--db", f"sqlite:///{tmp_path / 'db'}"])
    assert "loopback" in str(refused.value)
