"""A real HTTP receiver for subscription notifications, on 127.0.0.1: it records every
request (method, path, headers, body) and answers with the status the test chose — a
number of failures first, then 200."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def event_number(self) -> int | None:
        value = self.headers.get("x-diatabase-event-number")
        return int(value) if value else None


@dataclass
class Receiver:
    failures: int = 0  # answer 500 to this many requests first
    always_fail: bool = False
    received: list[Received] = field(default_factory=list)
    refused: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def __enter__(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                with receiver._lock:
                    if receiver.always_fail or receiver.refused < receiver.failures:
                        receiver.refused += 1
                        status = 500
                    else:
                        receiver.received.append(Received(
                            self.command, self.path,
                            {k.lower(): v for k, v in self.headers.items()}, body,
                        ))
                        status = 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            do_POST = do_PUT = _handle  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        # a listen backlog for the server's parallel senders (with the default 5, SYNs
        # beyond it are dropped and come back a second later)
        server_class = type("Receiving", (ThreadingHTTPServer,), {"request_queue_size": 128})
        self._server = server_class(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, count: int, timeout: float = 90.0) -> list[Received]:
        """The first `count` notifications received, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.02)
        raise AssertionError(f"{len(self.received)} notifications received, {count} expected")

    def events(self) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.event_number is not None]


def wait_until(condition: Any, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")
