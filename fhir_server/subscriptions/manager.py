"""Subscriptions of one server process: the outbox store, the subscriptions cached for
matching, the checks a Subscription write must pass, and the status changes the server
makes (requested -> active, -> error after repeated failures).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from fhir_server.model import jsonio
from fhir_server.model.outcome import FhirError, Issue
from fhir_server.search.visibility import current_visibility
from fhir_server.subscriptions.matcher import Event, Matcher
from fhir_server.subscriptions.spec import (
    SECRET_EXTENSION,
    SubscriptionError,
    SubscriptionSpec,
    new_secret,
    read_spec,
)

log = logging.getLogger("diatabase.subscriptions")


class Clock:
    """The time of the timer topics (CGM data missing): a test sets its own."""

    def now(self) -> float:
        return time.time()


class ManualClock(Clock):
    def __init__(self, start: float) -> None:
        self.value = start

    def now(self) -> float:
        return self.value

    def advance(self, seconds: float) -> None:
        self.value += seconds


def open_outbox(backend: Any) -> Any:
    from fhir_server.storage.sqlite import SqliteStorage

    if isinstance(backend, SqliteStorage):
        from fhir_server.subscriptions.outbox_sqlite import SqliteOutbox

        return SqliteOutbox(backend)
    from fhir_server.subscriptions.outbox_mongo import MongoOutbox

    return MongoOutbox(backend)


class Subscriptions:
    def __init__(self, backend: Any, registry: Any, settings: Any) -> None:
        self.backend = backend
        self.registry = registry
        self.settings = settings
        self.http_loopback = bool(
            getattr(settings, "subscription_http_loopback", False)
            or getattr(settings, "insecure_dev", False)
        )
        self.store = open_outbox(backend)
        self.clock: Clock = Clock()
        self._generation: str | None = None
        self._matcher = Matcher((), registry.pid_codes)
        self._committed_generation: str | None = None
        self._committed: dict[str, SubscriptionSpec] = {}
        self._parsed: dict[tuple[str, int], SubscriptionSpec] = {}
        self._lock = threading.Lock()
        self.worker: Any = None  # delivery.DeliveryWorker, woken after commits with events
        self.resources: Any = None  # the ResourceService, for the server's status changes

    # -- on every write (under the storage's write lock) -------------------------------------

    def record(self, tx: Any, noted: Any) -> bool:
        """Append the events of `noted`'s writes in `tx`; True when there were any (or a
        Subscription changed: the worker has something to look at)."""
        store = self.store
        if noted.subscriptions_changed:
            store.bump(tx)
        generation = store.generation(tx)
        if generation != self._generation or noted.subscriptions_changed:
            specs = self._read_all(store.subscriptions(tx))
            store.open_streams(tx, specs, self.clock.now())
            self._matcher = Matcher(specs.values(), self.registry.pid_codes)
            self._generation = generation
        matcher = self._matcher
        if not matcher:
            return noted.subscriptions_changed
        now = self.clock.now()
        state = store.state(tx)
        groups: dict[str, frozenset[str]] = {}

        def members(group_id: str) -> frozenset[str]:
            if group_id not in groups:
                groups[group_id] = group_members(tx.read("Group", group_id))
            return groups[group_id]

        events: list[Event] = []
        for write in noted.writes:
            events += matcher.match(write, members, state, now)
        if events:
            store.append(tx, events, now)
        return bool(events) or noted.subscriptions_changed

    def committed(self) -> None:
        if self.worker is not None:
            self.worker.wake()

    def _read_all(self, rows: list[tuple[dict[str, Any], int]]) -> dict[str, SubscriptionSpec]:
        """Specs of the stored Subscriptions; those read before (same id and version) are
        not parsed again: a change to one of a thousand parses one."""
        specs = {}
        known = self._parsed
        for resource, version in rows:
            key = (str(resource.get("id")), version)
            spec = known.get(key)
            if spec is None:
                try:
                    spec = read_spec(resource, self.registry, self.http_loopback, version)
                except SubscriptionError as exc:
                    # stored before a rule changed (or by a bulk load): it matches nothing
                    log.warning("Subscription/%s is not served: %s", key[0], exc)
                    continue
            specs[spec.id] = spec
        with self._lock:
            self._parsed = {(s.id, s.version): s for s in specs.values()}
        return specs

    # -- the committed view, for the delivery worker and the operations ---------------------

    def current(self) -> dict[str, SubscriptionSpec]:
        """The Subscriptions as committed (reloaded when another transaction changed them)."""
        generation = self.store.read_generation()
        if generation != self._committed_generation:
            rows = [
                (jsonio.loads(s.json), s.version)
                for s in self.backend.iter_current("Subscription")
                if s.json is not None
            ]
            self._committed = self._read_all(rows)
            self._committed_generation = generation
        return self._committed

    # -- checks of a Subscription write (a validator of the resource service) ---------------

    def check(self, resource: dict[str, Any]) -> list[Issue]:
        if resource.get("resourceType") != "Subscription":
            return []
        try:
            spec = read_spec(resource, self.registry, self.http_loopback)
        except SubscriptionError as exc:
            return [Issue("error", "invalid", str(exc), (exc.expression,))]
        visibility = current_visibility.get()
        patient = None if visibility is None else visibility.patient
        # a patient-context app subscribes to its patient's data only
        if patient is not None and (spec.patient != patient or spec.group is not None):
            raise FhirError(403, [Issue(
                "error", "forbidden",
                f"This access token may subscribe only to Patient/{patient}'s data: the "
                f"criteria must name patient=Patient/{patient}",
                ("Subscription.criteria",),
            )])
        rtype = spec.resource_type
        if visibility is not None and not (
            visibility.for_type("s", rtype) or visibility.for_type("r", rtype)
        ):
            raise FhirError(403, [Issue(
                "error", "forbidden",
                f"This access token may not read {spec.resource_type}: it cannot subscribe to it",
                ("Subscription.criteria",),
            )])
        return []

    # -- status changes made by the server ----------------------------------------------------

    def activate(self, specs: list[SubscriptionSpec]) -> None:
        """requested -> active (the checks were made when they were written), each with a
        secret for signing its notifications when the client gave none; all in one
        transaction (a thousand subscriptions are one change of the cached set)."""
        self._change([(spec, "active", None) for spec in specs])
        with self.backend.transaction() as tx:
            self.store.mark(tx, (), (), reset=[spec.id for spec in specs])

    def switch_off(self, spec: SubscriptionSpec) -> None:
        self._change([(spec, "off", None)])

    def fail(self, spec: SubscriptionSpec, message: str) -> None:
        self._change([(spec, "error", message)])

    def _change(self, changes: list[tuple[SubscriptionSpec, str, str | None]]) -> None:
        """Write each Subscription with its new status (skipped when it changed meanwhile:
        the next round sees the new version)."""
        if self.resources is None or not changes:
            return
        resources = self.resources
        with resources.storage.transaction() as tx:
            for spec, status, message in changes:
                try:
                    with tx.savepoint():
                        self._change_in(tx, spec, status, message)
                except FhirError as exc:
                    log.warning("Subscription/%s could not be set %s: %s", spec.id, status, exc)

    def _change_in(self, tx: Any, spec: SubscriptionSpec, status: str,
                   message: str | None) -> None:
        stored = tx.read("Subscription", spec.id)
        if stored is None or stored.deleted or stored.version != spec.version:
            return
        body = jsonio.loads(stored.json)
        body["status"] = status
        if message is not None:
            body["error"] = message
        else:
            body.pop("error", None)
        if not any(e.get("url") == SECRET_EXTENSION for e in body.get("extension") or ()):
            body["extension"] = [
                *(body.get("extension") or ()),
                {"url": SECRET_EXTENSION, "valueString": new_secret()},
            ]
        self.resources.update_in(tx, "Subscription", spec.id, body, f'W/"{spec.version}"')


def group_members(stored: Any) -> frozenset[str]:
    """Patient ids of a Group's current members (inactive ones left out)."""
    if stored is None or stored.deleted or stored.json is None:
        return frozenset()
    group = jsonio.loads(stored.json)
    found = set()
    for member in group.get("member") or ():
        if member.get("inactive") is True:
            continue
        reference = (member.get("entity") or {}).get("reference") or ""
        if reference.startswith("Patient/"):
            found.add(reference.removeprefix("Patient/"))
    return frozenset(found)
