"""Which subscriptions a write is an event for, decided on the write's own index entries
(the rows the storage is about to store), in memory, inside the write transaction.

Subscriptions are grouped by resource type and, when they name one patient, by that
patient: a CGM reading of one patient looks at the subscriptions of that patient and at
those that name none, whatever the number of subscriptions on others.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fhir_server.clinical.glucose import reading_from
from fhir_server.model import jsonio
from fhir_server.search.errors import SearchError
from fhir_server.search.memory_match import clause_matches
from fhir_server.search.query import Clause
from fhir_server.search.types import IndexEntry, ReferenceEntry
from fhir_server.subscriptions.spec import SubscriptionSpec
from fhir_server.subscriptions.topics import is_cgm

LIVE_STATUSES = frozenset({"requested", "active", "error"})  # events kept; "off" ends them
PATIENT_PARAMS = ("patient", "subject")


@dataclass(frozen=True, slots=True)
class Write:
    resource_type: str
    id: str
    version: int
    last_updated: float
    json: bytes
    index: Sequence[IndexEntry]
    created: bool


@dataclass(frozen=True, slots=True)
class Event:
    subscription: str
    focus_type: str
    focus_id: str
    focus_version: int | None
    at: float


class EpisodeState:
    """Per (subscription, patient) state of the stateful topics, read and written in the
    write transaction: (since, fired) — the start of a high episode, or the time of the
    last CGM reading, and whether it has fired."""

    def get(self, subscription: str, patient: str) -> tuple[float, bool] | None: ...

    def put(self, subscription: str, patient: str, since: float | None, fired: bool) -> None: ...


def patient_of(entries: Iterable[IndexEntry]) -> str | None:
    for entry in entries:
        if (
            type(entry) is ReferenceEntry
            and entry.param in PATIENT_PARAMS
            and entry.target_type == "Patient"
        ):
            return entry.target_id
    return None


class Matcher:
    def __init__(
        self, specs: Iterable[SubscriptionSpec], pid_codes: Callable[[str, str], tuple[str, ...]]
    ) -> None:
        self.specs = {s.id: s for s in specs if s.status in LIVE_STATUSES}
        self._pid_codes = pid_codes
        self._by_patient: dict[str, dict[str, list[SubscriptionSpec]]] = defaultdict(
            lambda: defaultdict(list)
        )
        self._anyone: dict[str, list[SubscriptionSpec]] = defaultdict(list)
        for spec in self.specs.values():
            if spec.patient is not None:
                self._by_patient[spec.resource_type][spec.patient].append(spec)
            else:
                self._anyone[spec.resource_type].append(spec)

    def __bool__(self) -> bool:
        return bool(self.specs)

    def timers(self) -> list[SubscriptionSpec]:
        return [s for s in self.specs.values() if s.topic is not None and s.topic.kind == "timer"]

    def match(
        self,
        write: Write,
        members: Callable[[str], frozenset[str]],
        state: EpisodeState,
        now: float,
    ) -> list[Event]:
        rtype = write.resource_type
        by_patient = self._by_patient.get(rtype)
        anyone = self._anyone.get(rtype, ())
        if not by_patient and not anyone:
            return []
        patient = patient_of(write.index)
        candidates = list(anyone)
        if by_patient and patient is not None:
            candidates += by_patient.get(patient, ())
        events = []
        resource: dict[str, Any] | None = None
        for spec in candidates:
            if spec.group is not None and (patient is None or patient not in members(spec.group)):
                continue
            if not all(self._clause(c, write) for c in spec.clauses):
                continue
            topic = spec.topic
            if topic is None:  # R4 criteria: a create or an update that matches
                events.append(Event(spec.id, rtype, write.id, write.version, write.last_updated))
                continue
            if resource is None:
                resource = jsonio.loads(write.json)
            if topic.kind == "timer":
                if patient is not None and is_cgm(resource):
                    state.put(spec.id, patient, now, False)  # re-armed by every reading
                continue
            if ("create" if write.created else "update") not in topic.interactions:
                continue
            if topic.kind == "episode":
                if patient is not None and self._episode_ends(spec, patient, resource, state):
                    events.append(Event(spec.id, rtype, write.id, write.version,
                                        write.last_updated))
                continue
            if topic.trigger is not None and topic.trigger(resource, spec.params):
                events.append(Event(spec.id, rtype, write.id, write.version, write.last_updated))
        return events

    @staticmethod
    def _episode_ends(
        spec: SubscriptionSpec, patient: str, resource: dict[str, Any], state: EpisodeState
    ) -> bool:
        """Prolonged hyperglycaemia: True at the reading that makes the episode long
        enough (once per episode)."""
        reading = reading_from(resource)
        if reading is None:
            return False
        if not spec.params["threshold"].above(reading.value, reading.unit):
            state.put(spec.id, patient, None, False)
            return False
        current = state.get(spec.id, patient)
        if current is None or current[0] is None:
            state.put(spec.id, patient, reading.at, False)
            return False
        since, fired = current
        if not fired and reading.at - since >= spec.params["duration"]:
            state.put(spec.id, patient, since, True)
            return True
        return False

    def _clause(self, clause: Clause, write: Write) -> bool:
        code = clause.param.code
        if code == "_id":
            return any(getattr(v, "code", None) == write.id for v in clause.values)
        codes = self._pid_codes(write.resource_type, code)
        entries = write.index
        if len(codes) > 1:  # rows shared with other parameters (combo-*): theirs count too
            entries = [e._replace(param=code) if e[0] in codes else e for e in entries]
        try:
            return clause_matches(clause, entries, write.last_updated)
        except SearchError:
            return False
