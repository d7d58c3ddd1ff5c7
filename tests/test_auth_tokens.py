"""Bearer tokens on a closed server (no --insecure-dev): every refusal of the negative
matrix, asserted row by row, with real keys (cryptography) and a real server on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.auth_tokens import TestIssuer, bearer, ec_key, rsa_key, write_jwks
from tests.conftest import RunningServer, database_url

SCOPE = "user/Patient.cruds user/Observation.rs"


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> TestIssuer:
    return TestIssuer.create(tmp_path_factory.mktemp("issuer"))


@pytest.fixture(scope="module")
def closed(tmp_path_factory: pytest.TempPathFactory, issuer: TestIssuer) -> Iterator[RunningServer]:
    settings = issuer.settings(db_url=database_url(tmp_path_factory.mktemp("db")))
    with RunningServer(settings) as running:
        yield running


def _refusal(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert response.headers["x-content-type-options"] == "nosniff"
    return response.headers.get("www-authenticate", "")


def test_valid_token_reads_and_writes(closed: RunningServer, issuer: TestIssuer) -> None:
    token = issuer.token(closed.url, SCOPE)
    with httpx.Client(base_url=closed.url, headers=bearer(token), timeout=30) as http:
        created = http.post("/Patient", json={"resourceType": "Patient", "gender": "female"})
        assert created.status_code == 201, created.text
        read = http.get(f"/Patient/{created.json()['id']}")
        assert read.status_code == 200
        assert read.headers["cache-control"] == "no-store"
        assert http.get("/Observation").status_code == 200


def test_public_routes_need_no_token(closed: RunningServer) -> None:
    response = httpx.get(f"{closed.url}/metadata")
    assert response.status_code == 200
    assert "no-store" not in response.headers.get("cache-control", "")


@pytest.mark.parametrize(
    "case",
    [
        "no token",
        "not a bearer",
        "garbage",
        "expired",
        "not yet valid",
        "wrong issuer",
        "wrong audience",
        "no audience",
        "bad signature",
        "unknown kid",
        "alg none",
        "hs256 with the public key",
    ],
)
def test_negative_matrix_answers_401(
    case: str, closed: RunningServer, issuer: TestIssuer, tmp_path: Path
) -> None:
    now = int(time.time())
    url = closed.url
    headers: dict[str, str] = {}
    if case == "no token":
        pass
    elif case == "not a bearer":
        headers = {"Authorization": "Basic dXNlcjpwYXNz"}
    elif case == "garbage":
        headers = bearer("not.a.jwt")
    elif case == "expired":
        headers = bearer(issuer.token(url, SCOPE, exp=now - 3600, iat=now - 7200))
    elif case == "not yet valid":
        headers = bearer(issuer.token(url, SCOPE, nbf=now + 3600))
    elif case == "wrong issuer":
        headers = bearer(issuer.token(url, SCOPE, iss="https://elsewhere.test"))
    elif case == "wrong audience":
        headers = bearer(issuer.token("https://other-server.test/fhir", SCOPE))
    elif case == "no audience":
        headers = bearer(issuer.token(url, SCOPE, aud=None))
    elif case == "bad signature":
        headers = bearer(issuer.forge_other_key(url, SCOPE))
    elif case == "unknown kid":
        headers = bearer(issuer.token(url, SCOPE, kid="no-such-kid"))
    elif case == "alg none":
        headers = bearer(issuer.forge_unsigned(url, SCOPE))
    elif case == "hs256 with the public key":
        headers = bearer(issuer.forge_hmac_with_public_key(url, SCOPE))
    response = httpx.get(f"{url}/Patient", headers=headers)
    challenge = _refusal(response, 401)
    assert challenge.startswith("Bearer")
    if case not in ("no token",):
        assert 'error="invalid_token"' in challenge, challenge
    else:
        assert "error=" not in challenge


def test_valid_token_without_the_scope_answers_403(
    closed: RunningServer, issuer: TestIssuer
) -> None:
    token = issuer.token(closed.url, "user/Observation.rs")
    with httpx.Client(base_url=closed.url, headers=bearer(token), timeout=30) as http:
        assert http.get("/Observation").status_code == 200
        challenge = _refusal(http.get("/Patient"), 403)
        assert 'error="insufficient_scope"' in challenge
        _refusal(http.post("/Observation", json={"resourceType": "Observation"}), 403)
        _refusal(http.delete("/Observation/x"), 403)


def test_jwks_file_rotation_and_ec_keys(tmp_path: Path) -> None:
    """A key added to the JWKS file is taken without a restart (rotation); ES256 and ES384
    tokens verify."""
    first = rsa_key()
    issuer = TestIssuer("https://rotating.test", first, write_jwks(tmp_path / "k.json", first))
    with RunningServer(issuer.settings(db_url=f"sqlite:///{tmp_path / 'db'}")) as server:
        url = server.url
        assert httpx.get(f"{url}/Patient", headers=bearer(issuer.token(url, SCOPE))).status_code \
            == 200
        es256, es384 = ec_key("P-256"), ec_key("P-384")
        write_jwks(tmp_path / "k.json", first, es256, es384)
        for key in (es256, es384):
            rotated = TestIssuer(issuer.issuer, key, issuer.jwks_path)
            response = httpx.get(f"{url}/Patient", headers=bearer(rotated.token(url, SCOPE)))
            assert response.status_code == 200, response.text
