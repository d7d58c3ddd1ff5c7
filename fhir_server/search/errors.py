"""Errors raised while parsing or running a search.

The HTTP layer turns a SearchError into a 400 OperationOutcome: the message is for a human,
`expression` names the offending search parameter (e.g. ``"date"``, ``"subject:Patient.name"``)
so that a client can point at it.
"""

from __future__ import annotations


class SearchError(ValueError):
    """Malformed or unacceptable search input (always the client's fault, never a 500)."""

    code = "invalid"  # the OperationOutcome issue code

    def __init__(self, message: str, expression: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.expression = expression

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, expression={self.expression!r})"


class UnsupportedModifier(SearchError):
    """A well-formed modifier this server cannot evaluate as configured (e.g. token :below
    without a terminology service). Still the request's problem: it asked for something the
    server does not offer, so it must be refused rather than silently ignored."""
