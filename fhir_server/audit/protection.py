"""AuditEvents are written by the server alone."""

from __future__ import annotations

from fhir_server.model.outcome import FhirError, error

AUDIT_TYPE = "AuditEvent"


def refuse_audit_write(resource_type: str) -> None:
    """Raise for any create, update, patch or delete of an AuditEvent, whoever asks.

    405 rather than 403: no scope, role or token could allow it (403 would suggest one
    might), the resource supports no such method (RFC 9110 15.5.6, with Allow)."""
    if resource_type == AUDIT_TYPE:
        raise audit_write_refusal()


def audit_write_refusal() -> FhirError:
    return error(
        405,
        "not-supported",
        "AuditEvent records are written by the server only: they cannot be created, "
        "changed or deleted through the API",
        Allow="GET",
    )
