"""Device and lab CSV exports to FHIR R4 transaction Bundles.

`to_bundle(data, format="auto", patient="Patient/123", timezone="Europe/Paris")` reads a
FreeStyle Libre, Dexcom Clarity, generic lab result, Levels or SimpleReport export (or any
other through a declarative `mapping`, see `declarative.py`) and returns a
`CsvMappingResult`: the Bundle (a Device per meter or sensor, one conditional create per
Observation), counts, and the rows rejected or skipped with their reasons.

Timestamps without an offset are read in `timezone` (IANA name or fixed offset); without
one, UTC is assumed and a warning says so. Re-importing a file with the same options
creates nothing new: each Observation carries a deterministic identifier (see resources.py)
and is created with `ifNoneExist`.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from .collection import collection_paused
from .common import Collector, Options
from .declarative import load_mapping
from .decode import decode_text
from .errors import CsvMappingError, CsvMappingResult, RejectedRow
from .formats import Format, mapping_format, registry
from .table import find_header, normalise_newlines, read_table
from .timestamps import parse_timezone

__all__ = [
    "FORMATS",
    "CsvMappingError",
    "CsvMappingResult",
    "RejectedRow",
    "detect_format",
    "to_bundle",
]

FORMATS: tuple[str, ...] = (*registry(), "mapping")


def _locate(text: str, fmt: Format | None) -> tuple[Format, int, str, list[str]]:
    candidates = [fmt] if fmt is not None else list(registry().values())
    for candidate in candidates:
        found = find_header(text, candidate.recognises, candidate.delimiter)
        if found is not None:
            index, delimiter, header = found
            return candidate, index, delimiter, candidate.header_names(header)
    if fmt is not None:
        raise CsvMappingError(f"no {fmt.name} header found in the first lines of the file")
    raise CsvMappingError(
        "unrecognised CSV export: no known header in the first lines "
        f"(known formats: {', '.join(FORMATS[:-1])}; use a mapping for others)"
    )


def detect_format(text: str | bytes) -> str:
    """The name of the format whose header the export carries; CsvMappingError if none."""
    fmt, _, _, _ = _locate(normalise_newlines(decode_text(text)), None)
    return fmt.name


def to_bundle(
    data: str | bytes,
    *,
    format: str = "auto",  # noqa: A002 - the public parameter name the API documents
    patient: str | None = None,
    timezone: str | None = None,
    mapping: dict[str, Any] | None = None,
    dayfirst: bool | None = None,
) -> CsvMappingResult:
    """Map an export to a transaction Bundle.

    `format`: "auto" (detect), one of FORMATS, or "mapping" (implied when `mapping` is
    given). `patient`: the subject reference of device readings (`Patient/123`,
    `urn:uuid:...`); lab formats that name their patients per row do without it.
    `dayfirst` forces the date order when the file itself cannot tell.
    """
    if mapping is not None:
        fmt: Format | None = mapping_format(load_mapping(mapping))
    elif not isinstance(format, str):
        raise CsvMappingError("format must be a string")
    elif format == "auto":
        fmt = None
    elif format in registry():
        fmt = registry()[format]
    elif format == "mapping":
        raise CsvMappingError("format 'mapping' needs a mapping document")
    else:
        raise CsvMappingError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
    if patient is not None and (not isinstance(patient, str) or not patient.strip()):
        raise CsvMappingError("patient must be a non-empty reference such as 'Patient/123'")

    with collection_paused():
        return _map(data, fmt, patient, timezone, dayfirst)


def _map(
    data: str | bytes,
    fmt: Format | None,
    patient: str | None,
    timezone: str | None,
    dayfirst: bool | None,
) -> CsvMappingResult:
    text = normalise_newlines(decode_text(data))
    fmt, index, delimiter, header = _locate(text, fmt)
    if patient is None and fmt.name in ("freestyle-libre", "dexcom-clarity"):
        raise CsvMappingError(f"{fmt.name}: give the patient the readings belong to")

    warnings: list[str] = []
    zone = parse_timezone(timezone if timezone is not None else fmt.timezone)
    assumed_utc = zone is None
    zone = zone or UTC
    options = Options(patient=patient, zone=zone, dayfirst=dayfirst, warnings=warnings)
    table = read_table(text, index, delimiter, header)
    out = Collector()
    fmt.map_rows(table, options, out)
    for bad in table.unreadable:
        out.reject(bad.row, bad.reason)
    if assumed_utc and any(stamp.is_local_time() for _, stamp, *_ in out.readings):
        warnings.append("no time zone given: local timestamps read as UTC")
    return out.result(format_name=fmt.name, rows_read=len(table.rows), warnings=warnings)
