"""The one exception the HL7 v2 mapper raises for input it cannot map, and the warning it
gives for content it accepts but does not store."""

from __future__ import annotations

from dataclasses import dataclass


class MappingError(ValueError):
    """A message that cannot become a Bundle, with where it went wrong when known.

    `segment` is the segment id (e.g. "MSH") and `field` the 1-based field number, so that
    an ACK can carry them in ERR-2 (error location).

    `condition` is the HL7 table 0357 code the ACK's ERR-3 carries when it is not implied
    by the location (200 for MSH-9 as a whole, else 207): 201 for an unsupported event.
    """

    def __init__(
        self,
        message: str,
        segment: str | None = None,
        field: int | None = None,
        condition: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.segment = segment
        self.field = field
        self.condition = condition

    def __str__(self) -> str:
        where = self.segment or ""
        if self.segment and self.field is not None:
            where += f"-{self.field}"
        return f"{where}: {self.message}" if where else self.message


@dataclass(frozen=True)
class MappingWarning:
    """Content of an accepted message that is not stored (or not as sent), so that the ACK
    can say so (an ERR of severity W) instead of acknowledging it silently.

    `segment` and `sequence` locate the first such segment (ERR-2: segment id and its
    1-based sequence among segments of that id); `count` is how many were left aside.
    """

    segment: str
    text: str
    sequence: int = 1
    field: int | None = None
    count: int = 1

    def __str__(self) -> str:
        where = self.segment if self.field is None else f"{self.segment}-{self.field}"
        return f"{where}: {self.text}"


class MappingCancelled(Exception):
    """The caller asked the mapping to stop (its sender went away): not an error of the
    message, and nothing is answered."""
