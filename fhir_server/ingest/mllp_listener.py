"""`diatabase mllp`: the MLLP listener of `mappers.mllp`, wired to the server's storage.

Each message is mapped on the event loop (about a millisecond) and its transaction Bundle
stored in a worker thread, so that a slow write never stalls the other connections. The
ACK says what happened: AA stored (or already there: re-sent messages create nothing), AR
for a message refused as a whole (no usable MSH, unsupported type), AE for a message that
cannot be mapped or that the server refuses (a profile violation, an ambiguous conditional
match...), with the OperationOutcome's text in ERR-8 (and MSA-3).
"""

from __future__ import annotations

import asyncio
import logging

from fhir_server.model.outcome import FhirError
from fhir_server.service.fhir import FhirService
from fhir_server.service.ingest import store_bundle, zone_name
from mappers.hl7v2 import MappedMessage, MappingError, MappingWarning
from mappers.mllp import Handler, bundle_handler, serve_mllp

log = logging.getLogger("diatabase.mllp")


class StoreRejected(MappingError):
    """The server refused a message's Bundle. A MappingError so that the mapper's listener
    answers AE with this text and nothing else (no stack trace in the log: the sender is
    told, and this is the sender's data, not our failure)."""


def storing_handler(service: FhirService, timezone: str | None = None) -> Handler:
    """The MLLP handler that stores every message's Bundle (and A40 merges) through
    `service`; what storing could not apply comes back as ACK warnings."""
    zone = zone_name(timezone)

    async def store(mapped: MappedMessage) -> list[MappingWarning]:
        try:
            counts = await asyncio.to_thread(store_bundle, service, mapped.bundle,
                                             mapped.merges)
        except FhirError as exc:
            log.info("MLLP message refused by the server: %s", exc)
            raise StoreRejected(f"rejected by the server: {exc}") from None
        log.debug("MLLP message stored: %s", counts)
        return [MappingWarning("MRG", text, field=1) for text in counts.warnings]

    return bundle_handler(store, timezone=zone)


async def start_listener(
    service: FhirService, host: str, port: int, timezone: str | None = None, **options
) -> asyncio.Server:
    """Listen (port 0: any free port); `options` go to `serve_mllp` (max_frame, idle_timeout)."""
    return await serve_mllp(host, port, storing_handler(service, timezone), **options)


async def run_listener(
    service: FhirService, host: str, port: int, timezone: str | None = None
) -> None:
    """Serve until cancelled (Ctrl-C in the CLI)."""
    server = await start_listener(service, host, port, timezone)
    address = server.sockets[0].getsockname()
    print(f"Diatabase MLLP listener on {address[0]}:{address[1]}", flush=True)
    async with server:
        await server.serve_forever()
