"""A stored `Subscription` read into what matching and delivery need (`SubscriptionSpec`),
and the checks a Subscription must pass to be stored.

Two shapes are accepted:
- R4: `criteria` is a search (`Observation?code=http://loinc.org|4548-4&patient=Patient/1`);
  an event is a create or an update of a resource that then matches it;
- the Subscriptions backport IG (R5 topics on R4): `criteria` is a topic's canonical URL
  (topics.py), narrowed by the `backport-filter-criteria` extension on `_criteria`
  (`Observation?patient=Patient/1&threshold=3|http://unitsofmeasure.org|mmol/L`), with
  `backport-payload-content` (empty, id-only, full-resource) on `channel._payload`,
  `backport-heartbeat-period`, `backport-timeout` and `backport-max-count` on `channel`.

Channels: `rest-hook` (an `https` endpoint; `http` only to a loopback address when the
operator allows it in development) and `websocket`.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fhir_server.search.query import Clause, SearchError, parse_search
from fhir_server.subscriptions.topics import TOPICS, Topic

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
FILTER_CRITERIA = f"{BACKPORT}/backport-filter-criteria"
PAYLOAD_CONTENT = f"{BACKPORT}/backport-payload-content"
HEARTBEAT_PERIOD = f"{BACKPORT}/backport-heartbeat-period"
TIMEOUT = f"{BACKPORT}/backport-timeout"
MAX_COUNT = f"{BACKPORT}/backport-max-count"
BACKPORT_PROFILE = f"{BACKPORT}/backport-subscription"
# The per-subscription secret of signed notifications (notify.py): given by the client, or
# made by the server when the subscription is activated.
SECRET_EXTENSION = "http://diatabase.org/fhir/StructureDefinition/subscription-secret"
CHANNELS = ("rest-hook", "websocket")
CONTENTS = ("empty", "id-only", "full-resource")
PAYLOADS = ("application/fhir+json", "application/json")
# Filter parameters every topic takes (whose data): matched by matcher.py, not by search.
WHO_PARAMS = ("patient", "group")
MAX_HEADERS = 10
DEFAULT_TIMEOUT = 10.0


class SubscriptionError(ValueError):
    """A Subscription this server cannot serve; `expression` says where."""

    def __init__(self, message: str, expression: str) -> None:
        super().__init__(message)
        self.expression = expression


@dataclass(frozen=True)
class SubscriptionSpec:
    id: str
    version: int
    status: str  # requested | active | error | off
    channel: str
    endpoint: str
    headers: tuple[tuple[str, str], ...]
    payload: str | None  # a MIME type, or None: notifications without a body
    content: str  # empty | id-only | full-resource
    topic: Topic | None  # None: an R4 criteria subscription
    resource_type: str
    clauses: tuple[Clause, ...]  # search criteria, ANDed
    patient: str | None  # `patient=Patient/x`: whose data (also a fast match key)
    group: str | None  # `group=Group/x`: data of the group's members
    params: dict[str, Any] = field(default_factory=dict)  # the topic's parameters
    secret: str = ""
    heartbeat: float | None = None  # seconds
    timeout: float = DEFAULT_TIMEOUT
    criteria: str = ""  # as written, for the status Bundle
    end: float | None = None  # Subscription.end (epoch seconds): set `off` once passed

    @property
    def backport(self) -> bool:
        return self.topic is not None

    @property
    def topic_url(self) -> str:
        return self.topic.url if self.topic is not None else self.criteria


def _extension(element: Any, url: str) -> Any:
    for ext in (element or {}).get("extension") or ():
        if isinstance(ext, dict) and ext.get("url") == url:
            for key, value in ext.items():
                if key.startswith("value"):
                    return value
    return None


def endpoint_allowed(endpoint: str, http_loopback: bool) -> bool:
    """`https`, or `http` to a loopback address when the operator allows it."""
    parts = urlsplit(endpoint)
    if not parts.hostname:
        return False
    if parts.scheme == "https":
        return True
    if parts.scheme != "http" or not http_loopback:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def read_spec(
    resource: dict[str, Any], registry: Any, http_loopback: bool, version: int = 0
) -> SubscriptionSpec:
    """The spec of a Subscription, or SubscriptionError saying what is wrong with it."""
    criteria = resource.get("criteria")
    if not isinstance(criteria, str) or not criteria:
        raise SubscriptionError("Subscription.criteria is required", "Subscription.criteria")
    channel = resource.get("channel") or {}
    kind = channel.get("type")
    if kind not in CHANNELS:
        raise SubscriptionError(
            f"channel.type must be one of {', '.join(CHANNELS)} on this server, not {kind!r}",
            "Subscription.channel.type",
        )
    endpoint = channel.get("endpoint") or ""
    if kind == "rest-hook" and not endpoint_allowed(endpoint, http_loopback):
        raise SubscriptionError(
            "channel.endpoint must be an https URL"
            + (" (or http to a loopback address)" if http_loopback else ""),
            "Subscription.channel.endpoint",
        )
    headers = []
    for i, line in enumerate(channel.get("header") or ()):
        name, sep, value = str(line).partition(":")
        if not sep or not name.strip() or "\n" in line or "\r" in line or i >= MAX_HEADERS:
            raise SubscriptionError(
                f"channel.header takes up to {MAX_HEADERS} lines 'Name: value'",
                f"Subscription.channel.header[{i}]",
            )
        headers.append((name.strip(), value.strip()))
    payload = channel.get("payload") or None
    if payload is not None and payload not in PAYLOADS:
        raise SubscriptionError(
            f"channel.payload must be one of {', '.join(PAYLOADS)} or absent",
            "Subscription.channel.payload",
        )
    topic = TOPICS.get(criteria)
    content = _extension(channel.get("_payload"), PAYLOAD_CONTENT)
    if content is None:
        content = "id-only" if topic is not None and payload else "empty"
        if topic is None and payload:
            content = "full-resource"
    if content not in CONTENTS or (payload is None and content != "empty"):
        raise SubscriptionError(
            f"payload content must be one of {', '.join(CONTENTS)} (empty without a payload)",
            "Subscription.channel.payload",
        )
    if topic is None and "?" not in criteria:
        raise SubscriptionError(
            f"criteria {criteria!r} is neither a search (Type?params) nor a topic this server "
            f"knows ({', '.join(TOPICS)})",
            "Subscription.criteria",
        )
    if topic is not None:
        search = _extension(resource.get("_criteria"), FILTER_CRITERIA)
        if search is None:
            if not topic.resource_types or topic.needs_patient:
                raise SubscriptionError(
                    f"the topic {topic.url} needs filter criteria ({FILTER_CRITERIA}), e.g. "
                    "Observation?patient=Patient/123",
                    "Subscription.criteria",
                )
            search = f"{topic.resource_types[0]}?"
    else:
        search = criteria
    rtype, _, query = str(search).partition("?")
    items = parse_qsl(query, keep_blank_values=True)
    if topic is not None and topic.resource_types and rtype not in topic.resource_types:
        raise SubscriptionError(
            f"the topic {topic.url} is about {', '.join(topic.resource_types)}, not {rtype}",
            "Subscription.criteria",
        )
    params: dict[str, Any] = {}
    who: dict[str, str] = {}
    search_items = []
    for name, value in items:
        if topic is not None and name in topic.parameters:
            try:
                params[name] = topic.parameters[name][0](value)
            except ValueError as exc:
                raise SubscriptionError(f"filter {name}: {exc}", "Subscription.criteria") from None
        elif topic is not None and name in WHO_PARAMS:
            who[name] = value
        else:
            search_items.append((name, value))
    if topic is not None:
        for name, (_, default) in topic.parameters.items():
            params.setdefault(name, default)
    patient = who.get("patient")
    clauses: tuple[Clause, ...] = ()
    try:
        parsed = parse_search(rtype, search_items, registry, strict=True)
    except SearchError as exc:
        raise SubscriptionError(f"criteria: {exc}", "Subscription.criteria") from None
    if parsed.result.self_link_items():
        raise SubscriptionError(
            "criteria select resources: result parameters (_count, _sort, ...) have no "
            "meaning there", "Subscription.criteria",
        )
    for clause in parsed.clauses:
        if not isinstance(clause, Clause):
            raise SubscriptionError(
                "criteria may not chain (a.b=), use _has or compartments",
                "Subscription.criteria",
            )
    clauses = parsed.clauses  # type: ignore[assignment]
    if patient is None:
        patient = _patient_of(clauses)
    elif not patient.startswith("Patient/"):
        raise SubscriptionError("filter patient must be Patient/id", "Subscription.criteria")
    group = who.get("group")
    if group is not None and not group.startswith("Group/"):
        raise SubscriptionError("filter group must be Group/id", "Subscription.criteria")
    if topic is not None and topic.needs_patient and patient is None and group is None:
        raise SubscriptionError(
            f"the topic {topic.url} watches patients: give patient=Patient/x or group=Group/x",
            "Subscription.criteria",
        )
    end = None
    if resource.get("end"):
        try:
            end = datetime.fromisoformat(str(resource["end"]).replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise SubscriptionError("end must be an instant", "Subscription.end") from None
    heartbeat = _extension(channel, HEARTBEAT_PERIOD)
    timeout = _extension(channel, TIMEOUT)
    return SubscriptionSpec(
        id=str(resource.get("id") or ""),
        version=version,
        status=str(resource.get("status") or ""),
        channel=kind,
        endpoint=endpoint,
        headers=tuple(headers),
        payload=payload,
        content=content,
        topic=topic,
        resource_type=rtype,
        clauses=clauses,
        patient=patient.removeprefix("Patient/") if patient else None,
        group=group.removeprefix("Group/") if group else None,
        params=params,
        secret=str(_extension(resource, SECRET_EXTENSION) or ""),
        heartbeat=float(heartbeat) if isinstance(heartbeat, int | float) and heartbeat else None,
        timeout=float(timeout) if isinstance(timeout, int | float) and timeout else DEFAULT_TIMEOUT,
        criteria=criteria,
        end=end,
    )


def _patient_of(clauses: tuple[Clause, ...]) -> str | None:
    """The patient a criteria names with `patient=` or `subject=` (one value): a key that
    lets matching skip every subscription of other patients."""
    for clause in clauses:
        if (
            clause.param.code in ("patient", "subject")
            and clause.modifier is None
            and len(clause.values) == 1
        ):
            value = clause.values[0]
            rtype = getattr(value, "type", None)
            rid = getattr(value, "id", None)
            if rid and rtype in (None, "Patient"):
                return f"Patient/{rid}"
    return None


def new_secret() -> str:
    return secrets.token_urlsafe(32)
