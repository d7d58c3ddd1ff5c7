"""The one exception type the terminology library raises for bad requests."""

from __future__ import annotations


class TerminologyError(Exception):
    """A request the terminology service cannot answer.

    `code` is a FHIR OperationOutcome issue type (not-found, invalid, not-supported, ...)
    and `status` the HTTP status the server should answer with, so the HTTP layer can turn
    it into an OperationOutcome without knowing the library's internals.
    """

    def __init__(self, message: str, code: str = "invalid", status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status

    def to_operation_outcome(self) -> dict:
        return {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": self.code, "diagnostics": self.message}],
        }


def not_found(message: str) -> TerminologyError:
    return TerminologyError(message, code="not-found", status=404)


def invalid(message: str) -> TerminologyError:
    return TerminologyError(message, code="invalid", status=400)
