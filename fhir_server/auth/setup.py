"""`install_auth`: the access-control pieces wired into the FastAPI application."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI

from fhir_server.auth.middleware import AuthMiddleware
from fhir_server.auth.tokens import TokenValidator, issuers_from_settings

log = logging.getLogger("diatabase.auth")


def install_auth(app: FastAPI, settings: Any, service: Any) -> None:
    validator = TokenValidator(issuers_from_settings(settings))
    app.state.token_validator = validator
    app.add_middleware(AuthMiddleware, settings=settings, validator=validator)
