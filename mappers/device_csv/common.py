"""What every format shares: one mapped reading, and the assembly of readings into a Bundle.

A format reads its rows and calls `Collector.add / reject / skip`, a reading being its time,
its value and the `ReadingTemplate` of its kind (code, profile, subject, device), which the
format makes once per kind; the collector drops duplicates, creates the Device and Patient
entries once, and builds the transaction Bundle with a conditional create per Observation.
Logged treatments and events (insulin, carbohydrates, exercise, notes) go through
`Collector.add_event` with an `EventTemplate`; they follow the readings in the Bundle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from mappers.bundle import TransactionBuilder, identifier_query
from mappers.treatments import EVENT_IDENTIFIER_SYSTEM

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

# build(identifier, subject, effective, device reference, value) -> a resource
EventBuilder = Callable[[tuple[str, str], str, str, str | None, Any], dict[str, Any]]


@dataclass(frozen=True, eq=False)
class EventTemplate:
    """What the logged events of one kind share (a rapid-acting insulin dose, a meal...).

    `source` keys the identifiers (`{source}/{UTC key}/{code_key}/{kind}` in the
    device-event system) as readings are keyed; `device`, when given, is referenced by the
    resource (a pump that gave the insulin), not merely the export that listed it.
    """

    kind: str
    code_key: str
    subject: Subject
    build: EventBuilder
    source: DeviceInfo | None = None
    device: DeviceInfo | None = None

    def identifier(self, key: str) -> str:
        source = self.source.source_key() if self.source is not None else patient_key(
            _subject_key(self.subject))
        return f"{source}/{key}/{safe_key(self.code_key)}/{self.kind}"


KeptEvent = tuple[int, AnyStamp, EventTemplate, Any, str]


class Collector:
    def __init__(self) -> None:
        self.readings: list[Kept] = []
        self.events: list[KeptEvent] = []
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

    def _in_file_order(self, stamp: AnyStamp) -> AnyStamp:
        """The stamp, on the second pass of a repeated hour when the file order says so."""
        hour = stamp.zone_hour
        if hour is not None:
            if hour.ambiguous or self._repeated_hour is not None:
                stamp = self._second_pass_of_repeated_hour(stamp, hour.ambiguous)
        elif stamp.moment is not None and not stamp.explicit_offset:
            moment = stamp.moment
            ambiguous = moment.replace(fold=1).utcoffset() != moment.utcoffset()
            stamp = self._second_pass_of_repeated_hour(stamp, ambiguous)
        return stamp

    def _first(self, row: int, identifier: str, value: Any) -> bool:
        """True for the first row with `identifier`; a later one is a duplicate (skipped)
        or a conflict (rejected)."""
        earlier = self._seen.get(identifier)
        if earlier is None:
            self._seen[identifier] = (row, value)
            return True
        first_row, first_value = earlier
        if first_value == value:
            self.skip(row, f"duplicate of row {first_row}")
        else:
            self.reject(row, f"same time and code as row {first_row} but a different value")
        return False

    def add(
        self, row: int, stamp: AnyStamp, template: ReadingTemplate, value: dict[str, Any]
    ) -> None:
        """Keep a reading unless the same one (same identifier) came earlier in the file."""
        stamp = self._in_file_order(stamp)
        key = stamp.key()
        identifier = template.id_prefix + key + template.id_suffix
        if self._first(row, identifier, value):
            self.readings.append((row, stamp, template, value, identifier, key))

    def add_event(self, row: int, stamp: AnyStamp, template: EventTemplate, value: Any) -> None:
        """Keep a logged treatment or event unless the same one came earlier in the file."""
        stamp = self._in_file_order(stamp)
        identifier = template.identifier(stamp.key())
        if self._first(row, identifier, value):
            self.events.append((row, stamp, template, value, identifier))

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
        references: dict[ReadingTemplate | EventTemplate, tuple[str, str | None]] = {}
        for template in [r[2] for r in self.readings] + [e[2] for e in self.events]:
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
        for _, stamp, event_template, value, identifier in self.events:
            subject, device = references[event_template]
            resource = event_template.build((EVENT_IDENTIFIER_SYSTEM, identifier), subject,
                                            stamp.fhir(), device, value)
            create(resource, identifier_query(EVENT_IDENTIFIER_SYSTEM, identifier))
        return CsvMappingResult(
            bundle=builder.bundle(),
            rows_read=rows_read,
            readings=len(self.readings),
            events=len(self.events),
            rejected=sorted(self.rejected, key=lambda r: r.row),
            format=format_name,
            skipped=sorted(self.skipped, key=lambda r: r.row),
            warnings=warnings,
        )
