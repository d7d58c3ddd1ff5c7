"""The one place where a request's access is decided (an ASGI middleware, before routing).

For every HTTP request: the Host header is checked against the configured base URL (DNS
rebinding), CORS is answered for the configured origins only, the bearer token is
validated into an `Access` (auth/access.py) put on `request.state.access` (refused
requests included, for the audit trail), the interaction (auth/routes.py) is checked
against the token's scopes (401 / 403 as an OperationOutcome), and the token's visibility
is bound for storage while the request runs. Every answer gets `X-Content-Type-Options:
nosniff`; everything but the public conformance routes gets `Cache-Control: no-store`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_server.auth.access import NO_TOKEN, Access
from fhir_server.auth.routes import PUBLIC, Requirement, authorize, classify
from fhir_server.auth.tokens import TokenError, TokenValidator
from fhir_server.model import jsonio
from fhir_server.model.outcome import FhirError, Issue, outcome
from fhir_server.search.visibility import current_visibility

log = logging.getLogger("diatabase.auth")

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
CACHED_TOKENS = 4096
CORS_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, Accept, If-Match, If-None-Match, If-None-Exist, Prefer"
CORS_EXPOSED = "Location, Content-Location, ETag, Last-Modified"
FHIR_JSON = "application/fhir+json; charset=utf-8"
# Answers holding no patient data, which caches may keep.
CACHEABLE_PATHS = frozenset({"/metadata", "/.well-known/smart-configuration", "/auth/jwks"})


class AuthMiddleware:
    def __init__(self, app: ASGIApp, settings: Any, validator: TokenValidator) -> None:
        self.app = app
        self.settings = settings
        self.validator = validator
        self.insecure_dev = bool(settings.insecure_dev)
        # --deid-only serves no clinical route: the facade authenticates its recipients.
        self.deid_only = bool(settings.deid_only)
        self.base_url = settings.base_url.rstrip("/")
        self.allowed_host = urlsplit(self.base_url).netloc.lower() if self.base_url else None
        self.cors_origins = frozenset(o.rstrip("/") for o in settings.cors_origins)
        # token -> (claims, exp): a token seen before is not verified again until it expires
        self._claims: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        method, path = scope["method"], scope["path"]
        client = scope.get("client")
        source = client[0] if client else None
        origin = headers.get("origin")
        cors = origin if origin and origin.rstrip("/") in self.cors_origins else None
        requirement = PUBLIC if self.deid_only else classify(method, path)
        state = scope.setdefault("state", {})
        state["interaction"] = requirement

        if not self._host_allowed(headers.get("host", "")):
            state["access"] = Access.anonymous(source, "Host not served here")
            body = outcome([Issue("error", "not-supported",
                                  "This server does not answer for that Host name")])
            await self._answer(scope, receive, send, 421, body, {}, cors)
            return
        if method == "OPTIONS" and origin and headers.get("access-control-request-method"):
            await self._preflight(scope, receive, send, cors)
            return

        access = await self._access(scope, headers, source, requirement)
        state["access"] = access
        try:
            authorize(access, requirement)
        except FhirError as exc:
            await self._answer(scope, receive, send, exc.status, exc.to_outcome(),
                               exc.headers, cors)
            return
        cacheable = path in CACHEABLE_PATHS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = list(message.get("headers", []))
                present = {k.lower() for k, _ in raw}
                raw.append((b"x-content-type-options", b"nosniff"))
                if not cacheable and b"cache-control" not in present:
                    raw.append((b"cache-control", b"no-store"))
                raw += _cors_headers(cors)
                message["headers"] = raw
            await send(message)

        bound = current_visibility.set(access.visibility)
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            current_visibility.reset(bound)

    # -- steps -----------------------------------------------------------------------------

    def _host_allowed(self, host: str) -> bool:
        host = host.lower()
        if self.allowed_host is not None:
            return host == self.allowed_host or (
                self.insecure_dev and _hostname(host) in LOOPBACK_HOSTS
            )
        if self.insecure_dev:
            return _hostname(host) in LOOPBACK_HOSTS
        return True  # no base URL: tokens carry the protection (their aud is checked)

    async def _access(
        self, scope: Scope, headers: Headers, source: str | None, requirement: Requirement
    ) -> Access:
        if self.insecure_dev:
            return Access.insecure(source)
        authorization = headers.get("authorization")
        if not authorization:
            failure = None if requirement is PUBLIC else NO_TOKEN
            return Access(source=source, failure=failure)
        kind, _, token = authorization.partition(" ")
        token = token.strip()
        if kind.lower() != "bearer" or not token:
            return Access.anonymous(source, "The Authorization header must be 'Bearer <token>'")
        audience = self.audience(scope, headers)
        try:
            claims = await self._claims_of(token, audience)
        except TokenError as exc:
            return Access.anonymous(source, str(exc), _claimed_client(token))
        return Access.from_claims(claims, source)

    async def _claims_of(self, token: str, audience: str) -> dict[str, Any]:
        key = (token, audience)
        claims = self._claims.get(key)
        if claims is not None:
            # Seen and verified before: only the times can have changed.
            self.validator.check_times(claims)
            self._claims.move_to_end(key)
            return claims
        # Off the event loop: a JWKS URL may have to be fetched.
        claims = await run_in_threadpool(self.validator.validate, token, audience)
        self._claims[key] = claims
        if len(self._claims) > CACHED_TOKENS:
            self._claims.popitem(last=False)
        return claims

    def audience(self, scope: Scope, headers: Headers) -> str:
        """This server's base URL as tokens must name it (`aud`)."""
        if self.base_url:
            return self.base_url
        host = headers.get("host", "")
        return f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}".rstrip("/")

    async def _preflight(self, scope: Scope, receive: Receive, send: Send, cors: str | None):
        if cors is None:
            # No CORS headers: the browser refuses the cross-origin call.
            await Response(status_code=403)(scope, receive, send)
            return
        headers = dict((k.decode(), v.decode()) for k, v in _cors_headers(cors))
        headers["Access-Control-Allow-Methods"] = CORS_METHODS
        headers["Access-Control-Allow-Headers"] = CORS_HEADERS
        headers["Access-Control-Max-Age"] = "600"
        await Response(status_code=204, headers=headers)(scope, receive, send)

    @staticmethod
    async def _answer(
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str],
        cors: str | None,
    ) -> None:
        extra = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store", **headers}
        extra.update((k.decode(), v.decode()) for k, v in _cors_headers(cors))
        response = Response(jsonio.dumps(body), status, extra, media_type=FHIR_JSON)
        await response(scope, receive, send)


def _cors_headers(origin: str | None) -> list[tuple[bytes, bytes]]:
    if origin is None:
        return []
    return [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-expose-headers", CORS_EXPOSED.encode()),
        (b"vary", b"Origin"),
    ]


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host.split("]")[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _claimed_client(token: str) -> str | None:
    """The client a refused token claims to be (unverified: for the audit trail only)."""
    try:
        from joserfc import jws

        claims = jsonio.loads(jws.extract_compact(token.encode("ascii")).payload)
    except Exception:  # any garbage: no claim to report
        return None
    if not isinstance(claims, dict):
        return None
    found = claims.get("client_id") or claims.get("azp") or claims.get("sub")
    return str(found)[:200] if found else None
