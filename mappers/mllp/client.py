"""A blocking MLLP sender (tests, the command line, scripts), with optional TLS."""

from __future__ import annotations

import socket
import ssl

from mappers.hl7v2.parser import decode
from mappers.mllp.framing import Deframer, Frame, frame

# How long a sender waits for an ACK: a receiver storing into a busy database may take
# seconds; interface engines commonly allow 30-60 s before they resend.
ACK_TIMEOUT_SECONDS = 60.0


def send_mllp(
    host: str, port: int, message: str | bytes, *, timeout: float = ACK_TIMEOUT_SECONDS,
    ssl_context: ssl.SSLContext | None = None,
) -> str:
    """Send one framed message and return the ACK text."""
    with MllpClient(host, port, timeout=timeout, ssl_context=ssl_context) as client:
        return client.send(message)


class MllpClient:
    """A connection that sends messages in turn, each waiting for its ACK. With
    `ssl_context`, over TLS (`server_hostname` defaults to `host`); from `source_address`
    when given (a local address of this machine)."""

    def __init__(
        self, host: str, port: int, *, timeout: float = ACK_TIMEOUT_SECONDS,
        ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
        source_address: str | None = None,
    ):
        source = (source_address, 0) if source_address else None
        raw = socket.create_connection((host, port), timeout=timeout, source_address=source)
        try:
            self._socket = (ssl_context.wrap_socket(raw, server_hostname=server_hostname or host)
                            if ssl_context is not None else raw)
        except BaseException:
            raw.close()
            raise
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
