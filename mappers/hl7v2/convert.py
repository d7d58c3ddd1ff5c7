"""One HL7 v2 message to one FHIR transaction Bundle.

The message is walked segment by segment instead of through the message structures of
each version: the same walk serves ADT, ORU, ORM/OML/OUL and VXU of 2.2 to 2.8, and a
segment out of place costs nothing worse than a lost link. Unknown and Z segments are
ignored (they carry site-specific meaning we cannot map); they never fail a message.

What the walk leaves aside is reported, never dropped silently: each segment id that no
mapper stores (insurance, guarantor, procedures, Z segments...) and each mapped segment
that yields nothing (a PV1 without a visit number) becomes a `MappingWarning`, which the
ACK carries as an ERR of severity W beside its AA.

Write semantics (idempotence):
- ADT: Patient, Encounter, RelatedPerson, Condition, AllergyIntolerance are conditional
  updates (`PUT Type?identifier=...`), so A08/A31 update the Patient of A01/A04/A28.
- other messages: the Patient and Encounter are conditional creates (a lab must not
  overwrite the registration data of the hospital), while the results they carry
  (DiagnosticReport, Observation, Specimen, Immunization) are conditional updates, so that
  a corrected or final result replaces the preliminary one.
- ADT^A40 (merge): the surviving Patient (PID) is written as for A08, and each MRG becomes
  a `PatientMerge` in the result: applying it needs the store (the prior Patient's id and
  the resources that point to it), so the server does it in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

from mappers.hl7v2.clinical import map_allergy, map_condition
from mappers.hl7v2.context import MappingContext
from mappers.hl7v2.datatypes import resolve_timezone
from mappers.hl7v2.encounter import map_encounter
from mappers.hl7v2.errors import MappingCancelled, MappingError, MappingWarning
from mappers.hl7v2.header import map_message_header
from mappers.hl7v2.immunization import map_immunization
from mappers.hl7v2.parser import Message, Segment, parse
from mappers.hl7v2.patient import map_patient, map_related_person, patient_identifiers
from mappers.hl7v2.results import (
    OrderGroup,
    add_note,
    close_report,
    map_observation,
    map_report,
    map_specimen,
    note_text,
    order_group,
)
from mappers.hl7v2.values import attachment

SUPPORTED_TYPES = ("ADT", "ORU", "ORM", "OML", "OUL", "VXU")
# Message types whose OBR is a result report (elsewhere it is an order: no report).
_REPORTING_TYPES = ("ORU", "OUL")
# ADT events whose meaning is not "here is the current state of this patient / visit":
# deletions, links and merges other than A40. Mapping them as updates would write the
# opposite of what the sender meant, so they are refused (AR, unsupported event).
_UNSUPPORTED_ADT_EVENTS = frozenset({
    "A18", "A23", "A24", "A29", "A30", "A32", "A33", "A34", "A35", "A36", "A37", "A39", "A41",
    "A42", "A43", "A44", "A45", "A46", "A47", "A48", "A49", "A50", "A51",
})
_MERGE_EVENT = "A40"
_CANCEL_CHECK_EVERY = 64
# Segments with nothing to store: the envelope, software and credentials. (EVN's times are
# those of the message, not of care.)
_ENVELOPE = frozenset({"MSH", "EVN", "SFT", "UAC", "DSC"})
# Segments that are read as part of another one (PD1 with PID, RXR with RXA, ORC with OBR
# or RXA); a segment id with a handler below is mapped too.
_READ_WITH_OTHERS = frozenset({"PD1", "RXR", "ORC"})


@dataclass(frozen=True)
class PatientMerge:
    """An ADT^A40 MRG: the Patient matched by `survivor` replaces the one(s) matched by any
    of `prior` (MRG-1, scoped like PID-3). Applied by the store, see `convert`'s docstring."""

    survivor: dict
    prior: tuple[dict, ...]


@dataclass
class MappedMessage:
    """One message mapped: its transaction Bundle, what was left aside, and any merges."""

    bundle: dict[str, Any]
    warnings: list[MappingWarning] = field(default_factory=list)
    merges: list[PatientMerge] = field(default_factory=list)


def to_bundle(
    message: str | bytes,
    *,
    timezone: str | tzinfo | None = None,
    message_header: bool = False,
) -> dict[str, Any]:
    """Map one message to a transaction Bundle; raises MappingError for unmappable input.

    `timezone` is the sender's zone for times sent without an offset (default UTC).
    `message_header` adds a MessageHeader entry (an unconditional create: one per receipt).
    The Bundle alone: `map_message` also says what was not mapped, and carries merges.
    """
    return map_message(message, timezone=timezone, message_header=message_header).bundle


def map_message(
    message: str | bytes | Message,
    *,
    timezone: str | tzinfo | None = None,
    message_header: bool = False,
    cancelled: Callable[[], bool] | None = None,
) -> MappedMessage:
    """Map one message; raises MappingError for unmappable input (see `to_bundle`).

    `cancelled()` is asked every few dozen segments: when it says True the mapping stops
    with MappingCancelled (a 15 MB message takes a minute to map; a sender that hung up
    will send it again, so that minute is better spent on others)."""
    try:
        parsed = message if isinstance(message, Message) else parse(message, cancelled)
        return _map(parsed, resolve_timezone(timezone), message_header, cancelled)
    except MappingError:
        raise
    except (ValueError, LookupError, TypeError, AttributeError, IndexError) as error:
        # Mapping code assumes shapes real feeds sometimes break; the caller needs a clean
        # rejection (an AE ACK), not a stack trace.
        raise MappingError(f"cannot map message: {error}") from error


def _map(
    message: Message, tz: tzinfo, with_header: bool, cancelled: Callable[[], bool] | None
) -> MappedMessage:
    message_type = message.message_type
    if message_type not in SUPPORTED_TYPES:
        raise MappingError(
            f"unsupported message type {message_type or '(empty)'}", segment="MSH", field=9
        )
    ctx = MappingContext(message=message, tz=tz)
    is_adt = message_type == "ADT"
    if is_adt and message.trigger_event in _UNSUPPORTED_ADT_EVENTS:
        raise MappingError(
            f"unsupported event ADT^{message.trigger_event} (deletions, links and merges "
            f"other than A40 are not applied)", segment="MSH", field=9, condition="201",
        )
    if is_adt and message.first("PID") is None:
        raise MappingError("ADT message without a PID segment", segment="PID")
    if with_header:
        ctx.builder.create(map_message_header(ctx))
    walker = _Walker(ctx, is_adt=is_adt, reports=message_type in _REPORTING_TYPES)
    for number, segment in enumerate(message.segments[1:], start=1):
        if cancelled is not None and number % _CANCEL_CHECK_EVERY == 0 and cancelled():
            raise MappingCancelled("mapping cancelled")
        walker.visit(segment)
    walker.close_group()
    if is_adt and message.trigger_event == _MERGE_EVENT and not walker.merges:
        raise MappingError("ADT^A40 without an MRG segment naming the prior patient",
                           segment="MRG", field=1)
    warnings = [MappingWarning("", text) for text in message.warnings]
    warnings += walker.warnings()
    return MappedMessage(ctx.builder.bundle(), warnings, walker.merges)


class _Walker:
    """State of the segment walk: current patient, order group and last resource."""

    def __init__(self, ctx: MappingContext, *, is_adt: bool, reports: bool):
        self.ctx = ctx
        self.is_adt = is_adt
        self.reports = reports
        self.group: OrderGroup | None = None
        self.pending_orc: Segment | None = None
        self.last_resource: dict | None = None  # where the next NTE belongs
        self.written: dict[str, str] = {}  # business key -> fullUrl
        self.specimens: dict[str, str] = {}
        self.merges: list[PatientMerge] = []
        self.patient_key: dict | None = None  # the current PID's business identifier
        # segment id -> (first segment left aside, how many, why)
        self._left: dict[str, list[Any]] = {}

    def visit(self, segment: Segment) -> None:
        handler = getattr(self, f"_on_{segment.name.lower()}", None)
        if handler is not None:
            handler(segment)
        elif segment.name not in _ENVELOPE and segment.name not in _READ_WITH_OTHERS:
            self.leave(segment, f"{segment.name} segment not mapped: its content is not stored")

    def leave(self, segment: Segment, why: str) -> None:
        """Record that `segment` is accepted but its content is not stored."""
        left = self._left.get(segment.name)
        if left is None:
            self._left[segment.name] = [segment, 1, why]
        else:
            left[1] += 1

    def warnings(self) -> list[MappingWarning]:
        found = []
        for name, (segment, count, why) in self._left.items():
            sequence = sum(1 for s in self.ctx.message.segments[: segment.index]
                           if s.name == name)
            text = why if count == 1 else f"{why} ({count} segments)"
            found.append(MappingWarning(name, text, sequence=sequence, count=count))
        return found

    def _write(self, resource: dict, key: dict, upsert: bool) -> str:
        """Add an entry, or return the one already made for this business key.

        A second PV1, NK1, DG1 or AL1 naming the same visit, person, diagnosis or allergen
        is the same resource: one transaction entry must not be written twice.
        """
        seen = f"{resource['resourceType']}|{key.get('system')}|{key['value']}"
        if seen in self.written:
            return self.written[seen]
        write = self.ctx.upsert if upsert else self.ctx.create_if_none
        self.written[seen] = ref = write(resource, key)
        return ref

    def _on_pid(self, pid: Segment) -> None:
        self.close_group()
        ctx = self.ctx
        pd1 = _following(ctx.message, pid, "PD1")
        patient, key = map_patient(pid, pd1, ctx)
        self.patient_key = key
        ctx.patient_key = key["value"]
        ctx.encounter_ref = None
        ctx.encounter_key = None
        ctx.patient_ref = self._write(patient, key, upsert=self.is_adt)
        self.last_resource = None

    def _on_nk1(self, nk1: Segment) -> None:
        mapped = map_related_person(nk1, self.ctx)
        if mapped:
            self._write(*mapped, upsert=self.is_adt)
        else:
            self.leave(nk1, "NK1 without a name, relationship or identifier: not stored")

    def _on_pv1(self, pv1: Segment) -> None:
        mapped = map_encounter(pv1, self.ctx)
        if mapped:
            self.ctx.encounter_ref = self._write(*mapped, upsert=self.is_adt)
            self.ctx.encounter_key = {k: v for k, v in mapped[1].items() if k != "type"}
        elif any(pv1.field(n) for n in range(3, len(pv1.fields))):
            # A PV1 holding only a set id and a patient class is a placeholder: no loss.
            self.leave(pv1, "PV1 without a visit number (PV1-19): no Encounter stored")

    def _on_dg1(self, dg1: Segment) -> None:
        mapped = map_condition(dg1, self.ctx)
        if mapped:
            self._write(*mapped, upsert=True)
        else:
            self.leave(dg1, "DG1 without a diagnosis code or patient: not stored")

    def _on_al1(self, al1: Segment) -> None:
        mapped = map_allergy(al1, self.ctx)
        if mapped:
            self._write(*mapped, upsert=True)
        else:
            self.leave(al1, "AL1 without an allergen code or patient: not stored")

    def _on_mrg(self, mrg: Segment) -> None:
        message = self.ctx.message
        if message.message_type != "ADT" or message.trigger_event != _MERGE_EVENT:
            self.leave(mrg, "MRG outside an ADT^A40 merge: not applied")
            return
        if self.patient_key is None:
            raise MappingError("MRG before any PID: which patient survives?", segment="MRG")
        prior_segment = Segment("PID", ["PID", "", "", mrg.field(1), mrg.field(4)],
                                mrg.delims, mrg.index)
        prior = tuple(patient_identifiers(prior_segment, self.ctx))
        if not prior:
            raise MappingError("MRG without a prior patient identifier", segment="MRG",
                               field=1)
        self.merges.append(PatientMerge(survivor=dict(self.patient_key), prior=prior))

    def _on_rxa(self, rxa: Segment) -> None:
        self.close_group()
        ctx = self.ctx
        orc = self.pending_orc
        self.pending_orc = None
        rxr = _following(ctx.message, rxa, "RXR")
        immunization, key = map_immunization(rxa, rxr, orc, ctx)
        ref = ctx.upsert(immunization, key)
        # The order group's OBXs are about this administration (IG: Observation.partOf).
        group = OrderGroup(obr=None, orc=orc, filler=key, key_type="")
        group.part_of = ref
        group.effective = immunization["occurrenceDateTime"]
        self.group = group
        self.last_resource = None

    def _on_orc(self, orc: Segment) -> None:
        self.close_group()
        self.pending_orc = orc

    def _on_obr(self, obr: Segment) -> None:
        self.close_group()
        group = order_group(obr, self.pending_orc, self.ctx)
        self.pending_orc = None
        if self.reports:
            report = map_report(group, self.ctx)
            group.report = report
            ident = report["identifier"][0] if report["identifier"] else group.filler
            if ident:
                self.ctx.upsert(report, {k: v for k, v in ident.items() if k != "type"})
        self.group = group
        self.last_resource = None

    def _on_obx(self, obx: Segment) -> None:
        group = self.group
        if group is not None:
            group.obx_count += 1
        if obx.text(2).upper() == "ED" and group is not None and group.report is not None:
            form = attachment(obx)
            if form:
                group.report.setdefault("presentedForm", []).append(form)
            return
        observation, key = map_observation(obx, group, self.ctx)
        if group is not None and group.part_of:
            observation.pop("category", None)  # not a laboratory result
            observation["partOf"] = [{"reference": group.part_of}]
            if "effectiveDateTime" not in observation and group.effective:
                observation["effectiveDateTime"] = group.effective
        ref = self.ctx.upsert(observation, key)
        if group is not None:
            group.result_refs.append({"reference": ref})
        self.last_resource = observation

    def _on_nte(self, nte: Segment) -> None:
        text = note_text(nte)
        if self.last_resource is not None:
            add_note(self.last_resource, text)
        elif self.group is not None and self.group.report is not None and text:
            self.group.notes.append(text)
        elif text:
            self.leave(nte, "NTE with no result or report to attach it to: not stored")

    def _on_spm(self, spm: Segment) -> None:
        specimen, key = map_specimen(spm, self.group, self.ctx)
        seen = f"{key.get('system')}|{key['value']}"
        if seen in self.specimens:  # the same specimen under two OBRs: one entry
            ref = self.specimens[seen]
        else:
            ref = self.specimens[seen] = self.ctx.upsert(specimen, key)
        if self.group is not None:
            self.group.specimen_refs.append({"reference": ref})
            # OBXs before the SPM in this group were about this specimen too.
            for entry in self.ctx.builder.entries:
                resource = entry["resource"]
                if (resource["resourceType"] == "Observation"
                        and {"reference": entry["fullUrl"]} in self.group.result_refs
                        and "specimen" not in resource):
                    resource["specimen"] = {"reference": ref}
        self.last_resource = None

    def close_group(self) -> None:
        if self.group is not None:
            close_report(self.group)
        self.group = None


def _following(message: Message, segment: Segment, name: str) -> Segment | None:
    """The segment `name` right after `segment` (PD1 after PID), if there is one."""
    position = segment.index  # 1-based index among the kept segments
    segments = message.segments
    if position < len(segments) and segments[position].name == name:
        return segments[position]
    return None
