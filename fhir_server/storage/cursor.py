"""Opaque, signed paging cursors.

A cursor carries the position after the last row of a page (sort key values and the row's
key), so paging needs no server-side session and never skips or repeats rows when others
write meanwhile. It is signed so that a client cannot forge positions the query would not
reach; a tampered or foreign cursor is rejected.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import orjson


class CursorError(ValueError):
    pass


class CursorCodec:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:12]

    def encode(self, value: Any) -> str:
        payload = orjson.dumps(value)
        return base64.urlsafe_b64encode(self._sign(payload) + payload).decode().rstrip("=")

    def decode(self, token: str) -> Any:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, TypeError):
            raise CursorError("The paging cursor is malformed") from None
        signature, payload = raw[:12], raw[12:]
        if len(signature) < 12 or not hmac.compare_digest(signature, self._sign(payload)):
            raise CursorError("The paging cursor is invalid or was made by another server")
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise CursorError("The paging cursor is malformed") from None
