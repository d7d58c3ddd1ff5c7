"""Ingestion: HL7 v2, device / lab CSV and DICOM sources into transaction Bundles, and storing
them through the service.

The mapping itself is the `mappers` package's job; this module gives the server one way to
call it (whatever the source), one error type for sources that cannot be mapped, and one way
to store a mapped Bundle and count what it did. `POST /$convert`, `diatabase import` and the
MLLP listener all go through here.

    convert_hl7v2(data, timezone=None, keep_going=False) -> Conversion
    convert_csv(data, format="auto", patient=None, timezone=None, ...) -> Conversion
    convert_dicom(source, timezone=None) -> Conversion
    store_bundle(service, bundle, merges=()) -> StoreCounts

A Conversion holds one transaction Bundle per HL7 v2 message (each message is its own unit
of work, as over MLLP) and one per CSV export or DICOM import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fhir_server.service.fhir import FhirService
from fhir_server.service.patient_merge import keep_links, merge_patients
from fhir_server.storage.base import now_millis
from mappers import device_csv, dicom, hl7v2
from mappers.device_csv import CsvMappingError, RejectedRow
from mappers.device_csv.timestamps import parse_timezone

KINDS = ("hl7v2", "csv", "dicom")
# The CSV formats whose readings belong to a Patient the caller names (the file does not).
DEVICE_FORMATS = ("freestyle-libre", "dexcom-clarity", "levels")
DICOM_MAGIC_OFFSET = 128


class ConversionError(ValueError):
    """A source that cannot be mapped as a whole; `status` is the HTTP status to answer.

    400: the request's options are wrong (unknown format or time zone, no patient);
    422: the content itself cannot be mapped (not HL7 v2, unrecognised CSV, not DICOM).
    """

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass
class Conversion:
    """What a source mapped to.

    `bundles` and `labels` go together: one label per Bundle says where it came from
    ("message 2 (MSG-0042)", a file name). `rejected` are CSV rows that are malformed,
    `skipped` rows that are well-formed but deliberately not mapped (both with their 1-based
    line number); `failed` are HL7 v2 messages that could not be mapped (with `keep_going`).
    `merges` go with `bundles` too: the ADT^A40 merges each Bundle's storing must apply.
    """

    kind: str
    format: str
    bundles: list[dict[str, Any]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    messages: int = 0
    rows_read: int = 0
    readings: int = 0
    events: int = 0  # logged insulin, carbohydrates, exercise, notes (CSV)
    rejected: list[RejectedRow] = field(default_factory=list)
    skipped: list[RejectedRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    merges: list[list[hl7v2.PatientMerge]] = field(default_factory=list)


# -- source kinds ----------------------------------------------------------------------------


def sniff_kind(data: bytes) -> str:
    """hl7v2, dicom or csv, from the first bytes (the file name is not trusted)."""
    if data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return "dicom"
    head = data[:16].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head[:3] in (b"MSH", b"FHS", b"BHS"):
        return "hl7v2"
    return "csv"


def zone_name(timezone: str | None) -> str | None:
    """An IANA time zone name (or UTC) checked now, so that a typo is a 400 and not a 422."""
    if timezone is None or timezone.upper() in ("UTC", "Z"):
        return timezone
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConversionError(f"unknown time zone {timezone!r} (use an IANA name)", 400) from None
    return timezone


# -- HL7 v2 ----------------------------------------------------------------------------------


def control_id(message: str) -> str:
    """MSH-10 of a message ('' when there is none), to name a message in reports."""
    for line in message.replace("\n", "\r").split("\r"):
        if line.startswith("MSH") and len(line) > 3:
            fields = line.split(line[3])
            return fields[9] if len(fields) > 9 else ""
    return ""


def convert_hl7v2(
    data: str | bytes, timezone: str | None = None, keep_going: bool = False
) -> Conversion:
    """One transaction Bundle per message of a message or batch (FHS/BHS or concatenated).

    A message that cannot be mapped raises ConversionError naming it, or, with
    `keep_going`, is listed in `failed` and the others are still mapped.
    """
    zone = zone_name(timezone)
    messages = hl7v2.split_batch(data)
    if not messages and sniff_kind(data.encode() if isinstance(data, str) else data) != "hl7v2":
        raise ConversionError("no HL7 v2 message found (no MSH segment)")
    # An FHS/BHS batch with no message in it is legitimate: nothing to map.
    result = Conversion(kind="hl7v2", format="hl7v2", messages=len(messages))
    for number, message in enumerate(messages, start=1):
        ident = control_id(message)
        label = f"message {number}" + (f" ({ident})" if ident else "")
        try:
            mapped = hl7v2.map_message(message, timezone=zone)
        except hl7v2.MappingError as exc:
            if not keep_going:
                raise ConversionError(f"{label}: {exc}") from None
            result.failed.append(f"{label}: {exc}")
            continue
        result.bundles.append(mapped.bundle)
        result.merges.append(mapped.merges)
        result.warnings += [f"{label}: {warning}" for warning in mapped.warnings]
        result.labels.append(label)
    return result


# -- CSV -------------------------------------------------------------------------------------


def convert_csv(
    data: bytes,
    format: str = "auto",  # noqa: A002 - the option's public name
    patient: str | None = None,
    timezone: str | None = None,
    dayfirst: bool | None = None,
    mapping: dict[str, Any] | None = None,
    label: str = "csv",
) -> Conversion:
    """A device or lab export to one transaction Bundle; bad rows are reported, not fatal."""
    if mapping is None and format not in ("auto", *device_csv.FORMATS):
        raise ConversionError(
            f"unknown CSV format {format!r}; known: auto, {', '.join(device_csv.FORMATS)}", 400
        )
    if mapping is None and format == "mapping":
        raise ConversionError("format 'mapping' needs a mapping document", 400)
    if patient is not None and not patient.strip():
        patient = None
    try:
        parse_timezone(timezone)  # offsets (+02:00) are fine here, unlike for HL7 v2
    except CsvMappingError as exc:
        raise ConversionError(str(exc), 400) from None
    try:
        if patient is None and mapping is None:
            detected = device_csv.detect_format(data) if format == "auto" else format
            if detected in DEVICE_FORMATS:
                raise ConversionError(
                    f"{detected}: the file does not say whose readings these are; give the "
                    "patient (a reference such as Patient/123 or Patient?identifier=...)",
                    400,
                )
        mapped = device_csv.to_bundle(
            data,
            format=format,
            patient=patient,
            timezone=timezone,
            mapping=mapping,
            dayfirst=dayfirst,
        )
    except CsvMappingError as exc:
        raise ConversionError(str(exc)) from None
    return Conversion(
        kind="csv",
        format=mapped.format,
        bundles=[mapped.bundle],
        labels=[label],
        rows_read=mapped.rows_read,
        readings=mapped.readings,
        events=mapped.events,
        rejected=list(mapped.rejected),
        skipped=list(mapped.skipped),
        warnings=list(mapped.warnings),
    )


# -- DICOM -----------------------------------------------------------------------------------


def convert_dicom(
    source: bytes | Sequence[str | Path], timezone: str | None = None, label: str = "dicom"
) -> Conversion:
    """The bytes of one DICOM file, or files and folders (a study's files belong together)."""
    zone = zone_name(timezone)
    try:
        bundle = dicom.to_bundle(source if isinstance(source, bytes) else list(source),
                                 timezone=zone)
    except dicom.DicomMappingError as exc:
        raise ConversionError(str(exc)) from None
    studies = sum(1 for e in bundle["entry"] if e["resource"]["resourceType"] == "ImagingStudy")
    return Conversion(
        kind="dicom", format="dicom", bundles=[bundle], labels=[label], messages=studies
    )


# -- storing ---------------------------------------------------------------------------------


@dataclass
class StoreCounts:
    """What storing Bundles did: resources created, updated (a new version) and unchanged
    (found by a conditional create, or a conditional update with the very same content);
    Patients merged away (ADT^A40), resources re-pointed by those merges, and warnings."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    merged: int = 0
    repointed: int = 0
    warnings: list[str] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)  # Patient/id written or merged

    def add(self, other: StoreCounts) -> None:
        self.created += other.created
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.merged += other.merged
        self.repointed += other.repointed
        self.warnings += other.warnings
        self.patients += [p for p in other.patients if p not in self.patients]


def _no_get(url: str, items: list[tuple[str, str]]) -> tuple[int, Any]:
    return 200, None  # mapped Bundles hold no GET entries


def _epoch(instant_text: str) -> float:
    return datetime.fromisoformat(instant_text.replace("Z", "+00:00")).timestamp()


def store_bundle(
    service: FhirService,
    bundle: dict[str, Any],
    merges: Sequence[hl7v2.PatientMerge] = (),
) -> StoreCounts:
    """Run a transaction Bundle and its merges (all or nothing, one storage transaction);
    raises FhirError when the server refuses it. Patient updates keep the links and old
    identifiers earlier merges gave them (see `patient_merge`).

    A `200 OK` entry was written by this transaction when its lastModified is not older than
    the transaction itself: that is an update; otherwise it is a resource already there.
    """
    started = now_millis()
    counts = StoreCounts()
    with service.storage.transaction() as tx:
        keep_links(tx, service.resources, bundle)
        response = service.bundles("").process(bundle, _no_get, tx=tx)
        for merge in merges:
            merged = merge_patients(tx, service.resources, merge.survivor, merge.prior)
            counts.merged += len(merged.merged)
            counts.repointed += merged.repointed
            counts.patients += [f"Patient/{rid}" for rid in merged.merged]
            if merged.warning:
                counts.warnings.append(merged.warning)
    for entry in response["entry"]:
        answer = entry["response"]
        status = answer["status"]
        location = answer.get("location") or ""
        if location.startswith("Patient/"):
            patient = "/".join(location.split("/")[:2])
            if patient not in counts.patients:
                counts.patients.append(patient)
        if status.startswith("201"):
            counts.created += 1
        elif status.startswith("200"):
            modified = answer.get("lastModified")
            if modified and _epoch(modified) >= started:
                counts.updated += 1
            else:
                counts.unchanged += 1
    return counts
