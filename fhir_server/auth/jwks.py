"""Keys of a token issuer: a JWKS from a file or a URL, cached, reloaded on rotation.

A file is read again when it changes (an operator replaces it to rotate keys). A URL is
fetched at first use, kept for `max_age`, and fetched again when a token names a `kid`
the cached set lacks (the issuer rotated), at most once per `min_interval` so that tokens
with made-up `kid`s cannot make the server hammer the issuer.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from pathlib import Path

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey

log = logging.getLogger("diatabase.auth")

Key = RSAKey | ECKey
FETCH_TIMEOUT = 10.0


class JwksError(Exception):
    """The issuer's keys cannot be had (unreadable file, unreachable URL, not a JWKS)."""


def parse_jwks(text: str | bytes) -> dict[str | None, Key]:
    """kid -> public key (RSA and EC keys only; private parts never kept)."""
    try:
        data = json.loads(text)
        keys = data["keys"] if isinstance(data, dict) and "keys" in data else [data]
        found: dict[str | None, Key] = {}
        for item in keys:
            if not isinstance(item, dict) or item.get("kty") not in ("RSA", "EC"):
                continue
            if item.get("use") not in (None, "sig"):
                continue
            public = {k: v for k, v in item.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}
            key = KeySet.import_key_set({"keys": [public]}).keys[0]
            found[item.get("kid")] = key  # type: ignore[assignment]
        return found
    except (ValueError, KeyError, TypeError, JoseError) as exc:
        raise JwksError(f"not a usable JWKS: {exc}") from None


class JwksSource:
    """The keys at `location` (a file path, or an http(s) URL)."""

    def __init__(self, location: str, max_age: float = 3600.0, min_interval: float = 30.0):
        self.location = location
        self.max_age = max_age
        self.min_interval = min_interval
        self._keys: dict[str | None, Key] = {}
        self._loaded_at = float("-inf")
        self._stamp: tuple[float, int] | None = None
        self._lock = threading.Lock()

    @property
    def is_url(self) -> bool:
        return self.location.startswith(("https://", "http://"))

    def key(self, kid: str | None) -> Key | None:
        """The key for `kid` (the only key when the token names none), refreshing as
        described above."""
        with self._lock:
            now = time.monotonic()
            if self._stale(now):
                self._load(now)
            found = self._pick(kid)
            if found is None and now - self._loaded_at >= self.min_interval:
                self._load(now)  # perhaps rotated since
                found = self._pick(kid)
            return found

    def _pick(self, kid: str | None) -> Key | None:
        if kid is not None:
            return self._keys.get(kid)
        return next(iter(self._keys.values())) if len(self._keys) == 1 else None

    def _stale(self, now: float) -> bool:
        if not self.is_url:
            try:
                stat = Path(self.location).stat()
            except OSError:
                return True
            return (stat.st_mtime, stat.st_size) != self._stamp
        return now - self._loaded_at > self.max_age

    def _load(self, now: float) -> None:
        self._loaded_at = now
        try:
            if self.is_url:
                with urllib.request.urlopen(self.location, timeout=FETCH_TIMEOUT) as answer:
                    text = answer.read(1_000_000)
            else:
                path = Path(self.location)
                stat = path.stat()
                text = path.read_bytes()
                self._stamp = (stat.st_mtime, stat.st_size)
            self._keys = parse_jwks(text)
        except (OSError, JwksError) as exc:
            # Keep the keys we had: an issuer briefly unreachable must not lock users out.
            log.warning("JWKS %s could not be loaded: %s", self.location, exc)
