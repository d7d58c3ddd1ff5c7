"""Per-recipient keys, all derived from one master secret (DIATABASE_DEID_SECRET).

HKDF-SHA256 with a fixed salt and an `info` naming the purpose and the recipient: keys of
two recipients (or two purposes) are independent, and none is ever stored. Changing the
master secret changes every pseudonym, so it must be kept (and backed up) like a database
encryption key.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SECRET_ENV = "DIATABASE_DEID_SECRET"
SIGNING_KEY_ENV = "DIATABASE_DEID_SIGNING_KEY_FILE"
SALT = b"diatabase-deid-v1"
MIN_SECRET_BYTES = 16
LINKAGE_STAGE1 = "linkage-stage1"  # one key for the warehouse (linkage.py)


class DeidConfigError(ValueError):
    """The de-identification configuration is missing or wrong (secret, recipients, rules)."""


def master_secret(value: str | None = None) -> bytes:
    secret = value if value is not None else os.environ.get(SECRET_ENV, "")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise DeidConfigError(
            f"{SECRET_ENV} must be set to a secret of at least {MIN_SECRET_BYTES} bytes"
        )
    return secret.encode()


def derive(master: bytes, purpose: str, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=SALT, info=purpose.encode()).derive(
        master
    )


@dataclass(frozen=True)
class RecipientKeys:
    """The keys one recipient's output is made with."""

    recipient_id: str
    pseudonym: bytes  # AES-SIV (512-bit key: AES-256 in SIV mode), reversible pseudonyms
    hashed_pseudonym: bytes  # keyed BLAKE2b for ids too long to encrypt, and `pseudonymize`
    date_shift: bytes  # keyed BLAKE2b -> the per-patient day shift
    watermark: bytes  # keyed BLAKE2b -> the seconds of every timestamp
    perturb: bytes  # keyed BLAKE2b -> noise for `perturb` rules
    value_watermark: bytes  # keyed BLAKE2b -> the residue of glucose values (value_mark.py)
    linkage_stage1: bytes  # HMAC-SHA-256 of identity traits: the warehouse's, not per recipient

    @classmethod
    def derive(cls, master: bytes, recipient_id: str) -> RecipientKeys:
        def key(purpose: str, length: int) -> bytes:
            return derive(master, f"{purpose}:{recipient_id}", length)

        return cls(
            recipient_id,
            key("pseudonym", 64),
            key("hashed-pseudonym", 32),
            key("date-shift", 32),
            key("watermark", 32),
            key("perturb", 32),
            key("value-watermark", 32),
            derive(master, LINKAGE_STAGE1, 32),
        )


def signing_key(master: bytes | None, key_file: str | None = None) -> Ed25519PrivateKey:
    """The Ed25519 key exports are signed with: a PEM (PKCS#8, unencrypted) file when one is
    given (or named by DIATABASE_DEID_SIGNING_KEY_FILE), else derived from the master
    secret, so that one secret is enough to export and to verify."""
    key_file = key_file or os.environ.get(SIGNING_KEY_ENV) or None
    if key_file:
        loaded = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise DeidConfigError(f"{key_file} does not hold an Ed25519 private key")
        return loaded
    if master is None:
        raise DeidConfigError(f"no signing key: set {SECRET_ENV} or give a key file")
    return Ed25519PrivateKey.from_private_bytes(derive(master, "export-signing", 32))


def public_key_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]
