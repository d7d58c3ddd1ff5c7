"""The one audit writer: every door's events reach the store through `AuditTrail`.

- A write's event is appended inside the write's own storage transaction (audited.py
  calls `append_in` just before the commit): both are stored or neither is.
- Everything else (reads, searches, refused and failed requests, facade requests, MLLP
  messages that wrote nothing) is queued and stored by one background thread in batches
  (one transaction per batch, gathered over `linger_seconds`), so that auditing adds no
  write to a read's response time. An event is stored within about `linger_seconds` of
  its request. `flush()` waits until everything queued so far is stored; `close()` (the
  storage's close, which every server and command calls on a clean shutdown) flushes
  first, so a clean shutdown loses nothing; a crash (kill -9, power loss) can lose the
  read events of the last moments, never a write's.
"""

from __future__ import annotations

import getpass
import logging
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fhir_server.audit.activity import Activity, opened
from fhir_server.audit.events import (
    ACTIONS,
    MAX_DATA_ENTITIES,
    SUCCESS,
    Agent,
    EventFacts,
    build_event,
    fields_of,
    outcome_of,
    sorted_unique,
)
from fhir_server.audit.patients import patients_of, patients_of_all, touches_patient_data
from fhir_server.audit.store import AuditStore
from fhir_server.storage.base import now_millis

log = logging.getLogger("diatabase.audit")
_STOP = object()
# What a write transaction wrote: (resource type, id, JSON or None for a deletion, method)
Write = tuple[str, str, "bytes | None", str]
METHOD_INTERACTIONS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


class AuditTrail:
    def __init__(
        self,
        store: AuditStore,
        backend: Any,
        enabled: bool = True,
        server: str = "Diatabase",
        linger_seconds: float = 0.2,
    ) -> None:
        self.store = store
        self.enabled = enabled
        self._backend = backend
        self._server = server
        # Who writes when no door opened an activity: the server itself (terminology it
        # ships, conformance resources); the command line names itself (cli.py).
        self.default_agent = Agent(display=f"{server} (server process)")
        self.default_door = "server"
        # Waiting a little before writing gathers the events of a burst of requests into
        # one transaction, instead of one write competing with every next request.
        self._linger = linger_seconds
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()

    # -- doors -------------------------------------------------------------------------------

    def act_as_command(self, command: str) -> Agent:
        """This process is a command run by an operator: what it writes outside any activity
        is theirs (not the server's), and the returned agent is for its own activities."""
        self.default_agent = Agent(display=f"diatabase {command} (OS user {getpass.getuser()})")
        self.default_door = "cli"
        return self.default_agent

    @contextmanager
    def activity(self, activity: Activity) -> Iterator[Activity]:
        """Run an interaction under `activity` and record it when it ends (for doors
        without an HTTP status: MLLP messages, commands). An exception is a failure (8)
        unless the door set `activity.outcome` (e.g. 4 for a refused message)."""
        if not self.enabled:
            yield activity
            return
        with opened(activity):
            try:
                yield activity
            except BaseException:
                activity.outcome = activity.outcome or "8"
                raise
            finally:
                self.finish(activity, 200)

    def finish(self, activity: Activity, status: int) -> None:
        """The interaction is over: record what no write transaction recorded yet."""
        if not self.enabled:
            return
        if activity.recorded_writes and not activity.reads and not activity.attempted:
            return
        if (
            activity.definitional
            and status not in (401, 403)
            and not activity.recorded_writes
            and not activity.attempted
            and not touches_patient_data(activity.reads)
        ):
            return
        activity.ended = now_millis()
        self._submit((activity, activity.outcome or outcome_of(status)))

    # -- inside a write transaction ----------------------------------------------------------

    def append_in(self, tx: Any, activity: Activity | None, writes: list[Write]) -> None:
        facts = self.write_facts(activity, writes)
        event = build_event(facts)
        self.store.append(tx, [(event, fields_of(facts, event))])

    def write_facts(self, activity: Activity | None, writes: list[Write]) -> EventFacts:
        """The event of a transaction's writes (and of the reads its activity made before
        them, which the caller forgets once the transaction is committed)."""
        patients: set[str] = set()
        for rtype, rid, json, _ in writes:
            patients |= patients_of(rtype, rid, json)
        data = [f"{rtype}/{rid}" for rtype, rid, _, _ in writes]
        counts: list[tuple[str, str]] = []
        if activity is not None:
            if activity.reads:
                patients |= patients_of_all(activity.reads)
                counts.append(("resources-returned", str(len(activity.reads))))
            agent, interaction, door = activity.who(), activity.interaction, activity.door
            request = activity.request
        else:
            agent, door, request = self.default_agent, self.default_door, None
            interaction = (
                METHOD_INTERACTIONS.get(writes[0][3], "update") if len(writes) == 1 else "batch"
            )
        if len(data) > MAX_DATA_ENTITIES:
            counts.append(("resources-written", str(len(data))))
            data = []
        elif len(data) > 1:
            counts.append(("resources-written", str(len(data))))
        return EventFacts(
            agent=agent,
            interaction=interaction,
            action=ACTIONS.get(interaction, "E"),
            outcome=SUCCESS,
            recorded=now_millis(),
            request=request,
            patients=sorted_unique(patients),
            data=tuple(data),
            counts=tuple(counts),
            server=self._server,
            door=door,
        )

    # -- queued events -----------------------------------------------------------------------

    def _facts(self, activity: Activity, outcome: str) -> EventFacts:
        patients = patients_of_all(activity.reads) | activity.patients
        data: list[str] = []
        for rtype, rid, json in activity.attempted:
            patients |= patients_of(rtype, rid, json)
            data.append(f"{rtype}/{rid}")
        if activity.data and activity.data not in data:
            data.insert(0, activity.data)
        counts = []
        if activity.read_count is not None:
            counts.append(("resources-returned", str(activity.read_count)))
        elif activity.collect_reads:
            counts.append(("resources-returned", str(len(activity.reads))))
        return EventFacts(
            agent=activity.who(),
            interaction=activity.interaction,
            action=activity.action,
            outcome=outcome,
            recorded=activity.ended or now_millis(),
            request=activity.request,
            patients=sorted_unique(patients),
            data=tuple(data[:MAX_DATA_ENTITIES]),
            counts=tuple(counts),
            outcome_text=activity.outcome_text,
            server=self._server,
            door=activity.door,
        )

    def _submit(self, item: Any) -> None:
        if self._thread is None:
            with self._thread_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="audit-writer", daemon=True
                    )
                    self._thread.start()
        self._queue.put(item)

    def flush(self) -> None:
        if self._thread is not None:
            self._queue.join()

    def close(self) -> None:
        """Store everything queued, then stop the thread (a clean shutdown)."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout=60)
            self._thread = None

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            if batch[0] is not _STOP and self._linger:
                time.sleep(self._linger)
            while len(batch) < 1000:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            items = [item for item in batch if item is not _STOP]
            try:
                if items:
                    self._write(items)
            except Exception:  # an audit failure must be visible, and must not kill the thread
                # Counts only: the events hold identifiers that have no place in a log.
                log.exception("could not store %d audit event(s)", len(items))
            finally:
                for _ in batch:
                    self._queue.task_done()
            if len(items) != len(batch):
                return

    def _write(self, items: list[tuple[Activity, str]]) -> None:
        events = []
        for activity, outcome in items:
            facts = self._facts(activity, outcome)
            event = build_event(facts)
            events.append((event, fields_of(facts, event)))
            # Give the GIL up between events: a batch of a busy second's events is several
            # ms of Python (~0.1 ms each), and a request thread waiting for the GIL would
            # otherwise wait up to a whole switch interval (5 ms) behind it.
            time.sleep(0)
        with self._backend.transaction() as tx:
            self.store.append(tx, events)
