"""The built-in SMART Backend Services token endpoint (`POST /auth/token`) and the
server's public keys (`GET /auth/jwks`).

A registered client (`diatabase clients add`) asks for a token with `client_credentials`
and authenticates with a JWT it signs with its own private key (RFC 7523
`private_key_jwt`): `iss` = `sub` = its client id, `aud` = this endpoint's URL, `exp` at
most five minutes ahead, a `jti` never used before (kept in the auth store until the
assertion expires, so a replay is refused by every worker, across restarts). The answer
is a short-lived access token signed with the server's key, for the scopes asked that the
operator allowed the client. Errors are OAuth 2.0 JSON (RFC 6749 section 5.2).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey
from starlette.concurrency import run_in_threadpool

from fhir_server.auth.jwks import JwksSource, Key, parse_jwks
from fhir_server.auth.scopes import narrowed, parse_scopes
from fhir_server.auth.store import AuthStore, Client
from fhir_server.auth.tokens import ALGORITHMS, LEEWAY, TokenError, TokenValidator, TrustedIssuer

TOKEN_PATH = "/auth/token"
JWKS_PATH = "/auth/jwks"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME = 300  # SMART Backend Services: exp no more than 5 minutes ahead


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


class ServerKey:
    """The key this server signs its access tokens with: the operator's (a private JWK or
    PEM file, DIATABASE_AUTH_SIGNING_KEY), else one generated on first start and kept in
    the owner-only auth store."""

    def __init__(self, store: AuthStore, path: str = "") -> None:
        if path:
            self.key = _load_private_key(Path(path))
        else:
            saved = store.signing_key()
            if saved is None:
                generated = RSAKey.generate_key(2048, private=True, auto_kid=True)
                saved = generated.as_dict(private=True)
                store.save_signing_key(saved)
            self.key = RSAKey.import_key(saved)  # type: ignore[assignment]
        self.alg = "RS256" if isinstance(self.key, RSAKey) else _ec_alg(self.key)

    @property
    def kid(self) -> str | None:
        return self.key.kid

    def public_jwks(self) -> dict[str, Any]:
        public = self.key.as_dict(private=False)
        return {"keys": [{**public, "use": "sig", "alg": self.alg}]}

    def lookup(self, kid: str | None) -> Key | None:
        return self.key if kid in (None, self.key.kid) else None

    def sign(self, claims: dict[str, Any]) -> str:
        header = {"alg": self.alg, "typ": "JWT", "kid": self.key.kid}
        return jwt.encode(header, claims, self.key, algorithms=[self.alg])


class TokenService:
    def __init__(self, store: AuthStore, key: ServerKey, lifetime: int) -> None:
        self.store = store
        self.key = key
        self.lifetime = lifetime
        self._client_keys: dict[str, JwksSource] = {}

    def issue(self, form: dict[str, str], base_url: str) -> dict[str, Any]:
        if form.get("grant_type") != "client_credentials":
            raise OAuthError("unsupported_grant_type", "Only client_credentials is supported")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise OAuthError("invalid_client", f"client_assertion_type must be {ASSERTION_TYPE}",
                             401)
        assertion = form.get("client_assertion") or ""
        client = self._authenticate(assertion, f"{base_url}{TOKEN_PATH}")
        requested = parse_scopes(form.get("scope", ""))
        if not requested.resource:
            raise OAuthError("invalid_scope", "Ask for at least one SMART scope "
                             "(e.g. system/Observation.rs)")
        granted = narrowed(requested, client.scopes)
        if not granted.resource:
            raise OAuthError("invalid_scope", "None of the scopes asked for is allowed to "
                             "this client")
        now = int(time.time())
        claims = {
            "iss": base_url,
            "aud": base_url,
            "sub": client.id,
            "client_id": client.id,
            "scope": granted.text,
            "iat": now,
            "exp": now + self.lifetime,
            "jti": uuid.uuid4().hex,
        }
        return {
            "access_token": self.key.sign(claims),
            "token_type": "bearer",
            "expires_in": self.lifetime,
            "scope": granted.text,
        }

    def _authenticate(self, assertion: str, endpoint: str) -> Client:
        try:
            claims = jws.extract_compact(assertion.encode("ascii")).payload
            client_id = json.loads(claims).get("iss")
        except (JoseError, ValueError, UnicodeError, AttributeError):
            raise OAuthError("invalid_client", "client_assertion is not a signed JWT",
                             401) from None
        client = self.store.client(client_id) if isinstance(client_id, str) else None
        if client is None or client.revoked is not None:
            raise OAuthError("invalid_client", "Unknown or revoked client", 401)
        validator = TokenValidator([TrustedIssuer(client.id, self._keys(client))])
        try:
            verified = validator.validate(assertion, endpoint)
        except TokenError as exc:
            raise OAuthError("invalid_client", f"client_assertion refused: {exc}", 401) from None
        if verified.get("sub") != client.id:
            raise OAuthError("invalid_client", "client_assertion: sub must be the client id",
                             401)
        jti, exp = verified.get("jti"), verified.get("exp")
        if not isinstance(jti, str) or not jti:
            raise OAuthError("invalid_client", "client_assertion needs a jti", 401)
        if exp > time.time() + MAX_ASSERTION_LIFETIME + LEEWAY:
            raise OAuthError("invalid_client", "client_assertion: exp is more than five "
                             "minutes ahead", 401)
        if not self.store.use_assertion(client.id, jti, float(exp)):
            raise OAuthError("invalid_client", "client_assertion was already used (jti)", 401)
        return client

    def _keys(self, client: Client):
        if client.jwks_url:
            source = self._client_keys.get(client.id)
            if source is None:
                source = self._client_keys[client.id] = JwksSource(client.jwks_url)
            return source.key
        keys = parse_jwks(json.dumps(client.jwks))

        def lookup(kid: str | None) -> Key | None:
            if kid is not None:
                return keys.get(kid)
            return next(iter(keys.values())) if len(keys) == 1 else None

        return lookup


def build_token_router(tokens: TokenService) -> APIRouter:
    router = APIRouter()

    @router.post(TOKEN_PATH)
    async def token(request: Request) -> Response:
        base = _base(request)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if content_type != "application/x-www-form-urlencoded":
                raise OAuthError("invalid_request",
                                 "The token request must be application/x-www-form-urlencoded")
            form = {k: str(v) for k, v in (await request.form()).items()}
            answer = await run_in_threadpool(tokens.issue, form, base)
        except OAuthError as exc:
            body = {"error": exc.error, "error_description": exc.description}
            return JSONResponse(body, exc.status, {"Cache-Control": "no-store",
                                                   "Pragma": "no-cache"})
        return JSONResponse(answer, 200, {"Cache-Control": "no-store", "Pragma": "no-cache"})

    @router.get(JWKS_PATH)
    async def jwks() -> Response:
        return JSONResponse(tokens.key.public_jwks())

    return router


def _base(request: Request) -> str:
    configured = request.app.state.settings.base_url
    return configured.rstrip("/") if configured else str(request.base_url).rstrip("/")


def _load_private_key(path: Path) -> RSAKey | ECKey:
    data = path.read_bytes()
    try:
        if data.lstrip().startswith(b"{"):
            parsed = json.loads(data)
            key = KeySet.import_key_set(parsed).keys[0] if "keys" in parsed else None
            if key is None:
                kty = parsed.get("kty")
                key = (RSAKey if kty == "RSA" else ECKey).import_key(parsed)
        else:
            try:
                key = RSAKey.import_key(data)
            except (JoseError, ValueError):
                key = ECKey.import_key(data)
    except (JoseError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: not a private RSA or EC key ({exc})") from None
    if not key.is_private:
        raise ValueError(f"{path}: the signing key must be a private key")
    if not key.kid:
        key = type(key).import_key(key.as_dict(private=True), {"kid": key.thumbprint()})
    alg = "RS256" if isinstance(key, RSAKey) else _ec_alg(key)
    assert alg in ALGORITHMS
    return key  # type: ignore[return-value]


def _ec_alg(key: Any) -> str:
    return {"P-256": "ES256", "P-384": "ES384"}.get(key.as_dict()["crv"], "ES256")
