"""AuditEvent resources shaped after the IHE Basic Audit Log Patterns (BALP).

One event per interaction: who (the client application, the user, the network address),
what (the FHIR interaction as `subtype`, the action C/R/U/D/E, the outcome), which patients
(one `entity` with the patient role per patient whose data was read or written), the query
as it was received (base64 in `entity.query`, as BALP asks: it may hold identifiers, which
is one reason the audit store is itself protected), and when.

Where BALP and cost disagree this module keeps to cost, and says so: a search touching
several patients gives one event listing them all (BALP: one event per patient); the
number of resources returned or written is recorded in the query entity's `detail`.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fhir_server.storage.base import instant

EVENT_TYPE = {
    "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
    "code": "rest",
    "display": "RESTful Operation",
}
INTERACTION_SYSTEM = "http://hl7.org/fhir/restful-interaction"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
NETWORK_TYPE = "http://hl7.org/fhir/network-type"
# Identifier systems of the agents (OAuth client ids, user `sub`s, de-identification
# recipients, HL7 v2 sending applications).
CLIENT_SYSTEM = "https://diatabase.org/fhir/sid/oauth-client"
USER_SYSTEM = "https://diatabase.org/fhir/sid/user"
RECIPIENT_SYSTEM = "https://diatabase.org/fhir/sid/deid-recipient"
HL7_APPLICATION_SYSTEM = "https://diatabase.org/fhir/sid/hl7v2-application"

# AuditEvent.outcome: 0 success, 4 minor failure (the request was refused: 4xx), 8 serious
# failure (the server failed: 5xx).
SUCCESS, REFUSED, FAILED = "0", "4", "8"
# The interactions of the restful-interaction code system, and the action each one is.
# Searches, type/system history, operations and Bundles are E (execute) as in BALP's Query.
ACTIONS = {
    "read": "R",
    "vread": "R",
    "history-instance": "R",
    "search": "E",
    "search-type": "E",
    "search-system": "E",
    "history-type": "E",
    "history-system": "E",
    "operation": "E",
    "transaction": "E",
    "batch": "E",
    "create": "C",
    "update": "U",
    "patch": "U",
    "delete": "D",
}
# Above this many resources written in one interaction, the event lists patients and counts
# per type rather than every resource (a device batch of thousands would be all entities).
MAX_DATA_ENTITIES = 50


def outcome_of(status: int) -> str:
    if status < 400:
        return SUCCESS
    return REFUSED if status < 500 else FAILED


@dataclass(frozen=True, slots=True)
class Agent:
    """Who acted: the client application (`client_id`, its `client_system` saying what kind
    of id it is), the user (`user`, the token's `sub`), the network address, and a display
    for agents without an id (an unauthenticated client, the command line)."""

    client_id: str | None = None
    user: str | None = None
    address: str | None = None
    display: str | None = None
    client_system: str = CLIENT_SYSTEM


@dataclass(frozen=True, slots=True)
class EventFacts:
    """Everything an event records, gathered while the interaction ran."""

    agent: Agent
    interaction: str
    action: str
    outcome: str
    recorded: float
    request: str | None  # the request as received: "GET /Observation?patient=123"
    patients: tuple[str, ...]
    data: tuple[str, ...] = ()  # "Observation/1": the resources an interaction is about
    counts: tuple[tuple[str, str], ...] = ()  # (detail type, value), e.g. resources-returned
    outcome_text: str | None = None
    server: str = "Diatabase"
    door: str = "rest"  # rest, deid, mllp, cli, server


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return coding


# The constant parts of every event, made once (serialised as shared objects, never changed).
CLIENT_TYPE = {"coding": [_coding(DCM, "110153", "Source Role ID")]}
SERVER_TYPE = {"coding": [_coding(DCM, "110152", "Destination Role ID")]}
USER_TYPES = {role: {"coding": [_coding(PARTICIPATION, role)]} for role in ("AUT", "IRCP")}
SYSTEM_OBJECT = _coding(ENTITY_TYPE, "2", "System Object")
PERSON = _coding(ENTITY_TYPE, "1", "Person")
QUERY_ROLE = _coding(OBJECT_ROLE, "24", "Query")
RESOURCE_ROLE = _coding(OBJECT_ROLE, "4", "Domain Resource")
PATIENT_ROLE = _coding(OBJECT_ROLE, "1", "Patient")
SOURCE_TYPE = [
    _coding("http://terminology.hl7.org/CodeSystem/security-source-type", "4", "Application Server")
]


def _who(system: str, value: str | None, display: str | None) -> dict[str, Any]:
    if not value:
        return {"display": display or "unidentified client"}
    who: dict[str, Any] = {"identifier": {"system": system, "value": value}}
    if display:
        who["display"] = display
    return who


def build_event(facts: EventFacts) -> dict[str, Any]:
    """The AuditEvent (without id and meta, which the store gives)."""
    agent = facts.agent
    client: dict[str, Any] = {
        "type": CLIENT_TYPE,
        "who": _who(agent.client_system, agent.client_id, agent.display),
        "requestor": agent.user is None,
    }
    if agent.address:
        client["network"] = {"address": agent.address, "type": "2"}
    agents = [client]
    if agent.user:
        # BALP: the information recipient for reads, the author for writes
        role = "AUT" if facts.action in ("C", "U", "D") else "IRCP"
        agents.append(
            {
                "type": USER_TYPES[role],
                "who": {"identifier": {"system": USER_SYSTEM, "value": agent.user}},
                "altId": agent.user,
                "requestor": True,
            }
        )
    agents.append({"type": SERVER_TYPE, "who": {"display": facts.server}, "requestor": False})
    entities: list[dict[str, Any]] = []
    query: dict[str, Any] = {"type": SYSTEM_OBJECT, "role": QUERY_ROLE}
    if facts.request is not None:
        query["query"] = base64.b64encode(facts.request.encode()).decode()
    if facts.counts:
        query["detail"] = [{"type": kind, "valueString": value} for kind, value in facts.counts]
    if len(query) > 2:
        entities.append(query)
    entities.extend(
        {"what": {"reference": reference}, "type": SYSTEM_OBJECT, "role": RESOURCE_ROLE}
        for reference in facts.data
    )
    entities.extend(
        {"what": {"reference": f"Patient/{patient}"}, "type": PERSON, "role": PATIENT_ROLE}
        for patient in facts.patients
    )
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": EVENT_TYPE,
        "subtype": [{"system": INTERACTION_SYSTEM, "code": facts.interaction}],
        "action": facts.action,
        "recorded": instant(facts.recorded),
        "outcome": facts.outcome,
    }
    if facts.outcome_text:
        event["outcomeDesc"] = facts.outcome_text
    event["agent"] = agents
    event["source"] = {
        "site": facts.door,
        "observer": {"display": facts.server},
        "type": SOURCE_TYPE,
    }
    if entities:
        event["entity"] = entities
    return event


@dataclass(frozen=True, slots=True)
class IndexedFields:
    """What the audit store indexes of an event (derived from its JSON, so that
    `audit verify` can check the index against the records)."""

    recorded: str
    action: str | None
    subtype: str | None
    outcome: str | None
    client: str | None
    user: str | None
    address: str | None
    door: str | None
    patients: tuple[str, ...]
    entities: tuple[str, ...]


def fields_of(facts: EventFacts, event: dict[str, Any]) -> IndexedFields:
    """What `indexed_fields` finds in `event`, made by `build_event(facts)`, known from the
    facts without reading it back (`audit verify` checks that the two agree)."""
    agent = facts.agent
    patients = facts.patients
    return IndexedFields(
        event["recorded"],
        facts.action,
        facts.interaction,
        facts.outcome,
        agent.client_id,
        agent.user,
        agent.address,
        facts.door,
        patients,
        facts.data,
    )


def indexed_fields(event: dict[str, Any]) -> IndexedFields:
    client = user = address = None
    for agent in event.get("agent", ()):
        identifier = (agent.get("who") or {}).get("identifier") or {}
        code = ((agent.get("type") or {}).get("coding") or [{}])[0].get("code")
        if code == "110153":
            client = identifier.get("value")
            address = (agent.get("network") or {}).get("address")
        elif code in ("IRCP", "AUT"):
            user = identifier.get("value")
    patients, entities = [], []
    for entity in event.get("entity", ()):
        reference = (entity.get("what") or {}).get("reference")
        if not reference:
            continue
        role = (entity.get("role") or {}).get("code")
        if role == "1" and reference.startswith("Patient/"):
            patients.append(reference.removeprefix("Patient/"))
        else:
            entities.append(reference)
    subtype = (event.get("subtype") or [{}])[0].get("code")
    return IndexedFields(
        event["recorded"],
        event.get("action"),
        subtype,
        event.get("outcome"),
        client,
        user,
        address,
        (event.get("source") or {}).get("site"),
        tuple(patients),
        tuple(entities),
    )


def sorted_unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(values)))
