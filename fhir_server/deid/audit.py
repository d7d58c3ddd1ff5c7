"""AuditEvent for every facade access: who (recipient), what, when, how many resources.

Events are written to storage by one background thread, in batches (one transaction per
batch, gathered over `linger_seconds`), so that auditing adds no write to the latency of a
facade request. An event is stored within about `linger_seconds` of its request. `flush()`
waits until everything queued so far is stored (tests, shutdown).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from fhir_server.service.fhir import FhirService
from fhir_server.storage.base import instant, now_millis

log = logging.getLogger("diatabase.deid")
RECIPIENT_SYSTEM = "https://diatabase.org/fhir/sid/deid-recipient"
# AuditEvent.outcome: 0 success, 4 minor failure (refused request), 8 serious failure.
SUCCESS, REFUSED, FAILED = "0", "4", "8"
_STOP = object()


def audit_event(
    recipient_id: str | None,
    interaction: str,
    what: str,
    count: int,
    outcome: str = SUCCESS,
    entity: str | None = None,
) -> dict[str, Any]:
    who: dict[str, Any] = (
        {"identifier": {"system": RECIPIENT_SYSTEM, "value": recipient_id}}
        if recipient_id
        else {"display": "unauthenticated client"}
    )
    detail = [{"type": "resources-returned", "valueString": str(count)}]
    target: dict[str, Any] = {"name": what[:1000], "detail": detail}
    if entity:
        target["what"] = {"reference": entity}
    return {
        "resourceType": "AuditEvent",
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "RESTful Operation",
        },
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": interaction}],
        "action": "E" if interaction == "operation" else "R",
        "recorded": instant(now_millis()),
        "outcome": outcome,
        "agent": [{"who": who, "requestor": True}],
        "source": {"observer": {"display": "Diatabase de-identification facade"}},
        "entity": [target],
    }


class AuditLog:
    def __init__(self, service: FhirService, linger_seconds: float = 0.2) -> None:
        self._service = service
        # Waiting a little before writing gathers the events of a burst of requests into
        # one transaction, instead of one write competing with every next request.
        self._linger = linger_seconds
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="deid-audit", daemon=True)
        self._thread.start()

    def record(
        self,
        recipient_id: str | None,
        interaction: str,
        what: str,
        count: int,
        outcome: str = SUCCESS,
        entity: str | None = None,
    ) -> None:
        self._queue.put(audit_event(recipient_id, interaction, what, count, outcome, entity))

    def flush(self) -> None:
        self._queue.join()

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=10)

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
            events = [e for e in batch if e is not _STOP]
            try:
                if events:
                    self._write(events)
            except Exception:  # an audit failure must be visible, and must not kill the thread
                log.exception("could not store %d AuditEvent(s)", len(events))
            finally:
                for _ in batch:
                    self._queue.task_done()
            if len(events) != len(batch):
                return

    def _write(self, events: list[dict[str, Any]]) -> None:
        resources = self._service.resources
        with self._service.storage.transaction() as tx:
            for event in events:
                resources.create_in(tx, "AuditEvent", event)
