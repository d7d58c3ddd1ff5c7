"""SMART Backend Services end to end on a closed server: a client registered with the CLI
signs an assertion, gets a token at /auth/token and uses it; a replayed assertion, a
revoked client and scopes it was not allowed are refused; discovery and the
CapabilityStatement tell the truth; fhirpy and fhirclient work with the bearer token."""

from __future__ import annotations

import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_server.auth.cli import client_assertion
from fhir_server.cli import main
from fhir_server.settings import Settings
from tests.auth_tokens import bearer
from tests.conftest import RunningServer

SCOPE = "system/Observation.crus system/Patient.cruds"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _last_line(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("backend")


@pytest.fixture(scope="module")
def server(folder: Path) -> Iterator[RunningServer]:
    with RunningServer(Settings(db_url=f"sqlite:///{folder / 'fhir.db'}")) as running:
        yield running


def _register(folder: Path, capsys: pytest.CaptureFixture[str], name: str,
              scope: str = SCOPE) -> tuple[str, Path]:
    assert main(["clients", "keygen", name, "--out", str(folder)]) == 0
    assert main(["clients", "add", name, "--jwks", str(folder / f"{name}.jwks.json"),
                 "--scope", scope, "--db", f"sqlite:///{folder / 'fhir.db'}"]) == 0
    client_id = _last_line(capsys)
    assert len(client_id) == 32 and " " not in client_id
    return client_id, folder / f"{name}.private.jwk"


def _ask(url: str, assertion: str, scope: str = SCOPE) -> httpx.Response:
    return httpx.post(f"{url}/auth/token", data={
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    })


def test_register_get_a_token_and_use_it(
    server: RunningServer, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client_id, key = _register(folder, capsys, "etl")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / "fhir.db.auth").stat().st_mode) == 0o600
    assert main(["clients", "token", client_id, "--key", str(key), "--server", server.url,
                 "--db", f"sqlite:///{folder / 'fhir.db'}"]) == 0
    token = _last_line(capsys)
    with httpx.Client(base_url=server.url, headers=bearer(token), timeout=60) as http:
        patient = http.post("/Patient", json={"resourceType": "Patient"})
        assert patient.status_code == 201, patient.text
        assert http.get(f"/Patient/{patient.json()['id']}").status_code == 200
        assert http.get("/Observation").status_code == 200
        assert http.post("/Condition", json={"resourceType": "Condition"}).status_code == 403
        assert http.delete(f"/Patient/{patient.json()['id']}").status_code == 200
    assert main(["clients", "list", "--db", f"sqlite:///{folder / 'fhir.db'}"]) == 0
    assert client_id in capsys.readouterr().out


def test_replayed_assertion_and_revoked_client_are_refused(
    server: RunningServer, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client_id, key = _register(folder, capsys, "device-vendor")
    token_url = f"{server.url}/auth/token"
    assertion = client_assertion(client_id, key, token_url)
    first = _ask(server.url, assertion)
    assert first.status_code == 200, first.text
    assert first.headers["cache-control"] == "no-store"
    body = first.json()
    assert body["token_type"] == "bearer" and body["expires_in"] <= 300
    replay = _ask(server.url, assertion)
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_client"
    # Only what the operator allowed: a scope beyond it is narrowed, nothing else refused.
    narrowed = _ask(server.url, client_assertion(client_id, key, token_url),
                    "system/Observation.rs system/Condition.rs")
    assert narrowed.status_code == 200 and narrowed.json()["scope"] == "system/Observation.rs"
    outside = _ask(server.url, client_assertion(client_id, key, token_url), "system/Condition.rs")
    assert outside.status_code == 400 and outside.json()["error"] == "invalid_scope"
    # An assertion meant for another server, or signed by another key, is refused.
    wrong_aud = client_assertion(client_id, key, "https://elsewhere.test/auth/token")
    assert _ask(server.url, wrong_aud).status_code == 401
    _, other_key = _register(folder, capsys, "other")
    assert _ask(server.url, client_assertion(client_id, other_key, token_url)).status_code == 401
    # Revoked: new assertions are refused.
    assert main(["clients", "revoke", client_id, "--db", f"sqlite:///{folder / 'fhir.db'}"]) == 0
    revoked = _ask(server.url, client_assertion(client_id, key, token_url))
    assert revoked.status_code == 401 and revoked.json()["error"] == "invalid_client"


def test_discovery_and_capability_statement_tell_the_truth(server: RunningServer) -> None:
    smart = httpx.get(f"{server.url}/.well-known/smart-configuration")
    assert smart.status_code == 200
    config = smart.json()
    assert config["token_endpoint"] == f"{server.url}/auth/token"
    assert "private_key_jwt" in config["token_endpoint_auth_methods_supported"]
    keys = httpx.get(config["jwks_uri"]).json()["keys"]
    assert keys and all("d" not in k for k in keys)
    security = httpx.get(f"{server.url}/metadata").json()["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris == {"token": f"{server.url}/auth/token"}
    assert security["cors"] is False


def _token(server: RunningServer, folder: Path, capsys: pytest.CaptureFixture[str]) -> str:
    client_id, key = _register(folder, capsys, f"lib-{uuid.uuid4().hex[:6]}")
    answer = _ask(server.url, client_assertion(client_id, key, f"{server.url}/auth/token"))
    assert answer.status_code == 200, answer.text
    return answer.json()["access_token"]


def test_fhirpy_with_a_bearer_token(
    server: RunningServer, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fhirpy import SyncFHIRClient

    token = _token(server, folder, capsys)
    client = SyncFHIRClient(server.url, authorization=f"Bearer {token}")
    family = f"Fhirpy{uuid.uuid4().hex[:6]}"
    patient = client.resource("Patient", name=[{"family": family}])
    patient.save()
    found = client.resources("Patient").search(family=family).fetch()
    assert [p.id for p in found] == [patient.id]
    refused = SyncFHIRClient(server.url)  # no token
    with pytest.raises(Exception) as raised:
        refused.resources("Patient").search(family=family).fetch()
    assert "401" in str(raised.value) or "login" in str(raised.value)


def test_fhirclient_with_a_bearer_token(
    server: RunningServer, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fhirclient.models.observation import Observation
    from fhirclient.models.patient import Patient
    from fhirclient.server import FHIRServer

    token = _token(server, folder, capsys)
    fhir = FHIRServer(None, base_uri=server.url + "/")
    fhir.session.headers["Authorization"] = f"Bearer {token}"
    family = f"Smart{uuid.uuid4().hex[:6]}"
    created: dict[str, Any] = Patient({"name": [{"family": family}]}).create(fhir)
    patient = Patient.read(created["id"], fhir)
    assert patient.name[0].family == family
    Observation({"status": "final", "code": {"text": "glucose"},
                 "subject": {"reference": f"Patient/{patient.id}"}}).create(fhir)
    found = Observation.where({"subject": f"Patient/{patient.id}"}).perform_resources(fhir)
    assert [o.subject.reference for o in found] == [f"Patient/{patient.id}"]
