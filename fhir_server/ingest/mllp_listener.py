"""`diatabase mllp`: the MLLP listener of `mappers.mllp`, wired to the server's storage.

Each message is mapped and its transaction Bundle (and any ADT^A40 merge) stored in one
of the listener's worker threads, so that neither a large message nor a slow write stalls
the other connections. The ACK says what happened: AA stored (or already there: re-sent
messages create nothing), with an ERR of severity W for each part not stored; AR for a
message refused as a whole (no usable MSH, unsupported type or event, a peer sending what
it is not registered for); AE for a message that cannot be mapped or that the server
refuses (a profile violation, an ambiguous conditional match...), with the
OperationOutcome's text in ERR-8 (and MSA-3).

Every refused connection and every message is recorded by `record_event`: the audit
trail, and a log line that holds no patient name or identifier at info level (what the
sender sent back to it, errors included, is only logged at debug).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fhir_server.audit.mllp import MllpAudit
from fhir_server.ingest.mllp_config import MllpConfig
from fhir_server.model.outcome import FhirError
from fhir_server.service.fhir import FhirService
from fhir_server.service.ingest import store_bundle, zone_name
from mappers.hl7v2 import MappedMessage, MappingError, MappingWarning
from mappers.mllp import MllpEvent, MllpServer, Receive, bundle_handler, serve_mllp

log = logging.getLogger("diatabase.mllp")


class StoreRejected(MappingError):
    """The server refused a message's Bundle: the sender is answered AE with this text."""


def storing_handler(service: FhirService, timezone: str | None = None) -> Receive:
    """The receive function that stores every message's Bundle (and A40 merges) through
    `service`; what storing could not apply comes back as ACK warnings."""
    zone = zone_name(timezone)

    def store(mapped: MappedMessage) -> tuple[list[MappingWarning], list[str]]:
        try:
            counts = store_bundle(service, mapped.bundle, mapped.merges)
        except FhirError as exc:
            raise StoreRejected(f"rejected by the server: {exc}") from None
        warnings = [MappingWarning("MRG", text, field=1) for text in counts.warnings]
        return warnings, counts.patients

    return bundle_handler(store, timezone=zone)


def record_event(event: MllpEvent) -> None:
    """Log one MLLP event (nothing identifying at info); `start_listener` audits it."""
    peer = event.peer
    if event.kind == "connection":
        log.warning("MLLP connection from %s refused: %s", peer.address, event.reason)
    else:
        claim = event.claim
        log.info(
            "MLLP %s from %s (%s) app=%s facility=%s control=%s bytes=%d -> %s",
            claim.message_type if claim else "?", peer.address, peer.name,
            claim.sending_application if claim else "", claim.sending_facility if claim else "",
            claim.control_id if claim else "", event.size, event.code or "no answer",
        )
        if event.reason:
            log.debug("MLLP %s: %s", claim.control_id if claim else "?", event.reason)


async def start_listener(
    service: FhirService,
    config: MllpConfig,
    on_event: Callable[[MllpEvent], None] = record_event,
) -> MllpServer:
    """Listen as `config` says (port 0: any free port); every event to `on_event`.

    Every message and refused connection is audited (fhir_server/audit/mllp.py): a
    message's stored data with its event in one transaction, the rest when answered."""
    audit = MllpAudit(service.audit)

    def on_answered(event: MllpEvent) -> None:
        on_event(event)
        audit.record(event)

    return await serve_mllp(
        config.host, config.port, audit.receiving(storing_handler(service, config.timezone)),
        policy=config.policy(), limits=config.limits, ssl=config.tls(), on_event=on_answered,
    )


async def run_listener(service: FhirService, config: MllpConfig) -> None:
    """Serve until cancelled (Ctrl-C in the CLI)."""
    server = await start_listener(service, config)
    address = server.sockets[0].getsockname()
    scheme = "MLLP over TLS" if config.certificate else "MLLP"
    print(f"Diatabase {scheme} listener on {address[0]}:{address[1]}", flush=True)
    if not config.peers:
        print("No peers registered (--config): only loopback senders are admitted.",
              flush=True)
    for peer in server.policy.peers:
        networks = ", ".join(str(n) for n in peer.networks)
        print(f"  peer {peer.name}: {networks}", flush=True)
    async with server:
        await server.serve_forever()
