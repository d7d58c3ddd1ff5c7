"""What the server tells clients about its security, true to the running configuration:
`GET /.well-known/smart-configuration` (SMART App Launch 2.x discovery) and the
CapabilityStatement's `rest.security`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from fhir_server.auth.token_endpoint import JWKS_PATH, TOKEN_PATH
from fhir_server.auth.tokens import ALGORITHMS

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"


def _base(request: Request) -> str:
    configured = request.app.state.settings.base_url
    return configured.rstrip("/") if configured else str(request.base_url).rstrip("/")


def smart_configuration(request: Request) -> dict[str, Any]:
    base = _base(request)
    return {
        "issuer": base,
        "jwks_uri": f"{base}{JWKS_PATH}",
        "token_endpoint": f"{base}{TOKEN_PATH}",
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": ["system/*.cruds", "system/*.rs", "user/*.cruds", "user/*.rs",
                             "patient/*.cruds", "patient/*.rs"],
        "capabilities": [
            "client-confidential-asymmetric",
            "permission-v1",
            "permission-v2",
            "permission-patient",
            "permission-user",
            "context-ehr-patient",
        ],
        "code_challenge_methods_supported": [],
    }


def capability_security(request: Request) -> dict[str, Any]:
    """CapabilityStatement.rest.security for the server as it runs."""
    settings = request.app.state.settings
    cors = bool(settings.cors_origins)
    if settings.insecure_dev:
        return {
            "cors": cors,
            "description": "Development mode (--insecure-dev): NO access control; every "
            "request is allowed. Never with real data.",
        }
    base = _base(request)
    return {
        "cors": cors,
        "service": [{
            "coding": [{"system": SECURITY_SERVICE, "code": "SMART-on-FHIR",
                        "display": "SMART-on-FHIR"}],
            "text": "OAuth2 bearer tokens with SMART App Launch 2 scopes",
        }],
        "extension": [{
            "url": OAUTH_URIS,
            "extension": [{"url": "token", "valueUri": f"{base}{TOKEN_PATH}"}],
        }],
        "description": "Every request but /metadata and /.well-known/smart-configuration "
        "needs a bearer token (SMART Backend Services at the token endpoint, or a configured "
        "OpenID Connect issuer); patient/, user/ and system/ scopes are enforced, a patient "
        "context limits access to that patient's compartment.",
    }


def build_smart_router() -> APIRouter:
    router = APIRouter()

    @router.get("/.well-known/smart-configuration")
    async def discovery(request: Request) -> Response:
        return JSONResponse(smart_configuration(request))

    return router
