"""What a notification carries, and its signature.

- R4 subscriptions (criteria as a search): with no payload, a POST of no body to the
  endpoint; with `application/fhir+json`, the resource as it was written, PUT to
  `[endpoint]/[type]/[id]` (R4's rest-hook: the endpoint is taken as a service base).
- Backport (topic) subscriptions: a POST of a Bundle of type `history` whose first entry is
  the SubscriptionStatus (a `Parameters` with the backport's R4 profile: subscription,
  topic, status, type, events-since-subscription-start, one notification-event per event
  with its event-number, timestamp and focus) followed, for `id-only` and `full-resource`
  content, by one entry per focus (with the resource itself for `full-resource`).

Signature: `X-Diatabase-Signature: sha256=<hex>`, the HMAC-SHA256 of the exact body bytes
with the subscription's secret (its `subscription-secret` extension); a receiver computes
the same and drops a notification whose signature differs. `X-Diatabase-Subscription` and
`X-Diatabase-Event-Number` say which subscription and event it is (the receiver drops an
event number it already has: delivery is at least once).
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass
from typing import Any

from fhir_server.model import jsonio
from fhir_server.storage.base import instant, now_millis
from fhir_server.subscriptions.spec import BACKPORT, SubscriptionSpec

STATUS_PROFILE = f"{BACKPORT}/backport-subscription-status-r4"
SIGNATURE_HEADER = "X-Diatabase-Signature"
SUBSCRIPTION_HEADER = "X-Diatabase-Subscription"
EVENT_HEADER = "X-Diatabase-Event-Number"
FHIR_JSON = "application/fhir+json"


@dataclass(frozen=True, slots=True)
class StoredEvent:
    number: int
    at: float
    focus_type: str
    focus_id: str
    focus_version: int | None


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def status_parameters(
    spec: SubscriptionSpec,
    base: str,
    kind: str,
    events_since_start: int,
    events: list[StoredEvent],
    status: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": f"{base}/Subscription/{spec.id}"}},
        {"name": "topic", "valueCanonical": spec.topic_url},
        {"name": "status", "valueCode": status or spec.status},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(events_since_start)},
    ]
    for event in events:
        parts: list[dict[str, Any]] = [
            {"name": "event-number", "valueString": str(event.number)},
            {"name": "timestamp", "valueInstant": instant(event.at)},
        ]
        if spec.content != "empty":
            parts.append({"name": "focus", "valueReference": {
                "reference": f"{base}/{event.focus_type}/{event.focus_id}"}})
        parameters.append({"name": "notification-event", "part": parts})
    if error:
        parameters.append({"name": "error", "valueCodeableConcept": {"text": error}})
    return {
        "resourceType": "Parameters",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": parameters,
    }


def notification_bundle(
    spec: SubscriptionSpec,
    base: str,
    kind: str,
    events_since_start: int,
    events: list[StoredEvent],
    read_focus: Any,
    status: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """The backport's notification Bundle (`history`): SubscriptionStatus first, then the
    focus of each event (`read_focus(event)` -> the stored version, for full-resource)."""
    status_resource = status_parameters(
        spec, base, kind, events_since_start, events, status, error
    )
    entries: list[dict[str, Any]] = [{
        "fullUrl": f"urn:uuid:{status_resource['id']}",
        "resource": status_resource,
        "request": {"method": "GET", "url": f"{base}/Subscription/{spec.id}/$status"},
        "response": {"status": "200"},
    }]
    if spec.content != "empty":
        for event in events:
            url = f"{event.focus_type}/{event.focus_id}"
            entry: dict[str, Any] = {"fullUrl": f"{base}/{url}"}
            stored = read_focus(event) if spec.content == "full-resource" else None
            if stored is not None and stored.json is not None:
                entry["resource"] = jsonio.fragment(stored.json)
            created = event.focus_version == 1
            entry["request"] = {"method": "POST" if created else "PUT",
                                "url": event.focus_type if created else url}
            entry["response"] = {"status": "201" if created else "200"}
            entries.append(entry)
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "history",
        "timestamp": instant(now_millis()),
        "entry": entries,
    }

