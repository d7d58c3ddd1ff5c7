"""Real access tokens for tests: keys made with `cryptography`, a JWKS, signed JWTs.

    issuer = TestIssuer.create(tmp_path)          # an RSA key, its JWKS written to a file
    settings = issuer.settings(db_url=...)        # a closed server trusting that issuer
    with RunningServer(settings) as server:
        token = issuer.token(server.url, "user/Observation.rs")
        httpx.get(f"{server.url}/Observation", headers=bearer(token))

`token(...)` takes the claims a test wants to vary (patient context, times, issuer,
audience, kid, algorithm); `forge_*` make the tokens a server must refuse.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from fhir_server.settings import Settings

TEST_ISSUER = "https://issuer.test/realms/diatabase"


def rsa_key(kid: str | None = None) -> RSAKey:
    """An RSA 2048 key pair made by cryptography, as a joserfc private JWK."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return RSAKey.import_key(pem, {"kid": kid or uuid.uuid4().hex[:12]})


def ec_key(curve: str = "P-256", kid: str | None = None) -> ECKey:
    """An EC key pair (P-256 for ES256, P-384 for ES384) made by cryptography."""
    private = ec.generate_private_key(ec.SECP256R1() if curve == "P-256" else ec.SECP384R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return ECKey.import_key(pem, {"kid": kid or uuid.uuid4().hex[:12]})


def jwks(*keys: RSAKey | ECKey) -> dict[str, Any]:
    """The public JWKS of `keys`."""
    return {"keys": [key.as_dict(private=False) for key in keys]}


def write_jwks(path: Path, *keys: RSAKey | ECKey) -> Path:
    path.write_text(json.dumps(jwks(*keys)), encoding="utf-8")
    return path


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _alg(key: RSAKey | ECKey) -> str:
    if isinstance(key, RSAKey):
        return "RS256"
    return "ES256" if key.as_dict()["crv"] == "P-256" else "ES384"


def sign(claims: dict[str, Any], key: RSAKey | ECKey, alg: str | None = None,
         kid: str | None = None) -> str:
    header = {"alg": alg or _alg(key), "typ": "JWT", "kid": kid if kid is not None else key.kid}
    return jwt.encode(header, claims, key, algorithms=[header["alg"]])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TestIssuer:
    """An identity provider of the tests: keys, their JWKS file, tokens signed with them."""

    __test__ = False  # not a pytest test class

    issuer: str
    key: RSAKey | ECKey
    jwks_path: Path
    other_keys: list[RSAKey | ECKey] = field(default_factory=list)

    @classmethod
    def create(cls, folder: Path, issuer: str = TEST_ISSUER,
               key: RSAKey | ECKey | None = None) -> TestIssuer:
        key = key or rsa_key()
        path = write_jwks(folder / f"jwks-{uuid.uuid4().hex[:8]}.json", key)
        return cls(issuer, key, path)

    def settings(self, **values: Any) -> Settings:
        """Settings of a closed server (no --insecure-dev) trusting this issuer."""
        return Settings(auth_issuer=self.issuer, auth_jwks=str(self.jwks_path), **values)

    def claims(self, audience: str, scope: str, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": audience,
            "sub": "test-user",
            "client_id": "test-client",
            "scope": scope,
            "iat": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
        }
        claims.update(extra)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, audience: str, scope: str, patient: str | None = None,
              alg: str | None = None, kid: str | None = None, **extra: Any) -> str:
        """A valid token for `audience` (the server's base URL) with `scope`; `extra`
        claims override the defaults (exp=..., nbf=..., iss=..., aud=...)."""
        claims = self.claims(audience, scope, patient=patient, **extra)
        return sign(claims, self.key, alg, kid)

    # -- tokens a server must refuse -------------------------------------------------------

    def forge_unsigned(self, audience: str, scope: str) -> str:
        """`alg: none` with an empty signature."""
        header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        payload = _b64(json.dumps(self.claims(audience, scope)).encode())
        return f"{header}.{payload}."

    def forge_hmac_with_public_key(self, audience: str, scope: str) -> str:
        """HS256 whose secret is the issuer's PUBLIC key (the classic key-confusion)."""
        # Signed by hand: the JOSE library itself refuses a public key as an HMAC secret.
        public_pem = self.key.as_pem(private=False)
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": self.key.kid}).encode())
        payload = _b64(json.dumps(self.claims(audience, scope)).encode())
        mac = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64(mac)}"

    def forge_other_key(self, audience: str, scope: str) -> str:
        """Signed by another key claiming this issuer's kid (a bad signature)."""
        other = rsa_key(self.key.kid) if isinstance(self.key, RSAKey) else ec_key(kid=self.key.kid)
        return sign(self.claims(audience, scope), other)
