"""The websocket channel: sockets bound to subscriptions, and binding tokens.

A client asks `GET /Subscription/{id}/$get-ws-binding-token` (through its access: a
subscription it may not read is a 404) and gets a token valid for `TOKEN_SECONDS`; it opens
the websocket and sends `bind-with-token <token>`; the server answers `bound <id>` and from
then on sends each event: the notification Bundle for a topic subscription (the backport
IG), `ping <id>` for an R4 one (as R4's websocket channel). `bind <id>` without a token
(R4's own message) is accepted only on a server without access control (--insecure-dev).

Tokens are signed with the store's own key (the paging cursors' codec), so any server
process of the same database can check them. Events of a websocket subscription wait in
the outbox while no socket is bound, and go out in order when one binds.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

TOKEN_SECONDS = 300
SEND_SECONDS = 10.0


class Hub:
    def __init__(self) -> None:
        self._sockets: dict[str, list[tuple[Any, asyncio.AbstractEventLoop]]] = {}
        self._lock = threading.Lock()
        self.on_bind: Any = None  # called after a bind: the worker sends what waited

    def bind(self, sub_id: str, socket: Any, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._sockets.setdefault(sub_id, []).append((socket, loop))
        if self.on_bind is not None:
            self.on_bind()

    def unbind(self, socket: Any) -> None:
        with self._lock:
            for sub_id in list(self._sockets):
                kept = [(s, lp) for s, lp in self._sockets[sub_id] if s is not socket]
                if kept:
                    self._sockets[sub_id] = kept
                else:
                    del self._sockets[sub_id]

    def bound(self, sub_id: str) -> bool:
        with self._lock:
            return bool(self._sockets.get(sub_id))

    def send(self, sub_id: str, text: str) -> bool:
        """Send from a worker thread to every socket bound to `sub_id`; True if one took it."""
        with self._lock:
            targets = list(self._sockets.get(sub_id, ()))
        sent = False
        for socket, loop in targets:
            try:
                asyncio.run_coroutine_threadsafe(socket.send_text(text), loop).result(
                    SEND_SECONDS
                )
                sent = True
            except Exception:
                self.unbind(socket)
        return sent


def binding_token(codec: Any, sub_id: str, now: float | None = None) -> tuple[str, float]:
    expires = (time.time() if now is None else now) + TOKEN_SECONDS
    return codec.encode(["ws", sub_id, expires]), expires


def bound_subscription(codec: Any, token: str) -> str | None:
    """The subscription a token binds to, or None (forged, expired, not a binding token)."""
    try:
        kind, sub_id, expires = codec.decode(token)
    except Exception:
        return None
    if kind != "ws" or not isinstance(sub_id, str) or float(expires) < time.time():
        return None
    return sub_id
