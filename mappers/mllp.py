"""MLLP (Minimal Lower Layer Protocol) listener and client for HL7 v2 over TCP.

A frame is <VT> message <FS><CR>. The listener answers every frame with an ACK built
from the outcome its handler reports, one message at a time per connection (HL7 senders
wait for the ACK before sending the next message), any number of connections at once.
A broken frame costs only itself: bytes outside a frame are skipped, a frame cut by a
new <VT> or grown past the size limit is answered AR when it still has an MSH, otherwise
dropped; the connection stays open. Storage is not this module's business: the handler
(`(raw message) -> Outcome(ack code, error text, warnings)`) decides what receiving means.

Wiring a store (what `diatabase mllp --port 2575` is meant to do):

    async def store(mapped: MappedMessage) -> None:   # raise to answer AE
        await asyncio.to_thread(storage_transaction, mapped.bundle)

    server = await serve_mllp("0.0.0.0", 2575, bundle_handler(store))
    async with server:
        await server.serve_forever()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from mappers.hl7v2 import MappedMessage, MappingError, MappingWarning, build_ack, map_message
from mappers.hl7v2.parser import decode

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\r"
DEFAULT_MAX_FRAME = 16 * 1024 * 1024



@dataclass(frozen=True)
class Outcome:
    """What a handler says of one message: the ACK code, the error text for AE/AR, and
    the parts accepted but not stored (ERR segments of severity W beside an AA)."""

    code: str = "AA"
    text: str | None = None
    warnings: tuple[MappingWarning, ...] = ()


Handler = Callable[[str], Awaitable["Outcome | tuple[str, str | None]"]]
log = logging.getLogger(__name__)


def frame(message: str | bytes, encoding: str = "utf-8") -> bytes:
    """Wrap one message in an MLLP frame."""
    data = message.encode(encoding) if isinstance(message, str) else message
    return START_BLOCK + data + END_BLOCK + CARRIAGE_RETURN


@dataclass(frozen=True)
class Frame:
    """A deframed message, or the bytes of a frame that broke (`complete` False)."""

    data: bytes
    complete: bool


class Deframer:
    """Incremental MLLP deframer: feed it bytes as they arrive, get whole frames back.

    Lenient where senders are sloppy: the <CR> after <FS> is optional, and a <VT> in the
    middle of a frame starts a new one (the cut frame is returned as incomplete).
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME):
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._in_frame = False
        self._overflow = False

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        buffer = self._buffer
        position = 0
        length = len(data)
        while position < length:
            if not self._in_frame:
                start = data.find(START_BLOCK, position)
                if start < 0:
                    break  # bytes outside any frame: garbage, skipped
                self._in_frame = True
                self._overflow = False
                buffer.clear()
                position = start + 1
                continue
            end = data.find(END_BLOCK, position)
            restart = data.find(START_BLOCK, position)
            if restart >= 0 and (end < 0 or restart < end):
                self._append(data[position:restart])
                frames.append(Frame(bytes(buffer), complete=False))
                buffer.clear()
                self._overflow = False
                position = restart + 1
                continue
            if end < 0:
                self._append(data[position:])
                break
            self._append(data[position:end])
            frames.append(Frame(bytes(buffer), complete=not self._overflow))
            buffer.clear()
            self._in_frame = False
            position = end + 1
            if position < length and data[position : position + 1] == CARRIAGE_RETURN:
                position += 1
        return frames

    def _append(self, chunk: bytes) -> None:
        if self._overflow:
            return
        if len(self._buffer) + len(chunk) > self.max_frame:
            # Keep the head only (it holds the MSH the AR answer needs), drop the rest.
            self._buffer.extend(chunk[: max(0, 4096 - len(self._buffer))])
            self._overflow = True
            return
        self._buffer.extend(chunk)


class _Rejected(Exception):
    """A message refused as a whole (AR): unsupported type or no usable MSH."""

    def __init__(self, error: MappingError):
        super().__init__(str(error))
        self.error = error


def _ack_bytes(ack: str, charset: str) -> bytes:
    try:
        return frame(ack.encode(charset))
    except (UnicodeEncodeError, LookupError):
        return frame(ack.encode("utf-8"))


async def _answer(frame_: Frame, handle: Handler) -> bytes | None:
    """The framed ACK for one frame, or None when there is nothing to acknowledge."""
    text, charset = decode(frame_.data)
    if not frame_.complete:
        if "MSH" not in text:
            return None
        return _ack_bytes(build_ack(text, "AR", "malformed MLLP frame"), charset)
    if not text.lstrip("\ufeff \r\n\t").startswith("MSH"):
        if "MSH" not in text:
            return None  # not an HL7 message at all: nothing to refer to
        return _ack_bytes(build_ack(text, "AR", "text before the MSH segment"), charset)
    try:
        outcome = await handle(text)
    except _Rejected as rejected:
        error = rejected.error
        return _ack_bytes(build_ack(text, "AR", str(error), error=error), charset)
    except MappingError as error:
        return _ack_bytes(build_ack(text, "AE", str(error), error=error), charset)
    except Exception as error:  # the handler's failure must not end the connection
        log.exception("MLLP handler failed")
        return _ack_bytes(build_ack(text, "AE", f"{type(error).__name__}: {error}"), charset)
    if not isinstance(outcome, Outcome):
        outcome = Outcome(*outcome)
    if outcome.code not in ("AA", "AE", "AR"):
        log.error("MLLP handler returned %r, not AA/AE/AR", outcome.code)
        outcome = Outcome("AE", f"receiver returned an invalid outcome {outcome.code!r}")
    ack = build_ack(text, outcome.code, outcome.text, warnings=outcome.warnings)
    return _ack_bytes(ack, charset)


async def _serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handle: Handler,
    max_frame: int,
    idle_timeout: float | None,
) -> None:
    deframer = Deframer(max_frame)
    try:
        while True:
            try:
                data = await asyncio.wait_for(reader.read(65536), idle_timeout)
            except TimeoutError:
                break  # an idle sender: free the connection, it can reconnect
            if not data:
                break
            for frame_ in deframer.feed(data):
                answer = await _answer(frame_, handle)
                if answer is not None:
                    writer.write(answer)
                    await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass  # the peer went away; nothing to answer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def serve_mllp(
    host: str,
    port: int,
    handle: Handler,
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
    idle_timeout: float | None = None,
) -> asyncio.Server:
    """Start listening (port 0 picks a free port: see `server.sockets[0].getsockname()`).

    `handle(message)` returns `(code, error_text)` with code AA, AE or AR; an exception it
    raises becomes an AE. `max_frame` bounds one message (bytes); `idle_timeout`
    (seconds, None = never) closes connections that stay silent that long.
    Use `async with server: await server.serve_forever()` to run.
    """

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve_connection(reader, writer, handle, max_frame, idle_timeout)

    return await asyncio.start_server(on_connect, host, port)


Store = Callable[[MappedMessage], Awaitable[Sequence[MappingWarning] | None]]


def bundle_handler(store: Store, **mapping_options) -> Handler:
    """A handler that maps each message with `map_message` and passes the result (the
    Bundle, its warnings, any A40 merges) to `store`.

    Mapping errors are AE (AR for an unusable MSH or unsupported message type or event,
    with the error location in ERR-2), so is any error `store` raises; success is AA, with
    an ERR of severity W for each part of the message not stored (the mapper's warnings
    and those `store` returns). `store` is where the caller plugs storage in. Mapping runs
    on the event loop: about 1 ms per message; a slow `store` should hand off to a thread.
    """

    async def handle(message: str) -> Outcome:
        try:
            mapped = map_message(message, **mapping_options)
        except MappingError as error:
            # Raised out of the handler so that the ACK's ERR carries the error location.
            if error.segment == "MSH":
                raise _Rejected(error) from error
            raise
        more = await store(mapped)
        return Outcome("AA", None, tuple(mapped.warnings) + tuple(more or ()))

    return handle


# How long a sender waits for an ACK: a receiver storing into a busy database may take
# seconds; interface engines commonly allow 30-60 s before they resend.
ACK_TIMEOUT_SECONDS = 60.0


def send_mllp(
    host: str, port: int, message: str | bytes, *, timeout: float = ACK_TIMEOUT_SECONDS
) -> str:
    """Send one framed message and return the ACK text (blocking; for tests and the CLI)."""
    with MllpClient(host, port, timeout=timeout) as client:
        return client.send(message)


class MllpClient:
    """A blocking connection that sends messages in turn, each waiting for its ACK."""

    def __init__(self, host: str, port: int, *, timeout: float = ACK_TIMEOUT_SECONDS):
        self._socket = socket.create_connection((host, port), timeout=timeout)
        self._deframer = Deframer()
        self._pending: list[Frame] = []

    def send(self, message: str | bytes) -> str:
        self._socket.sendall(frame(message))
        return self.receive()

    def send_raw(self, data: bytes) -> None:
        """Bytes as given, unframed (to test what the listener does with bad input)."""
        self._socket.sendall(data)

    def receive(self) -> str:
        """The next ACK (frames that arrived together are kept for the next call)."""
        while not self._pending:
            chunk = self._socket.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed before an ACK arrived")
            self._pending.extend(self._deframer.feed(chunk))
        return decode(self._pending.pop(0).data)[0]

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> MllpClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
