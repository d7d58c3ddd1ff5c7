"""Recipients (research projects): who may read the facade, and with which rules.

The recipients file (`diatabase serve --deid-recipients FILE`, also read by the `deid`
commands) is a JSON list of objects:

    {"id": "cohort-a",                    # [A-Za-z0-9-.]{1,64}
     "api_key_sha256": "<hex sha-256 of the API key>",
     "rules": "strict.json" | {...},      # optional: another rules file (relative to this
                                          # file) or an inline rules object
     "parameters": {"dateShiftDays": 90}, # optional: parameters over the rules'
     "linkage": true}                     # optional: release linkage keys (linkage.py)

Only the hash of an API key is stored; `authenticate` hashes what the client sends and
compares in constant time with every recipient's hash.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from fhir_server.deid.engine import Deidentifier
from fhir_server.deid.keys import DeidConfigError, RecipientKeys
from fhir_server.deid.rules import Rules, default_config, load_rules, with_parameters

_RECIPIENT_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Recipient:
    id: str
    api_key_sha256: str
    rules: Rules
    linkage: bool = False  # the project may receive linkage keys

    def deidentifier(self, master: bytes) -> Deidentifier:
        return Deidentifier(RecipientKeys.derive(master, self.id), self.rules)


def api_key_hash(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


class Recipients:
    """The configured recipients, with one Deidentifier each (its caches live with it)."""

    def __init__(self, recipients: list[Recipient], master: bytes) -> None:
        self._by_id = {r.id: r for r in recipients}
        self._master = master
        self._engines = {r.id: r.deidentifier(master) for r in recipients}

    @classmethod
    def load(cls, path: str | Path, master: bytes, rules_path: str | None = None) -> Recipients:
        return cls(load_recipients(path, rules_path), master)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, recipient_id: str) -> Recipient:
        try:
            return self._by_id[recipient_id]
        except KeyError:
            raise DeidConfigError(f"no recipient {recipient_id!r} is configured") from None

    def engine(self, recipient_id: str) -> Deidentifier:
        self.get(recipient_id)
        return self._engines[recipient_id]

    def fresh_engine(self, recipient_id: str) -> Deidentifier:
        """An engine of its own (for a background export: caches are not shared)."""
        return self.get(recipient_id).deidentifier(self._master)

    def with_linkage(self) -> set[str]:
        return {r.id for r in self._by_id.values() if r.linkage}

    def keys(self, recipient_id: str) -> RecipientKeys:
        return self.engine(recipient_id).keys

    def authenticate(self, authorization: str | None) -> Recipient | None:
        """The recipient whose API key is the bearer token, or None."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        offered = api_key_hash(token.strip())
        found = None
        for recipient in self._by_id.values():
            # Compare with every recipient (no early exit) so timing tells nothing.
            if hmac.compare_digest(offered, recipient.api_key_sha256):
                found = recipient
        return found


def load_recipients(path: str | Path, rules_path: str | None = None) -> list[Recipient]:
    path = Path(path)
    try:
        items = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise DeidConfigError(f"cannot read the recipients file {path}: {exc}") from None
    except orjson.JSONDecodeError as exc:
        raise DeidConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(items, list):
        raise DeidConfigError(f"{path}: the recipients file is a JSON list")
    base_rules = load_rules(rules_path) if rules_path else load_rules()
    seen: set[str] = set()
    recipients = []
    for number, item in enumerate(items, 1):
        recipients.append(_recipient(item, number, path.parent, base_rules, rules_path))
        if recipients[-1].id in seen:
            raise DeidConfigError(f"{path}: recipient {recipients[-1].id!r} appears twice")
        seen.add(recipients[-1].id)
    return recipients


def _recipient(
    item: Any, number: int, folder: Path, base_rules: Rules, rules_path: str | None
) -> Recipient:
    if not isinstance(item, dict):
        raise DeidConfigError(f"recipient {number}: an object is expected")
    rid, key_hash = item.get("id"), item.get("api_key_sha256")
    if not isinstance(rid, str) or not _RECIPIENT_ID.fullmatch(rid):
        raise DeidConfigError(f"recipient {number}: `id` must match [A-Za-z0-9-.]{{1,64}}")
    if not isinstance(key_hash, str) or not _SHA256_HEX.fullmatch(key_hash.lower()):
        raise DeidConfigError(f"recipient {rid}: `api_key_sha256` must be 64 hex digits")
    rules = base_rules
    config = item.get("rules")
    parameters = item.get("parameters")
    if config is not None or parameters:
        if config is None:
            config = orjson.loads(Path(rules_path).read_bytes()) if rules_path else None
            config = config or default_config()
        elif isinstance(config, str):
            config = orjson.loads((folder / config).read_bytes())
        if parameters:
            config = with_parameters(config, parameters)
        rules = load_rules(config)
    linkage = item.get("linkage", False)
    if not isinstance(linkage, bool):
        raise DeidConfigError(f"recipient {rid}: `linkage` is true or false")
    return Recipient(rid, key_hash.lower(), rules, linkage)
