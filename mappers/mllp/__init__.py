"""MLLP (Minimal Lower Layer Protocol): HL7 v2 over TCP, listener and client.

A frame is <VT> message <FS><CR>. The listener answers every frame with an ACK built from
the outcome of its `receive` function (run in worker threads), one message at a time per
connection, within limits (size, memory, connections, timeouts), to the peers a
`PeerPolicy` admits, over TLS when given a context. A broken frame costs only itself:
bytes outside a frame are skipped, a frame cut by a new <VT> or grown past a limit is
answered AR when it still has an MSH, otherwise dropped; the connection stays open.
Storage is not this package's business: `receive` decides what receiving means.

Wiring a store (what `diatabase mllp` does):

    def store(mapped: MappedMessage):            # runs in a worker thread; raise to AE
        storage_transaction(mapped.bundle)

    server = await serve_mllp("0.0.0.0", 2575, bundle_handler(store),
                              policy=PeerPolicy.from_config(peers), ssl=context)
    async with server:
        await server.serve_forever()
"""

from mappers.mllp.client import MllpClient, send_mllp
from mappers.mllp.framing import DEFAULT_MAX_FRAME, Deframer, Frame, frame
from mappers.mllp.peers import Claim, Peer, PeerConfigError, PeerPolicy, read_claim
from mappers.mllp.receivers import Store, bundle_handler
from mappers.mllp.server import (
    ListenerLimits,
    MllpEvent,
    MllpServer,
    Outcome,
    PeerInfo,
    Receive,
    Received,
    reject,
    serve_mllp,
    server_tls_context,
)

__all__ = [
    "DEFAULT_MAX_FRAME",
    "Claim",
    "Deframer",
    "Frame",
    "ListenerLimits",
    "MllpClient",
    "MllpEvent",
    "MllpServer",
    "Outcome",
    "Peer",
    "PeerConfigError",
    "PeerInfo",
    "PeerPolicy",
    "Receive",
    "Received",
    "Store",
    "bundle_handler",
    "frame",
    "read_claim",
    "reject",
    "send_mllp",
    "serve_mllp",
    "server_tls_context",
]
