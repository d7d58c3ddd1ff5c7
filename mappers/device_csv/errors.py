"""The result of mapping one CSV export, and the error for files that cannot be mapped."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class CsvMappingError(ValueError):
    """The whole file cannot be mapped (unrecognised format, undecodable bytes, bad option).

    Row-level problems never raise: they end up in `CsvMappingResult.rejected`.
    """


@dataclass(frozen=True)
class RejectedRow:
    """A row that was read but not mapped; `row` is the 1-based line number in the file."""

    row: int
    reason: str


@dataclass
class CsvMappingResult:
    """What `to_bundle` returns.

    - `bundle`: a FHIR R4 transaction Bundle (Device / Patient entries, then Observations).
    - `rows_read`: non-empty data rows after the header (metadata rows included).
    - `readings`: glucose (and ketone) Observations in the bundle.
    - `events`: logged treatments and events in the bundle (insulin as
      MedicationAdministration, carbohydrates, exercise, notes as Observations).
    - `rejected`: rows that are malformed (bad date, bad value, conflicting duplicate...).
    - `format`: the format name used (detected or given).
    - `skipped`: rows that are well-formed but deliberately not mapped (metadata rows,
      exact duplicates, entries without a usable value), each with the reason.
    - `warnings`: file-level remarks (e.g. no time zone given, UTC assumed).
    """

    bundle: dict[str, Any]
    rows_read: int
    readings: int
    rejected: list[RejectedRow]
    format: str
    skipped: list[RejectedRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    events: int = 0
