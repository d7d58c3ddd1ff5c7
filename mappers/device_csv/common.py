"""What every format shares: one mapped reading, and the assembly of readings into a Bundle.

A format reads its rows and calls `Collector.add / reject / skip`, a reading being its time,
its value and the `ReadingTemplate` of its kind (code, profile, subject, device), which the
format makes once per kind; the collector drops duplicates, creates the Device and Patient
entries once, and builds the transaction Bundle with a conditional create per Observation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from mappers.bundle import TransactionBuilder, identifier_query

from .errors import CsvMappingResult, RejectedRow
from .resources import (
    READING_SYSTEM,
    Analyte,
    DeviceInfo,
    ObservationBuilder,
    code_maker,
    device_resource,
    observation_builder,
    patient_key,
    safe_key,
)
from .timestamps import AnyStamp, has_numeric_dates, infer_dayfirst, uses_ampm


@dataclass(frozen=True, slots=True)
class PatientIdentity:
    """A patient named by an identifier in the file (lab exports); created conditionally."""

    system: str | None
    value: str


Subject = str | PatientIdentity


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


_QUERY_HEAD = len(identifier_query(None, ""))  # `identifier=`


class ReadingTemplate:
    """What the readings of one kind share (code, profile, subject, device...): a format
    makes one per kind of reading and device, and each reading adds its time and value.

    It holds the parts of the reading identifier `{source}/{UTC key}/{code}/{kind}` and of
    its conditional query around the time key; the key is digits, `T` and `Z`, which URL
    quoting leaves as they are, so the query is these parts joined.
    """

    __slots__ = ("make_code", "profile", "category", "subject", "device", "note",
                 "id_prefix", "id_suffix", "query_prefix", "query_suffix")

    def __init__(
        self,
        *,
        make_code: Callable[[], dict[str, Any]],
        code_key: str,
        profile: str | None,
        category: str | None,
        subject: Subject,
        kind: str,
        device: DeviceInfo | None = None,
        note: str | None = None,
    ) -> None:
        self.make_code = make_code  # a new dict per Observation: the server edits resources
        self.profile, self.category, self.subject = profile, category, subject
        self.device, self.note = device, note
        source = device.source_key() if device is not None else patient_key(
            _subject_key(subject)
        )
        self.id_prefix = source + "/"
        self.id_suffix = f"/{safe_key(code_key)}/{kind}"
        self.query_prefix = identifier_query(READING_SYSTEM, self.id_prefix)
        self.query_suffix = identifier_query(None, self.id_suffix)[_QUERY_HEAD:]

    @classmethod
    def of_analyte(
        cls,
        analyte: Analyte,
        subject: Subject,
        kind: str,
        device: DeviceInfo | None = None,
        note: str | None = None,
    ) -> ReadingTemplate:
        """The template of readings of one of the known analytes (CGM, meter, ketone...)."""
        return cls(
            make_code=code_maker(analyte),
            code_key=analyte.code,
            profile=analyte.profile,
            category=analyte.category,
            subject=subject,
            kind=kind,
            device=device,
            note=note,
        )


# One kept reading: (row, stamp, template, value, identifier, time key).
Kept = tuple[int, AnyStamp, ReadingTemplate, dict[str, Any], str, str]


class Collector:
    def __init__(self) -> None:
        self.readings: list[Kept] = []
        self.rejected: list[RejectedRow] = []
        self.skipped: list[RejectedRow] = []
        self._seen: dict[str, tuple[int, Any]] = {}
        self._repeated_hour: tuple[datetime, bool] | None = None

    def reject(self, row: int, reason: str) -> None:
        self.rejected.append(RejectedRow(row, reason))

    def skip(self, row: int, reason: str) -> None:
        self.skipped.append(RejectedRow(row, reason))

    def _second_pass_of_repeated_hour(self, stamp: AnyStamp, ambiguous: bool) -> AnyStamp:
        """When daylight-saving time ends, local times of one hour occur twice. Rows come
        in file order: inside that hour, a local time earlier than the previous one means
        the clock went back, and the rest of the hour is its second pass (fold=1)."""
        if not ambiguous:
            self._repeated_hour = None
            return stamp
        local = stamp.naive()
        folded = False
        if self._repeated_hour is not None:
            previous, folded = self._repeated_hour
            folded = folded or local < previous
        self._repeated_hour = (local, folded)
        return stamp.second_pass() if folded else stamp

    def add(
        self, row: int, stamp: AnyStamp, template: ReadingTemplate, value: dict[str, Any]
    ) -> None:
        """Keep a reading unless the same one (same identifier) came earlier in the file."""
        hour = stamp.zone_hour
        if hour is not None:
            if hour.ambiguous or self._repeated_hour is not None:
                stamp = self._second_pass_of_repeated_hour(stamp, hour.ambiguous)
        elif stamp.moment is not None and not stamp.explicit_offset:
            moment = stamp.moment
            ambiguous = moment.replace(fold=1).utcoffset() != moment.utcoffset()
            stamp = self._second_pass_of_repeated_hour(stamp, ambiguous)
        key = stamp.key()
        identifier = template.id_prefix + key + template.id_suffix
        earlier = self._seen.get(identifier)
        if earlier is not None:
            first_row, first_value = earlier
            if first_value == value:
                self.skip(row, f"duplicate of row {first_row}")
            else:
                self.reject(row, f"same time and code as row {first_row} but a different value")
            return
        self._seen[identifier] = (row, value)
        self.readings.append((row, stamp, template, value, identifier, key))

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
        references: dict[ReadingTemplate, tuple[str, str | None]] = {}
        for _, _, template, _, _, _ in self.readings:
            if template not in references:
                subject = subject_ref(template.subject)
                device = device_ref(template.device, subject) if template.device else None
                references[template] = (subject, device)
        create = builder.create
        builders: dict[ReadingTemplate, ObservationBuilder] = {}
        for _, stamp, template, value, identifier, key in self.readings:
            subject, device = references[template]
            build = builders.get(template)
            if build is None:
                build = builders[template] = observation_builder(
                    make_code=template.make_code,
                    profile=template.profile,
                    category=template.category,
                    identifier_system=READING_SYSTEM,
                    note=template.note,
                )
            resource = build(identifier, subject, stamp.fhir(), value, device)
            create(resource, template.query_prefix + key + template.query_suffix)
        return CsvMappingResult(
            bundle=builder.bundle(),
            rows_read=rows_read,
            readings=len(self.readings),
            rejected=sorted(self.rejected, key=lambda r: r.row),
            format=format_name,
            skipped=sorted(self.skipped, key=lambda r: r.row),
            warnings=warnings,
        )
