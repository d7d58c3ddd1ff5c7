"""Keyed, deterministic, reversible pseudonyms for resource ids.

A pseudonym is AES-SIV (deterministic authenticated encryption, RFC 5297) of the original
id under the recipient's key, with the resource type as associated data, written in
base64url with `_` replaced by `.` so that it is a valid FHIR id ([A-Za-z0-9\\-.]{1,64}):

- a canonical lowercase UUID (what this server assigns) is encrypted as its 16 bytes:
  16 + 16-byte SIV tag = 32 bytes = 43 characters;
- any other id of up to 41 characters is packed at 6 bits per character behind a length
  byte (at most 32 bytes, so at most 48 bytes encrypted = 64 characters); a packing of
  exactly 16 bytes gets one padding byte so that it cannot be taken for a UUID;
- a longer id (42-64 characters) cannot fit: it gets a keyed BLAKE2b pseudonym, `h.` and
  40 characters. It is stable and unlinkable like the others, but not readable back: a
  URL or search naming it finds nothing (see the README of this package).

Decryption checks the SIV tag, so a pseudonym made for another recipient, another type,
or a made-up string is rejected (forgery probability 2^-128): this also proves, in leak
tracing, which recipient an id was made for.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import uuid

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-."
MAX_PACKED_ID = 41
HASHED_PREFIX = "h."
_CACHE_LIMIT = 200_000


_TO_ID_ALPHABET = bytes.maketrans(b"+/", b"-.")


def _text(raw: bytes) -> str:
    # base64url with `.` for `_`: standard base64 and one translation, no padding.
    return binascii.b2a_base64(raw, newline=False).translate(_TO_ID_ALPHABET).decode().rstrip("=")


def _raw(text: str) -> bytes:
    padded = text.replace(".", "_") + "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(padded)


# ID_ALPHABET is base64's alphabet with `-` and `.` for `+` and `/`: packing at 6 bits per
# character is base64 decoding (and unpacking, encoding), done in C.
_PACKABLE = re.compile(rf"[A-Za-z0-9\-.]{{0,{MAX_PACKED_ID}}}")
_ID_TO_BASE64 = str.maketrans("-.", "+/")
_BASE64_TO_ID = str.maketrans("+/", "-.")


def _pack(rid: str) -> bytes | None:
    """A length byte, then the id's characters at 6 bits each, left-aligned; None for an id
    that is too long or has a character outside ID_ALPHABET."""
    if _PACKABLE.fullmatch(rid) is None:
        return None
    size = (len(rid) * 6 + 7) // 8
    # `A` is 0 in base64: padding to a whole quantum adds zero bits, cut off after decoding
    bits = binascii.a2b_base64(rid.translate(_ID_TO_BASE64) + "A" * (-len(rid) % 4))
    body = bytes([len(rid)]) + bits[:size]
    return body + b"\0" if len(body) == 16 else body


def _unpack(raw: bytes) -> str | None:
    length = raw[0]
    size = (length * 6 + 7) // 8
    if size + 1 not in (len(raw), len(raw) - 1) or length > MAX_PACKED_ID:
        return None
    text = binascii.b2a_base64(raw[1 : 1 + size], newline=False).decode()
    return text[:length].translate(_BASE64_TO_ID)


class Pseudonymizer:
    """Pseudonyms of one recipient (thread-safe: the caches only ever gain entries)."""

    def __init__(self, key: bytes, hash_key: bytes) -> None:
        self._siv = AESSIV(key)
        self._hash_key = hash_key
        self._forward: dict[tuple[str, str], str] = {}

    def pseudonym(self, resource_type: str, rid: str) -> str:
        cached = self._forward.get((resource_type, rid))
        if cached is not None:
            return cached
        plain = _uuid_bytes(rid)
        if plain is None:
            plain = _pack(rid)
        if plain is None:
            digest = hashlib.blake2b(
                f"{resource_type}/{rid}".encode(), key=self._hash_key, digest_size=30
            ).digest()
            result = HASHED_PREFIX + _text(digest)
        else:
            result = _text(self._siv.encrypt(plain, [resource_type.encode()]))
        if len(self._forward) < _CACHE_LIMIT:
            self._forward[(resource_type, rid)] = result
        return result

    def real_id(self, resource_type: str, pseudonym: str) -> str | None:
        """The original id, or None when `pseudonym` was not made by this key for this type."""
        if pseudonym.startswith(HASHED_PREFIX) or not 24 <= len(pseudonym) <= 64:
            return None
        try:
            plain = self._siv.decrypt(_raw(pseudonym), [resource_type.encode()])
        except (InvalidTag, ValueError):
            return None
        if len(plain) == 16:
            return str(uuid.UUID(bytes=plain))
        return _unpack(plain) if plain else None

    def seal(self, text: str, purpose: str) -> str:
        """Encrypt an opaque server token (a paging cursor) for this recipient."""
        return _text(self._siv.encrypt(text.encode(), [purpose.encode()]))

    def unseal(self, token: str, purpose: str) -> str | None:
        try:
            return self._siv.decrypt(_raw(token), [purpose.encode()]).decode()
        except (InvalidTag, ValueError, UnicodeDecodeError):
            return None

    def keyed_token(self, purpose: str, value: str) -> str:
        """A one-way keyed pseudonym for a value (rule method `pseudonymize`)."""
        digest = hashlib.blake2b(
            f"{purpose}\0{value}".encode(), key=self._hash_key, digest_size=24
        ).digest()
        return _text(digest)


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _uuid_bytes(rid: str) -> bytes | None:
    """The 16 bytes of a canonical lowercase UUID (what str(uuid) writes), else None."""
    if len(rid) != 36 or _CANONICAL_UUID.fullmatch(rid) is None:
        return None
    return bytes.fromhex(rid.replace("-", ""))
