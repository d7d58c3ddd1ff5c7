"""Signed export manifests (Ed25519 over the canonical manifest) and their verification.

The signature covers the manifest without its `signature` member, serialized as JSON with
sorted keys and no spaces; the manifest lists every NDJSON file with its SHA-256, so one
signature covers every byte of the export. `verify_export` checks the signature with the
key the verifier trusts (derived from the master secret, or a key file), never with the
public key written in the manifest (that one is informative: anyone can re-sign).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fhir_server.deid.keys import key_id, public_key_text

MANIFEST = "manifest.json"


def canonical(manifest: dict[str, Any]) -> bytes:
    unsigned = {k: v for k, v in manifest.items() if k != "signature"}
    return orjson.dumps(unsigned, option=orjson.OPT_SORT_KEYS)


def sign(manifest: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    public = key.public_key()
    signed = dict(manifest)
    signed["signature"] = {
        "algorithm": "Ed25519",
        "keyId": key_id(public),
        "publicKey": public_key_text(public),
        "value": base64.b64encode(key.sign(canonical(manifest))).decode(),
    }
    return signed


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class VerifyReport:
    ok: bool
    problems: list[str] = field(default_factory=list)
    recipient: str | None = None
    files: int = 0


def verify_export(folder: str | Path, trusted: Ed25519PublicKey) -> VerifyReport:
    folder = Path(folder)
    problems: list[str] = []
    try:
        manifest = orjson.loads((folder / MANIFEST).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        return VerifyReport(False, [f"cannot read {MANIFEST}: {exc}"])
    signature = manifest.get("signature") or {}
    try:
        trusted.verify(base64.b64decode(signature.get("value", "")), canonical(manifest))
    except (InvalidSignature, ValueError):
        problems.append("the manifest signature is not valid for the trusted key")
    listed = set()
    for item in manifest.get("output", []):
        name = item.get("file", "")
        listed.add(name)
        path = folder / name
        if Path(name).name != name or not path.is_file():
            problems.append(f"{name}: missing")
            continue
        if file_sha256(path) != item.get("sha256"):
            problems.append(f"{name}: SHA-256 differs from the manifest (file altered)")
    for path in sorted(folder.glob("*.ndjson")):
        if path.name not in listed:
            problems.append(f"{path.name}: not listed in the manifest")
    return VerifyReport(not problems, problems, manifest.get("recipient"), len(listed))
