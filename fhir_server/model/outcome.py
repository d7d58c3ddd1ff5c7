"""OperationOutcome and the error type every layer raises to produce one.

Every 4xx/5xx the server returns is an OperationOutcome; code below the HTTP layer raises
`FhirError` with the HTTP status and the issues, and the API turns it into a response.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Issue:
    severity: str  # fatal | error | warning | information
    code: str  # IssueType: invalid, structure, required, value, not-found, conflict, ...
    diagnostics: str
    expression: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        issue: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            issue["expression"] = list(self.expression)
        return issue


def outcome(issues: list[Issue] | tuple[Issue, ...]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


def info_outcome(message: str) -> dict[str, Any]:
    return outcome([Issue("information", "informational", message)])


@dataclass
class FhirError(Exception):
    """An error with an HTTP status, reported to the client as an OperationOutcome."""

    status: int
    issues: list[Issue] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return "; ".join(i.diagnostics for i in self.issues)

    def to_outcome(self) -> dict[str, Any]:
        return outcome(self.issues)


def error(
    status: int, code: str, message: str, expression: str | None = None, **headers: str
) -> FhirError:
    """Shorthand for a FhirError carrying a single error issue."""
    expr = (expression,) if expression else ()
    return FhirError(status, [Issue("error", code, message, expr)], dict(headers))
