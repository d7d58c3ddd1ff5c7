"""Validating bearer access tokens (JWTs) with joserfc.

A token is accepted when: it is a compact JWS whose `alg` is one of ALGORITHMS (never
`none`, never an HMAC: a public key used as an HMAC secret would let anyone sign); its
`iss` is a trusted issuer (configured, or this server's own token endpoint); its `kid`
names a key of that issuer's JWKS (the issuer's only key when it names none) of the
algorithm's family; the signature verifies; `aud` names this server's base URL; `exp` is
in the future and `nbf` (if any) in the past, give or take LEEWAY seconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import ExpiredTokenError, JoseError, MissingClaimError
from joserfc.jwk import ECKey, RSAKey

from fhir_server.auth.jwks import JwksSource, Key

ALGORITHMS = ("RS256", "RS384", "ES256", "ES384")
LEEWAY = 60  # seconds of clock skew tolerated on exp / nbf / iat
MAX_TOKEN_BYTES = 16_384


class TokenError(Exception):
    """A refused token; the message is safe to show the client (no key material)."""


@dataclass(frozen=True)
class TrustedIssuer:
    issuer: str
    keys: Callable[[str | None], Key | None]  # kid -> key
    # Audiences accepted besides the server's base URL (e.g. a Keycloak client id).
    audiences: tuple[str, ...] = ()


def issuers_from_settings(settings: Any) -> list[TrustedIssuer]:
    """The configured external issuers: DIATABASE_AUTH_ISSUER + DIATABASE_AUTH_JWKS, and
    each entry of the DIATABASE_AUTH_ISSUERS file ([{"issuer", "jwks", "audience"?}])."""
    found: list[TrustedIssuer] = []
    if settings.auth_issuer or settings.auth_jwks:
        if not (settings.auth_issuer and settings.auth_jwks):
            raise ValueError("DIATABASE_AUTH_ISSUER and DIATABASE_AUTH_JWKS go together")
        found.append(TrustedIssuer(settings.auth_issuer, JwksSource(settings.auth_jwks).key))
    if settings.auth_issuers_file:
        path = Path(settings.auth_issuers_file)
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read the issuers file {path}: {exc}") from None
        if not isinstance(entries, list):
            raise ValueError(f"{path}: expected a JSON list of {{issuer, jwks}} objects")
        for entry in entries:
            if not isinstance(entry, dict) or not entry.get("issuer") or not entry.get("jwks"):
                raise ValueError(f"{path}: each entry needs 'issuer' and 'jwks'")
            jwks = entry["jwks"]
            if not jwks.startswith(("https://", "http://", "/")):
                jwks = str(path.parent / jwks)  # relative to the issuers file
            audience = entry.get("audience") or ()
            audiences = (audience,) if isinstance(audience, str) else tuple(audience)
            found.append(TrustedIssuer(entry["issuer"], JwksSource(jwks).key, audiences))
    return found


class TokenValidator:
    """`own_keys`: the keys of this server's own token endpoint, whose issuer is the base
    URL the token is presented to (the same URL as its audience)."""

    def __init__(
        self,
        issuers: list[TrustedIssuer],
        own_keys: Callable[[str | None], Key | None] | None = None,
    ) -> None:
        self.issuers = {i.issuer: i for i in issuers}
        self.own_keys = own_keys

    def _issuer(self, iss: Any, audience: str) -> TrustedIssuer | None:
        if not isinstance(iss, str):
            return None
        found = self.issuers.get(iss)
        if found is None and self.own_keys is not None and iss.rstrip("/") == audience:
            found = TrustedIssuer(iss, self.own_keys)
        return found

    @staticmethod
    def check_times(claims: dict[str, Any], now: int | None = None) -> None:
        """exp / nbf again, for a token verified before (see the middleware's cache)."""
        registry = jwt.JWTClaimsRegistry(now=now, leeway=LEEWAY, exp={"essential": True})
        try:
            registry.validate({k: v for k, v in claims.items() if k in ("exp", "nbf")})
        except JoseError as exc:
            raise TokenError(_claim_message(exc)) from None

    def validate(self, token: str, audience: str, now: int | None = None) -> dict[str, Any]:
        """The token's claims, or TokenError."""
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenError("The access token is too large")
        try:
            unverified = jws.extract_compact(token.encode("ascii"))
            header = unverified.headers()
            claims = json.loads(unverified.payload)
        except (JoseError, ValueError, UnicodeError):
            raise TokenError("The access token is not a signed JWT") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise TokenError(f"Token algorithm {alg!r} is not accepted (use one of "
                             f"{', '.join(ALGORITHMS)})")
        if not isinstance(claims, dict):
            raise TokenError("The access token's payload is not a JSON object")
        issuer = self._issuer(claims.get("iss"), audience)
        if issuer is None:
            raise TokenError("The access token's issuer is not trusted here")
        kid = header.get("kid")
        key = issuer.keys(kid if isinstance(kid, str) else None)
        if key is None:
            raise TokenError("The access token's key (kid) is not known for its issuer")
        if not isinstance(key, RSAKey if alg.startswith("RS") else ECKey):
            raise TokenError("The access token's algorithm does not fit its key")
        try:
            verified = jwt.decode(token, key, algorithms=[alg])
        except JoseError:
            raise TokenError("The access token's signature does not verify") from None
        audiences = [audience, audience + "/", *issuer.audiences]
        registry = jwt.JWTClaimsRegistry(
            now=now,
            leeway=LEEWAY,
            iss={"essential": True, "value": issuer.issuer},
            aud={"essential": True, "values": audiences},
            exp={"essential": True},
        )
        try:
            registry.validate(verified.claims)
        except JoseError as exc:
            raise TokenError(_claim_message(exc)) from None
        return dict(verified.claims)


def _claim_message(exc: JoseError) -> str:
    if isinstance(exc, ExpiredTokenError):
        return "The access token has expired"
    claim = getattr(exc, "claim", None)
    if claim == "nbf":
        return "The access token is not valid yet (nbf)"
    if claim == "aud":
        return "The access token is not meant for this server (aud)"
    if isinstance(exc, MissingClaimError):
        return f"The access token lacks the '{claim}' claim"
    return f"The access token's '{claim}' claim is not acceptable"
