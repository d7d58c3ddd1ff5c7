"""Access control: bearer tokens, SMART scopes, patient context, the token endpoint and its
clients. `install_auth(app, settings, service)` wires it into the application."""

from fhir_server.auth.setup import install_auth

__all__ = ["install_auth"]
