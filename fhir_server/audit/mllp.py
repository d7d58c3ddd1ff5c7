"""The MLLP door of the audit trail (fhir_server/ingest/mllp_listener.py uses it).

    door = MllpAudit(service.audit)
    receive = door.receiving(receive)   # the listener's receive function, in its workers
    door.record(event)                  # from the listener's event hook, for every event

`receiving` runs each message under an activity whose agent is the peer (its registered
name, address, and the sending application and facility it claims in MSH-3/4), so the
event of what the message stored commits in the same transaction as the data. `record`
then records what no write recorded: a message refused (AR) or in error (AE), one re-sent
that changed nothing (AA), a connection refused. Nothing identifying is logged.
"""

from __future__ import annotations

import threading
from typing import Any

from fhir_server.audit.activity import Activity, opened
from fhir_server.audit.events import REFUSED, SUCCESS, Agent
from fhir_server.audit.writer import AuditTrail

MLLP_PEER_SYSTEM = "https://diatabase.org/fhir/sid/mllp-peer"


def message_agent(peer: Any, claim: Any) -> Agent:
    registered = getattr(peer, "peers", ())
    claimed = ""
    if claim is not None:
        claimed = f"MSH-3/4 {claim.sending_application}^{claim.sending_facility}"
    return Agent(
        client_id=peer.name if registered else None,
        address=getattr(peer, "address", None),
        display=claimed or "MLLP peer",
        client_system=MLLP_PEER_SYSTEM,
    )


def message_activity(peer: Any, claim: Any) -> Activity:
    what = f"HL7v2 {claim.message_type} control id {claim.control_id}" if claim else None
    return Activity(message_agent(peer, claim), "transaction", what, door="mllp")


class MllpAudit:
    def __init__(self, trail: AuditTrail) -> None:
        self.trail = trail
        # the activity of each message being handled, until its event comes: keyed by the
        # id of its claim (the same object reaches the event), which the entry keeps alive
        self._pending: dict[int, tuple[Any, Activity]] = {}
        self._lock = threading.Lock()

    def receiving(self, receive: Any) -> Any:
        def audited(received: Any) -> Any:
            activity = message_activity(received.peer, received.claim)
            with self._lock:
                self._pending[id(received.claim)] = (received.claim, activity)
            with opened(activity):
                return receive(received)

        return audited

    def record(self, event: Any) -> None:
        claim = getattr(event, "claim", None)
        with self._lock:
            entry = self._pending.pop(id(claim), None) if claim is not None else None
        activity = entry[1] if entry else message_activity(event.peer, claim)
        code = getattr(event, "code", None)
        activity.outcome = SUCCESS if code == "AA" else REFUSED
        activity.outcome_text = f"ACK {code}" if code else "connection refused"
        activity.patients.update(p.removeprefix("Patient/") for p in event.patients or ())
        self.trail.finish(activity, 200)
