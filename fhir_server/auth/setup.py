"""`install_auth`: the access-control pieces wired into the FastAPI application."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI

from fhir_server.auth.middleware import AuthMiddleware
from fhir_server.auth.smart import build_smart_router
from fhir_server.auth.store import AuthStore, store_path
from fhir_server.auth.token_endpoint import ServerKey, TokenService, build_token_router
from fhir_server.auth.tokens import TokenValidator, issuers_from_settings

log = logging.getLogger("diatabase.auth")


def install_auth(app: FastAPI, settings: Any) -> None:
    """The middleware deciding every request's Access; on a closed server, the built-in
    token endpoint with its keys and the SMART discovery document."""
    validator = TokenValidator(issuers_from_settings(settings))
    app.state.token_validator = validator
    app.state.tokens = None
    if not settings.insecure_dev and not settings.deid_only:
        store = AuthStore(store_path(settings))
        tokens = TokenService(store, ServerKey(store, settings.auth_signing_key),
                              settings.auth_token_lifetime)
        validator.own_keys = tokens.key.lookup
        app.state.tokens = tokens
        app.state.auth_store = store
        app.include_router(build_token_router(tokens))
        app.include_router(build_smart_router())
        if not settings.base_url:
            log.warning("No base URL configured (--base-url / DIATABASE_BASE_URL): tokens are "
                        "checked against the URL each request names; set it in production")
    app.add_middleware(AuthMiddleware, settings=settings, validator=validator)
