"""The MLLP listener: every frame answered with an ACK, safely open to a hospital network.

One message at a time per connection (HL7 senders wait for the ACK before sending the
next), any number of connections within the limits. The event loop only moves bytes:
decoding, mapping and storing run in worker threads (`receive`, the caller's function),
so a 15 MB message never holds up the other senders. Large messages (over
`large_message_bytes`) have a lane of their own, so that a few of them cannot occupy
every worker either.

Bounds, all in `ListenerLimits`: a message size (`max_frame`), the bytes held for messages
being received or processed across all connections (`max_buffered_bytes`: past it a
message is cut short and answered AR "receiver busy"), connections in total and per peer
address (past them a connection is closed at once), an idle timeout (a silent connection
is closed), a deadline for one message to arrive whole (slow senders), and for the ACK to
be read (slow readers). A sender that goes away while its message is being mapped stops
the mapping (`Received.cancelled`).

Who may connect and send what is `PeerPolicy`'s decision (peers.py); TLS (and mutual TLS)
is the `ssl` context the caller gives. `on_event` hears of every connection refused and
every message answered, with the peer and the message's claim, for audit and logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as ssl_module
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mappers.hl7v2 import MappingCancelled, MappingError, MappingWarning, build_ack
from mappers.hl7v2.parser import decode
from mappers.mllp.framing import DEFAULT_MAX_FRAME, Deframer, Frame, frame
from mappers.mllp.peers import Claim, Peer, PeerPolicy, read_claim

log = logging.getLogger("mappers.mllp")
_BUSY = "receiver busy: too much data in flight, send again later"


@dataclass(frozen=True)
class ListenerLimits:
    max_frame: int = DEFAULT_MAX_FRAME
    max_buffered_bytes: int = 4 * DEFAULT_MAX_FRAME
    max_connections: int = 256
    max_connections_per_peer: int = 16
    idle_timeout: float | None = 300.0
    frame_timeout: float | None = 300.0
    write_timeout: float = 60.0
    workers: int = 4
    large_message_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class Outcome:
    """What `receive` says of one message: the ACK code, the error text for AE/AR, the parts
    accepted but not stored (ERR segments of severity W beside an AA), and the patients the
    message touched (references, for the audit trail; never logged)."""

    code: str = "AA"
    text: str | None = None
    warnings: tuple[MappingWarning, ...] = ()
    patients: tuple[str, ...] = ()
    error: MappingError | None = None


@dataclass(frozen=True)
class PeerInfo:
    """The other end of a connection: its address, the certificate names it presented (with
    mutual TLS) and the registered peers it may be."""

    address: str
    port: int
    certificate_names: tuple[str, ...] = ()
    peers: tuple[Peer, ...] = ()

    @property
    def name(self) -> str:
        return ",".join(p.name for p in self.peers) or "unregistered"


@dataclass
class Received:
    """One message handed to `receive`: its text, the peer, its claim, and `cancelled()`,
    true once the sender has hung up (the mapping may stop: nobody awaits the ACK)."""

    text: str
    peer: PeerInfo
    claim: Claim
    cancelled: Callable[[], bool] = field(default=lambda: False)


@dataclass(frozen=True)
class MllpEvent:
    """A connection refused (`kind` "connection", code None) or a message answered
    (`kind` "message", its ACK code). `reason` may hold message content: not for logs."""

    kind: str
    peer: PeerInfo
    code: str | None = None
    reason: str | None = None
    claim: Claim | None = None
    patients: tuple[str, ...] = ()
    size: int = 0


Receive = Callable[[Received], "Outcome | tuple[str, str | None]"]
EventHook = Callable[[MllpEvent], None]


class _Rejected(Exception):
    """Raised by `receive` for a message refused as a whole (AR)."""

    def __init__(self, error: MappingError):
        super().__init__(str(error))
        self.error = error


def reject(error: MappingError) -> _Rejected:
    """The exception a `receive` raises to answer AR with `error`'s location."""
    return _Rejected(error)


def _ack_bytes(ack: str, charset: str) -> bytes:
    try:
        return frame(ack.encode(charset))
    except (UnicodeEncodeError, LookupError):
        return frame(ack.encode("utf-8"))


def _answer_in_worker(receive: Receive, data: bytes, received: Received) -> tuple[bytes, Outcome]:
    """Decode, receive and build the ACK: all of it off the event loop."""
    text, charset = decode(data)
    received.text = text
    if not text.lstrip("\ufeff \r\n\t").startswith("MSH"):
        outcome = Outcome("AR", "text before the MSH segment")
    else:
        try:
            result = receive(received)
            outcome = result if isinstance(result, Outcome) else Outcome(*result)
        except _Rejected as rejected:
            outcome = Outcome("AR", str(rejected.error), error=rejected.error)
        except MappingCancelled:
            raise
        except MappingError as error:
            outcome = Outcome("AE", str(error), error=error)
        except Exception as error:  # the receiver's failure must not end the connection
            log.exception("MLLP receiver failed")
            outcome = Outcome("AE", f"{type(error).__name__}: {error}")
    if outcome.code not in ("AA", "AE", "AR"):
        log.error("MLLP receiver returned %r, not AA/AE/AR", outcome.code)
        outcome = Outcome("AE", f"receiver returned an invalid outcome {outcome.code!r}")
    ack = build_ack(text, outcome.code, outcome.text, error=outcome.error,
                    warnings=outcome.warnings)
    return _ack_bytes(ack, charset), outcome


class _Budget:
    """Bytes held across connections for messages being received or processed."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0


class MllpServer:
    """The running listener: `sockets`, `serve_forever()`, `close()`, `async with`."""

    def __init__(
        self,
        receive: Receive,
        policy: PeerPolicy,
        limits: ListenerLimits,
        on_event: EventHook | None,
    ):
        self.receive = receive
        self.policy = policy
        self.limits = limits
        self.on_event = on_event
        self.server: asyncio.Server | None = None
        self._small = ThreadPoolExecutor(limits.workers, thread_name_prefix="mllp")
        self._large = ThreadPoolExecutor(1, thread_name_prefix="mllp-large")
        self._budget = _Budget(limits.max_buffered_bytes)
        self._connections: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._in_flight = 0
        self._small_in_flight = 0

    @property
    def sockets(self) -> Any:
        assert self.server is not None
        return self.server.sockets

    @property
    def connections(self) -> int:
        """Open connections."""
        return sum(self._connections.values())

    @property
    def in_flight(self) -> int:
        """Messages handed to the workers and not answered yet."""
        return self._in_flight

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for messages being received or processed."""
        return self._budget.used

    async def serve_forever(self) -> None:
        assert self.server is not None
        await self.server.serve_forever()

    def close(self) -> None:
        """Stop listening and hang up on every peer (their mappings then stop too)."""
        if self.server is not None:
            self.server.close()
        for writer in list(self._writers):
            writer.close()

    async def wait_closed(self) -> None:
        if self.server is not None:
            await self.server.wait_closed()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._small.shutdown(wait=False, cancel_futures=True)
        self._large.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> MllpServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    def _emit(self, event: MllpEvent) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception:  # an audit failure is logged, the ACK still goes out
            log.exception("MLLP event hook failed")

    # -- connections ---------------------------------------------------------------------

    async def on_connect(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peername = writer.get_extra_info("peername") or ("?", 0)
        address, port = str(peername[0]), int(peername[1])
        names = _certificate_names(writer.get_extra_info("peercert"))
        peers = self.policy.admit(address, names)
        peer = PeerInfo(address, port, names, peers)
        limits = self.limits
        refusal = None
        if not peers:
            refusal = "address not allowed" if not names else \
                "address and certificate not registered together"
        elif self.connections >= limits.max_connections:
            refusal = f"too many connections ({limits.max_connections})"
        elif self._connections[address] >= limits.max_connections_per_peer:
            refusal = f"too many connections from this peer ({limits.max_connections_per_peer})"
        if refusal is not None:
            self._emit(MllpEvent("connection", peer, reason=refusal))
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, ssl_module.SSLError):
                await writer.wait_closed()
            self._tasks.discard(task)
            return
        self._connections[address] += 1
        self._writers.add(writer)
        try:
            await self._serve(reader, writer, peer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl_module.SSLError, TimeoutError):
            pass  # the peer went away or stalled; nothing to answer
        finally:
            self._writers.discard(writer)
            self._connections[address] -= 1
            if not self._connections[address]:
                del self._connections[address]
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, ssl_module.SSLError):
                await writer.wait_closed()
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     peer: PeerInfo) -> None:
        limits = self.limits
        budget = self._budget
        deframer = Deframer(limits.max_frame)
        loop = asyncio.get_running_loop()
        frame_started: float | None = None
        held = 0  # this connection's share of the budget
        try:
            while True:
                timeout = limits.idle_timeout
                if frame_started is not None and limits.frame_timeout is not None:
                    left = frame_started + limits.frame_timeout - loop.time()
                    timeout = left if timeout is None else min(timeout, left)
                    if timeout <= 0:
                        return  # a message trickling in too slowly: hang up
                try:
                    data = await asyncio.wait_for(reader.read(65536), timeout)
                except TimeoutError:
                    return  # idle (or too slow): free the connection, it can reconnect
                if not data:
                    return
                frames = deframer.feed(data)
                # Account for what the deframer now holds; past the budget, cut it short.
                budget.used += deframer.buffered - held
                held = deframer.buffered
                if budget.used > budget.limit and deframer.in_frame:
                    deframer.cut_short(_BUSY)
                    budget.used += deframer.buffered - held
                    held = deframer.buffered
                if not deframer.in_frame:
                    frame_started = None
                elif frames or frame_started is None:
                    frame_started = loop.time()  # a new message began in this chunk
                for frame_ in frames:
                    size = len(frame_.data)
                    budget.used += size
                    try:
                        answer = await self._answer(frame_, peer, reader)
                    finally:
                        budget.used -= size
                    if answer is not None:
                        writer.write(answer)
                        await asyncio.wait_for(writer.drain(), limits.write_timeout)
        finally:
            budget.used -= held

    async def _answer(self, frame_: Frame, peer: PeerInfo,
                      reader: asyncio.StreamReader) -> bytes | None:
        """The framed ACK for one frame, or None when there is nothing to acknowledge."""
        claim = read_claim(frame_.data)
        if claim is None:
            return None  # not an HL7 message at all: nothing to refer to
        size = len(frame_.data)
        if not frame_.complete:
            reason = frame_.reason or "malformed MLLP frame"
            return self._refuse(frame_.data, peer, claim, reason, size)
        refusal = self.policy.refusal(peer.peers, claim)
        if refusal is not None:
            return self._refuse(frame_.data, peer, claim, f"not allowed: {refusal}", size)
        if self._budget.used > self._budget.limit:
            return self._refuse(frame_.data, peer, claim, _BUSY, size)
        large = size > self.limits.large_message_bytes
        received = Received("", peer, claim,
                            cancelled=self._yielding(reader) if large else reader.at_eof)
        loop = asyncio.get_running_loop()
        self._in_flight += 1
        self._small_in_flight += not large
        try:
            ack, outcome = await loop.run_in_executor(
                self._large if large else self._small, _answer_in_worker, self.receive,
                frame_.data, received)
        except MappingCancelled:
            self._emit(MllpEvent("message", peer, None, "the sender hung up: not processed",
                                 claim, (), size))
            return None  # nobody to answer
        finally:
            self._in_flight -= 1
            self._small_in_flight -= not large
        self._emit(MllpEvent("message", peer, outcome.code, outcome.text, claim,
                             outcome.patients, size))
        return ack

    def _yielding(self, reader: asyncio.StreamReader) -> Callable[[], bool]:
        """The `cancelled` check of a large message: true once its sender hung up, and,
        while small messages are being handled, a pause of up to 50 ms first. Threads share
        one interpreter lock: without the pause a large mapping holds it most of the time
        and a small message's many short steps each wait for it. Measured with a 15 MB
        ORU being mapped: a small ORU stored and acknowledged in 134-191 ms without the
        pause, 62-115 ms with it (20-30 ms alone). The large one pauses at most 50 ms per
        check, and only while others are in flight."""

        def check() -> bool:
            deadline = time.monotonic() + 0.05
            while self._small_in_flight and time.monotonic() < deadline:
                time.sleep(0.002)
            return reader.at_eof()

        return check

    def _refuse(self, data: bytes, peer: PeerInfo, claim: Claim, reason: str,
                size: int) -> bytes:
        text, charset = decode(data[:8192])
        self._emit(MllpEvent("message", peer, "AR", reason, claim, (), size))
        return _ack_bytes(build_ack(text, "AR", reason), charset)


def _certificate_names(certificate: dict | None) -> tuple[str, ...]:
    """The subject CN and DNS / IP subjectAltNames of a verified client certificate."""
    if not certificate:
        return ()
    names: list[str] = []
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.append(value)
    for kind, value in certificate.get("subjectAltName", ()):
        if kind in ("DNS", "IP Address"):
            names.append(value)
    return tuple(names)


async def serve_mllp(
    host: str,
    port: int,
    receive: Receive,
    *,
    policy: PeerPolicy | None = None,
    limits: ListenerLimits | None = None,
    ssl: ssl_module.SSLContext | None = None,
    on_event: EventHook | None = None,
) -> MllpServer:
    """Start listening (port 0 picks a free port: see `server.sockets[0].getsockname()`).

    `receive(Received) -> Outcome` runs in a worker thread for each admitted message; an
    exception it raises becomes an AE (`reject(error)`: an AR). Without a `policy`, only
    loopback peers are admitted. Use `async with server: await server.serve_forever()`.
    """
    listener = MllpServer(receive, policy or PeerPolicy.loopback_only(),
                          limits or ListenerLimits(), on_event)
    listener.server = await asyncio.start_server(
        listener.on_connect, host, port, ssl=ssl, limit=65536,
    )
    return listener


def server_tls_context(cert: str, key: str, client_ca: str | None = None) -> ssl_module.SSLContext:
    """TLS for the listener (1.2 or later); with `client_ca`, mutual TLS: a peer must present
    a certificate that CA signed, or the handshake fails."""
    context = ssl_module.SSLContext(ssl_module.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl_module.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl_module.CERT_REQUIRED
    return context
