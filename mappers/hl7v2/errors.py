"""The one exception the HL7 v2 mapper raises for input it cannot map."""

from __future__ import annotations


class MappingError(ValueError):
    """A message that cannot become a Bundle, with where it went wrong when known.

    `segment` is the segment id (e.g. "MSH") and `field` the 1-based field number, so that
    an ACK can carry them in ERR-2 (error location).
    """

    def __init__(self, message: str, segment: str | None = None, field: int | None = None):
        super().__init__(message)
        self.message = message
        self.segment = segment
        self.field = field

    def __str__(self) -> str:
        where = self.segment or ""
        if self.segment and self.field is not None:
            where += f"-{self.field}"
        return f"{where}: {self.message}" if where else self.message
