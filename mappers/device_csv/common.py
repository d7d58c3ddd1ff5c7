"""What every format shares: one mapped reading, and the assembly of readings into a Bundle.

A format reads its rows and calls `Collector.add / reject / skip`; the collector drops
duplicates, creates the Device and Patient entries once, and builds the transaction Bundle
with a conditional create per Observation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from mappers.bundle import TransactionBuilder, identifier_query

from .errors import CsvMappingResult, RejectedRow
from .resources import (
    READING_SYSTEM,
    DeviceInfo,
    device_resource,
    observation,
    patient_key,
    safe_key,
)
from .timestamps import Stamp, has_numeric_dates, infer_dayfirst, uses_ampm


@dataclass(frozen=True, slots=True)
class PatientIdentity:
    """A patient named by an identifier in the file (lab exports); created conditionally."""

    system: str | None
    value: str


Subject = str | PatientIdentity


@dataclass(slots=True)
class Reading:
    row: int
    stamp: Stamp
    code: dict[str, Any]
    code_key: str
    profile: str | None
    category: str | None
    value: dict[str, Any]
    subject: Subject
    kind: str
    device: DeviceInfo | None = None
    note: str | None = None
    identifier: str = ""  # set by Collector.add


@dataclass
class Options:
    """The caller's options, as a format needs them."""

    patient: str | None
    zone: tzinfo
    dayfirst: bool | None
    warnings: list[str] = field(default_factory=list)

    def dayfirst_for(self, cells: list[str]) -> bool:
        """The date order of a file: the option, else its evidence, else its clock style."""
        if self.dayfirst is not None:
            return self.dayfirst
        inferred = infer_dayfirst(cells)
        if inferred is not None:
            return inferred
        # No evidence at all: a 12-hour clock is the US convention (month first);
        # the rest of the world writes the day first.
        guess = not uses_ampm(cells)
        if has_numeric_dates(cells):
            self.warnings.append(
                "ambiguous dates: assumed " + ("day-first" if guess else "month-first")
            )
        return guess


def _subject_key(subject: Subject) -> str:
    if isinstance(subject, PatientIdentity):
        return f"{subject.system or ''}|{subject.value}"
    return subject


class Collector:
    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.rejected: list[RejectedRow] = []
        self.skipped: list[RejectedRow] = []
        self._seen: dict[str, tuple[int, Any]] = {}
        self._repeated_hour: tuple[datetime, bool] | None = None

    def reject(self, row: int, reason: str) -> None:
        self.rejected.append(RejectedRow(row, reason))

    def skip(self, row: int, reason: str) -> None:
        self.skipped.append(RejectedRow(row, reason))

    def identifier_value(self, reading: Reading) -> str:
        source = (
            reading.device.source_key()
            if reading.device is not None
            else patient_key(_subject_key(reading.subject))
        )
        return f"{source}/{reading.stamp.key()}/{safe_key(reading.code_key)}/{reading.kind}"

    def _second_pass_of_repeated_hour(self, stamp: Stamp) -> Stamp:
        """When daylight-saving time ends, local times of one hour occur twice. Rows come
        in file order: inside that hour, a local time earlier than the previous one means
        the clock went back, and the rest of the hour is its second pass (fold=1)."""
        moment = stamp.moment
        if moment is None or stamp.explicit_offset:
            return stamp
        if moment.replace(fold=1).utcoffset() == moment.utcoffset():
            self._repeated_hour = None
            return stamp
        local = moment.replace(tzinfo=None)
        folded = False
        if self._repeated_hour is not None:
            previous, folded = self._repeated_hour
            folded = folded or local < previous
        self._repeated_hour = (local, folded)
        if not folded:
            return stamp
        return Stamp(moment.replace(fold=1), stamp.day, stamp.explicit_offset)

    def add(self, reading: Reading) -> None:
        """Keep a reading unless the same one (same identifier) came earlier in the file."""
        reading.stamp = self._second_pass_of_repeated_hour(reading.stamp)
        key = reading.identifier = self.identifier_value(reading)
        earlier = self._seen.get(key)
        if earlier is not None:
            first_row, first_value = earlier
            if first_value == reading.value:
                self.skip(reading.row, f"duplicate of row {first_row}")
            else:
                self.reject(
                    reading.row,
                    f"same time and code as row {first_row} but a different value",
                )
            return
        self._seen[key] = (reading.row, reading.value)
        self.readings.append(reading)

    def result(self, *, format_name: str, rows_read: int, warnings: list[str]) -> CsvMappingResult:
        builder = TransactionBuilder()
        patients: dict[PatientIdentity, str] = {}
        devices: dict[tuple[DeviceInfo, str], str] = {}

        def subject_ref(subject: Subject) -> str:
            if not isinstance(subject, PatientIdentity):
                return subject
            if subject not in patients:
                ident = {"value": subject.value}
                if subject.system:
                    ident = {"system": subject.system, "value": subject.value}
                patients[subject] = builder.create(
                    {"resourceType": "Patient", "identifier": [ident]},
                    identifier_query(subject.system, subject.value),
                )
            return patients[subject]

        def device_ref(device: DeviceInfo, patient_ref: str) -> str:
            if (device, patient_ref) not in devices:
                system, value = device.identifier()
                devices[(device, patient_ref)] = builder.create(
                    device_resource(device, patient_ref), identifier_query(system, value)
                )
            return devices[(device, patient_ref)]

        # Patients and devices first so that a reader of the Bundle meets them before use.
        references = []
        for reading in self.readings:
            subject = subject_ref(reading.subject)
            device = device_ref(reading.device, subject) if reading.device else None
            references.append((subject, device))
        for reading, (subject, device) in zip(self.readings, references, strict=True):
            value = reading.identifier
            resource = observation(
                code=reading.code,
                profile=reading.profile,
                category=reading.category,
                subject=subject,
                effective=reading.stamp.fhir(),
                identifier=(READING_SYSTEM, value),
                value=reading.value,
                device_ref=device,
                note=reading.note,
            )
            builder.create(resource, identifier_query(READING_SYSTEM, value))
        return CsvMappingResult(
            bundle=builder.bundle(),
            rows_read=rows_read,
            readings=len(self.readings),
            rejected=sorted(self.rejected, key=lambda r: r.row),
            format=format_name,
            skipped=sorted(self.skipped, key=lambda r: r.row),
            warnings=warnings,
        )
