"""The delivery worker: one thread per server (across `--workers` processes, the one that
holds the lock file `<database>.subscriptions.lock`) that sends the outbox's events.

Each round: activate `requested` subscriptions; for every subscription with undelivered
events whose retry time has come, send them in event-number order (subscriptions in
parallel, each one's events one after the other, stopping at its first failure); their
progress (delivered marks, failures) is kept in memory at once and written by a marker
thread in one write transaction, so that a round never waits behind ingest for the write
lock. A failure is
tried again after `retry_base * 2**(failures-1)` seconds (at most `retry_max`); after
`max_attempts` failures in a row the subscription goes to `error` (Subscription.error
says why) and waits there, its events kept, until its owner sets it back to `requested`.
Heartbeats of backport subscriptions and the timer topics are checked in the same rounds.

A kill -9 loses nothing: events are committed with their writes and the delivered mark
moves only after the receiver answered 2xx; what was sent but not yet marked is sent again
after a restart, with the same event number (at least once).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from fhir_server.model import jsonio
from fhir_server.subscriptions.manager import Subscriptions, group_members
from fhir_server.subscriptions.matcher import Event
from fhir_server.subscriptions.notify import (
    EVENT_HEADER,
    FHIR_JSON,
    SIGNATURE_HEADER,
    SUBSCRIPTION_HEADER,
    StoredEvent,
    notification_bundle,
    sign,
)
from fhir_server.subscriptions.spec import SubscriptionSpec

log = logging.getLogger("diatabase.subscriptions")

EVENTS_PER_ROUND = 200  # of one subscription, before its progress is recorded
SENDERS = 8
RETENTION_SECONDS = 7 * 86400  # delivered events kept for $events
PRUNE_SECONDS = 600  # how often delivered events past retention are deleted
LEASE_SECONDS = 30.0  # a MongoDB delivery lease not renewed for this long is taken over


@dataclass(frozen=True)
class RetryPolicy:
    base: float = 2.0
    maximum: float = 600.0
    max_attempts: int = 10

    def delay(self, failures: int) -> float:
        return min(self.base * 2 ** (failures - 1), self.maximum)


@dataclass
class Outcome:
    sub_id: str
    delivered: int | None = None  # through this event number
    failure: str | None = None


class ProcessLease:
    """The one process of a server that delivers: an exclusive flock held while it runs
    (SQLite); on MongoDB, a lease document renewed every round (the store's)."""

    def __init__(self, path: str | None, store: Any = None) -> None:
        self._fd: int | None = None
        self._path = path
        self._store = store if path is None and hasattr(store, "acquire_lease") else None
        self._owner = uuid.uuid4().hex

    def acquire(self) -> bool:
        if self._store is not None:
            return self._store.acquire_lease(self._owner, time.time(), LEASE_SECONDS)
        if self._path is None:
            return True
        if self._fd is not None:
            return True
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def build_worker(service: Any, settings: Any, base_url: Any) -> DeliveryWorker:
    """The worker of `service`'s subscriptions with the settings' retry policy; the lock
    file beside a SQLite database makes it the only one delivering for that database."""
    policy = RetryPolicy(settings.subscription_retry_base, settings.subscription_retry_max,
                         settings.subscription_max_attempts)
    db_path = getattr(service.subscriptions.backend, "path", None)
    lease = f"{db_path}.subscriptions.lock" if db_path and db_path != ":memory:" else None
    return DeliveryWorker(service.subscriptions, base_url, policy,
                          settings.subscription_poll_seconds, lease)


class DeliveryWorker:
    def __init__(
        self,
        subscriptions: Subscriptions,
        base_url: Any,
        policy: RetryPolicy,
        poll_seconds: float = 1.0,
        lease_path: str | None = None,
    ) -> None:
        self.subs = subscriptions
        self.store = subscriptions.store
        self.base_url = base_url  # a callable: the server's public base
        self.policy = policy
        self.poll_seconds = poll_seconds
        self.lease = ProcessLease(lease_path, subscriptions.store)
        self.websockets: Any = None  # websocket.Hub, when the API serves websockets
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._http = httpx.Client(follow_redirects=False)
        self._pool = ThreadPoolExecutor(SENDERS, thread_name_prefix="subscription-send")
        self.rounds = 0  # completed rounds, for tests that wait for one
        # progress not yet written (by the marker thread): sub -> delivered through, and
        # sub -> (failures in a row, next attempt); what the marker has to write
        self._progress: dict[str, int] = {}
        self._failures: dict[str, tuple[int, float]] = {}
        self._delivered: dict[str, tuple[int, float]] = {}
        self._failed: dict[str, tuple[int, float, str]] = {}
        self._marks_lock = threading.Lock()
        self._marks_pending = threading.Event()
        self._marker: threading.Thread | None = None
        self._pruned = 0.0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="subscriptions", daemon=True)
        self._thread.start()
        self._marker = threading.Thread(target=self._mark_loop, name="subscription-marks",
                                        daemon=True)
        self._marker.start()
        self.subs.worker = self

    def stop(self) -> None:
        self.subs.worker = None
        self._stop.set()
        self._wake.set()
        self._marks_pending.set()
        for thread in (self._thread, self._marker):
            if thread is not None:
                thread.join(timeout=60)
        with contextlib.suppress(Exception):
            self._write_marks()  # what was delivered since the last marks
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()
        self.lease.release()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self.poll_seconds
            if self.lease.acquire():
                try:
                    wait = min(wait, self.round())
                except Exception:
                    log.exception("subscription delivery round failed")
            self.rounds += 1
            self._wake.wait(max(wait, 0.0))
            self._wake.clear()

    # -- one round ----------------------------------------------------------------------------

    def round(self) -> float:
        """Deliver what is due; the seconds until something else will be."""
        specs = self.subs.current()
        now = time.time()
        ended = [s for s in specs.values()
                 if s.end is not None and s.end <= now and s.status != "off"]
        for spec in ended:
            self.subs.switch_off(spec)  # Subscription.end has passed
        starting = [s for s in specs.values() if s not in ended and (
            s.status == "requested" or (s.status == "active" and not s.secret))]
        if starting:
            self.subs.activate(starting)
            with self._marks_lock:  # (re-)activated: their failures are forgotten
                for spec in starting:
                    self._failures[spec.id] = (0, 0.0)
                    self._failed.pop(spec.id, None)
        if ended or starting:
            specs = self.subs.current()
        streams = {row[0]: row for row in self.store.streams()}
        due, later = [], self.poll_seconds
        for sub_id, events, delivered, _, attempts, next_attempt, _, _ in streams.values():
            # what this worker did and has not yet recorded counts over the stored marks
            delivered = max(delivered, self._progress.get(sub_id, 0))
            attempts, next_attempt = self._failures.get(sub_id, (attempts, next_attempt))
            spec = specs.get(sub_id)
            if spec is None or spec.status != "active" or events <= delivered:
                continue
            if spec.channel == "websocket" and not self._bound(spec.id):
                continue  # its events wait for a socket (the hub wakes us on a bind)
            if next_attempt > now:
                later = min(later, next_attempt - now)
                continue
            due.append((spec, delivered, events, attempts))
        outcomes = list(self._pool.map(lambda d: self._send_stream(*d[:3]), due))
        self._record(outcomes, {d[0].id: d for d in due}, now)
        later = min(later, self._heartbeats(specs, streams, time.time()))
        later = min(later, self._timers(specs, streams))
        if any(o.delivered is not None and o.failure is None for o in outcomes):
            later = 0.0  # more may have been left for the next round
        return later

    def _send_stream(self, spec: SubscriptionSpec, delivered: int, events: int) -> Outcome:
        outcome = Outcome(spec.id)
        last = min(events, delivered + EVENTS_PER_ROUND)
        for number, at, ftype, fid, fversion in self.store.events(spec.id, delivered + 1, last):
            event = StoredEvent(number, at, ftype, fid, fversion)
            error = self._send(spec, event, events)
            if error is not None:
                outcome.failure = error
                break
            outcome.delivered = number
        return outcome

    def _record(self, outcomes: list[Outcome], due: dict[str, tuple], now: float) -> None:
        """Progress is kept in memory at once (the next round goes on from it) and written
        by the marker thread: a round never waits for the write lock that ingest holds.
        Marks not yet written when the process dies mean events sent again (at least
        once)."""
        errored = []
        with self._marks_lock:
            for o in outcomes:
                if o.delivered is not None:
                    self._progress[o.sub_id] = o.delivered
                    # no failures now (over the stored ones until the marks are written)
                    self._failures[o.sub_id] = (0, 0.0)
                    self._delivered[o.sub_id] = (o.delivered, now)
                if o.failure is not None:
                    attempts = 1 if o.delivered is not None else due[o.sub_id][3] + 1
                    retry = now + self.policy.delay(attempts)
                    self._failures[o.sub_id] = (attempts, retry)
                    self._failed[o.sub_id] = (attempts, retry, o.failure)
                    if attempts >= self.policy.max_attempts:
                        errored.append((due[o.sub_id][0], o.failure, attempts))
        if outcomes:
            self._marks_pending.set()
        for spec, failure, attempts in errored:
            self.subs.fail(spec, f"{attempts} deliveries in a row failed; the last: {failure}")

    def _mark_loop(self) -> None:
        while not self._stop.is_set():
            self._marks_pending.wait(self.poll_seconds)
            self._marks_pending.clear()
            try:
                self._write_marks()
            except Exception:
                log.exception("subscription delivery marks could not be written")

    def _write_marks(self) -> None:
        with self._marks_lock:
            delivered = [(sub, event, when) for sub, (event, when) in self._delivered.items()]
            failed = [(sub, *rest) for sub, rest in self._failed.items()]
            self._delivered, self._failed = {}, {}
        now = time.time()
        retention = None
        if now - self._pruned > PRUNE_SECONDS:
            retention, self._pruned = now - RETENTION_SECONDS, now
        if delivered or failed or retention is not None:
            with self.subs.backend.transaction() as tx:
                self.store.mark(tx, delivered, failed, retention_before=retention)

    # -- sending --------------------------------------------------------------------------------

    def _send(self, spec: SubscriptionSpec, event: StoredEvent, total: int) -> str | None:
        """None when the receiver took it; else what went wrong."""
        if spec.channel == "websocket":
            return self._send_websocket(spec, event, total)
        method, url, body, content_type = self._request(spec, event, total)
        headers = self._headers(spec, body, content_type, event.number)
        try:
            answer = self._http.request(method, url, content=body, headers=headers,
                                        timeout=spec.timeout)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__} from the endpoint"
        if 200 <= answer.status_code < 300:
            return None
        return f"the endpoint answered HTTP {answer.status_code}"

    @staticmethod
    def _headers(spec: SubscriptionSpec, body: bytes, content_type: str | None,
                 event_number: int | None) -> dict[str, str]:
        """The channel's own headers, then which subscription and event it is, and the
        signature of the body (notify.py)."""
        headers = dict(spec.headers)
        headers[SUBSCRIPTION_HEADER] = spec.id
        if event_number is not None:
            headers[EVENT_HEADER] = str(event_number)
        if spec.secret:
            headers[SIGNATURE_HEADER] = sign(spec.secret, body)
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def _request(self, spec: SubscriptionSpec, event: StoredEvent,
                 total: int) -> tuple[str, str, bytes, str | None]:
        if spec.backport:
            bundle = self.bundle(spec, "event-notification", total, [event])
            return "POST", spec.endpoint, jsonio.dumps(bundle), spec.payload or FHIR_JSON
        if spec.payload is None:
            return "POST", spec.endpoint, b"", None
        stored = self._focus(event)
        body = stored.json if stored is not None and stored.json is not None else b""
        url = f"{spec.endpoint.rstrip('/')}/{event.focus_type}/{event.focus_id}"
        return "PUT", url, body, spec.payload

    def bundle(self, spec: SubscriptionSpec, kind: str, total: int,
               events: list[StoredEvent], status: str | None = None) -> dict[str, Any]:
        return notification_bundle(spec, self.base_url(), kind, total, events, self._focus,
                                   status)

    def _focus(self, event: StoredEvent) -> Any:
        backend = self.subs.backend
        if event.focus_version is None:
            return backend.read(event.focus_type, event.focus_id)
        return backend.vread(event.focus_type, event.focus_id, event.focus_version)

    def _bound(self, sub_id: str) -> bool:
        return self.websockets is not None and self.websockets.bound(sub_id)

    def _send_websocket(self, spec: SubscriptionSpec, event: StoredEvent,
                        total: int) -> str | None:
        hub = self.websockets
        if hub is None:
            return "no websocket is bound to this subscription"
        if spec.backport:
            message = jsonio.dumps(self.bundle(spec, "event-notification", total, [event]))
        else:
            message = f"ping {spec.id}".encode()
        return None if hub.send(spec.id, message.decode()) else "the websocket send failed"

    # -- heartbeats and timers ------------------------------------------------------------------

    def _heartbeats(self, specs: dict[str, SubscriptionSpec], streams: dict[str, tuple],
                    now: float) -> float:
        later = self.poll_seconds
        for spec in specs.values():
            if spec.heartbeat is None or spec.status != "active" or not spec.backport:
                continue
            row = streams.get(spec.id)
            if row is None:
                continue
            last = row[7] or row[3]
            if now - last < spec.heartbeat:
                later = min(later, spec.heartbeat - (now - last))
                continue
            bundle = self.bundle(spec, "heartbeat", row[1], [])
            body = jsonio.dumps(bundle)
            if spec.channel == "websocket":
                if self.websockets is None or not self.websockets.send(spec.id, body.decode()):
                    continue
            else:
                headers = self._headers(spec, body, spec.payload or FHIR_JSON, None)
                try:
                    self._http.post(spec.endpoint, content=body, headers=headers,
                                    timeout=spec.timeout)
                except httpx.HTTPError:
                    continue
            with self.subs.backend.transaction() as tx:
                self.store.heartbeat_sent(tx, spec.id, now)
            later = min(later, spec.heartbeat)
        return later

    def _timers(self, specs: dict[str, SubscriptionSpec], streams: dict[str, tuple]) -> float:
        """The CGM-data-missing topic: an event per watched patient with no CGM reading for
        the period (counted from the subscription's start for one never seen), once per gap."""
        now = self.subs.clock.now()
        later = self.poll_seconds
        fired: list[tuple[SubscriptionSpec, str]] = []
        for spec in specs.values():
            if spec.topic is None or spec.topic.kind != "timer" or spec.status not in (
                "active", "requested", "error"
            ):
                continue
            row = streams.get(spec.id)
            if row is None:
                continue
            period = spec.params["period"]
            watched = self.store.watched(spec.id)
            patients = {spec.patient} if spec.patient else set()
            if spec.group is not None:
                patients |= group_members(self.subs.backend.read("Group", spec.group))
            for patient in sorted(patients):
                since, was_fired = watched.get(patient, (row[3], False))
                since = row[3] if since is None else since
                if was_fired:
                    continue
                if now - since >= period:
                    fired.append((spec, patient))
                else:
                    later = min(later, period - (now - since))
        if fired:
            with self.subs.backend.transaction() as tx:
                self.store.append(tx, [Event(s.id, "Patient", p, None, now) for s, p in fired],
                                  now)
                for spec, patient in fired:
                    self.store.put_state(tx, spec.id, patient, now, True)
            later = 0.0
        return later
