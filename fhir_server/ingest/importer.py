"""`diatabase import`: map HL7 v2, CSV and DICOM files and store them, with a report.

Each file's kind is sniffed from its bytes (or forced with `format`): HL7 v2 files store
one transaction per message (a bad message is reported, the others are kept), a CSV export
is one transaction (all of the file's readings or none; bad rows are reported and skipped),
and all the DICOM files named are mapped together (a study's files must be) into one
transaction. Every Bundle is conditional on business identifiers, so importing the same
files again creates nothing: the report then counts those resources as unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fhir_server.model.outcome import FhirError
from fhir_server.service.fhir import FhirService
from fhir_server.service.ingest import (
    Conversion,
    ConversionError,
    StoreCounts,
    convert_csv,
    convert_dicom,
    convert_hl7v2,
    sniff_kind,
    store_bundle,
)
from mappers.device_csv import RejectedRow

# --format values beside the CSV format names.
SOURCE_FORMATS = ("auto", "hl7v2", "dicom")
# Inside a folder, the files taken as sources (DICOM files often have no extension at all);
# files named on the command line are always taken.
SOURCE_SUFFIXES = ("", ".hl7", ".er7", ".txt", ".csv", ".tsv", ".dcm", ".dicom")


@dataclass(frozen=True)
class ImportOptions:
    format: str = "auto"
    patient: str | None = None
    timezone: str | None = None
    dayfirst: bool | None = None
    mapping: dict[str, Any] | None = None


@dataclass
class FileReport:
    """What one source did. `units` is messages (HL7 v2), rows (CSV) or studies (DICOM)."""

    source: str
    format: str = "?"
    messages: int = 0
    rows_read: int = 0
    readings: int = 0
    counts: StoreCounts = field(default_factory=StoreCounts)
    rejected: list[RejectedRow] = field(default_factory=list)
    skipped: int = 0
    warnings: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


@dataclass
class ImportReport:
    files: list[FileReport] = field(default_factory=list)

    @property
    def totals(self) -> StoreCounts:
        total = StoreCounts()
        for report in self.files:
            total.add(report.counts)
        return total

    @property
    def failed(self) -> bool:
        return any(report.failed for report in self.files)


def expand(paths: Iterable[str | Path]) -> list[Path]:
    """Files named, and the source files inside named folders (see SOURCE_SUFFIXES)."""
    found: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found += sorted(
                p for p in path.rglob("*")
                if p.is_file()
                and not p.name.startswith(".")
                and p.suffix.lower() in SOURCE_SUFFIXES
            )
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {name}")
    return found


def _kind(path: Path, data: bytes, fmt: str) -> str:
    if fmt in ("hl7v2", "dicom"):
        return fmt
    if fmt != "auto":
        return "csv"  # a CSV format name (or a mapping)
    return sniff_kind(data)


class Importer:
    """Maps and stores files through `service`; `on_progress(n)` is called per source done."""

    def __init__(
        self,
        service: FhirService,
        options: ImportOptions | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.service = service
        self.options = options or ImportOptions()
        self.on_progress = on_progress or (lambda n: None)
        self.report = ImportReport()

    def import_files(self, paths: Iterable[Path]) -> ImportReport:
        dicom_paths: list[Path] = []
        for path in paths:
            try:
                data = path.read_bytes()
            except OSError as exc:
                self.report.files.append(FileReport(str(path), failed=[str(exc)]))
                self.on_progress(1)
                continue
            kind = _kind(path, data, self.options.format)
            if kind == "dicom":
                dicom_paths.append(path)
                continue
            self._import_source(str(path), kind, data)
            self.on_progress(1)
        if dicom_paths:
            self._import_dicom(dicom_paths)
            self.on_progress(len(dicom_paths))
        return self.report

    def _import_source(self, source: str, kind: str, data: bytes) -> None:
        report = FileReport(source)
        self.report.files.append(report)
        options = self.options
        try:
            if kind == "hl7v2":
                conversion = convert_hl7v2(data, timezone=options.timezone, keep_going=True)
            else:
                fmt = "auto" if options.format in SOURCE_FORMATS else options.format
                conversion = convert_csv(
                    data,
                    format=fmt,
                    patient=options.patient,
                    timezone=options.timezone,
                    dayfirst=options.dayfirst,
                    mapping=options.mapping,
                    label=source,
                )
        except ConversionError as exc:
            report.format = kind
            report.failed.append(str(exc))
            return
        self._store(report, conversion)

    def _import_dicom(self, paths: list[Path]) -> None:
        source = str(paths[0]) if len(paths) == 1 else f"{len(paths)} DICOM files"
        report = FileReport(source, format="dicom")
        self.report.files.append(report)
        try:
            conversion = convert_dicom(paths, timezone=self.options.timezone, label=source)
        except ConversionError as exc:
            report.failed.append(str(exc))
            return
        self._store(report, conversion)

    def _store(self, report: FileReport, conversion: Conversion) -> None:
        report.format = conversion.format
        report.messages = conversion.messages
        report.rows_read = conversion.rows_read
        report.readings = conversion.readings
        report.rejected = conversion.rejected
        report.skipped = len(conversion.skipped)
        report.warnings = conversion.warnings
        report.failed += conversion.failed
        merges = conversion.merges or [[] for _ in conversion.bundles]
        for label, bundle, merge in zip(conversion.labels, conversion.bundles, merges,
                                        strict=True):
            try:
                counts = store_bundle(self.service, bundle, merge)
            except FhirError as exc:
                report.failed.append(f"{label}: rejected by the server: {exc}")
                continue
            report.counts.add(counts)
            report.warnings += [f"{label}: {warning}" for warning in counts.warnings]


def summary_table(report: ImportReport, max_rows: int = 50) -> str:
    """The report as text: a line per source, totals, then the rejected rows and failures."""
    header = ("source", "format", "msgs", "rows", "readings", "created", "updated",
              "unchanged", "rejected")
    lines: list[tuple[str, ...]] = [header]
    for r in report.files:
        lines.append((
            _shorten(r.source), r.format, str(r.messages), str(r.rows_read), str(r.readings),
            str(r.counts.created), str(r.counts.updated), str(r.counts.unchanged),
            str(len(r.rejected) + len(r.failed)),
        ))
    totals = report.totals
    lines.append((
        "total", "", str(sum(r.messages for r in report.files)),
        str(sum(r.rows_read for r in report.files)),
        str(sum(r.readings for r in report.files)), str(totals.created), str(totals.updated),
        str(totals.unchanged), str(sum(len(r.rejected) + len(r.failed) for r in report.files)),
    ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def row(cells: tuple[str, ...]) -> str:
        return "  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [row(lines[0]), "  ".join("-" * w for w in widths)]
    out += [row(line) for line in lines[1:-1]]
    out += ["  ".join("-" * w for w in widths), row(lines[-1])]
    for r in report.files:
        problems = [f"row {bad.row}: {bad.reason}" for bad in r.rejected] + r.failed
        if r.skipped:
            out.append(f"{r.source}: {r.skipped} rows skipped (not mapped: metadata, notes, "
                       "insulin, food, exact duplicates)")
        for warning in r.warnings:
            out.append(f"{r.source}: warning: {warning}")
        if problems:
            out.append(f"{r.source}: {len(problems)} rejected")
            out += [f"  {p}" for p in problems[:max_rows]]
            if len(problems) > max_rows:
                out.append(f"  ... and {len(problems) - max_rows} more")
    return "\n".join(out)


def _shorten(text: str, width: int = 48) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]
