"""What the Nightscout documents share: their time, their keys, the uploader as a Device.

Identifier systems (under https://diatabase.org/fhir/sid/): `nightscout-entry`,
`nightscout-treatment`, `nightscout-devicestatus`, `nightscout-profile` hold
`{site}/{de-duplication key}` (a treatment that gives several resources adds `/{part}`);
`nightscout-id` holds the document's `_id` as the uploader sent it or as the server made it
(24 hex digits, like a MongoDB ObjectId, derived from the key so that the same document
always gets the same `_id`).
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from mappers.device_csv.resources import DeviceInfo, device_resource

SID = "https://diatabase.org/fhir/sid/"
ID_SYSTEM = SID + "nightscout-id"
EXTENSION = "https://diatabase.org/fhir/StructureDefinition/nightscout-"
DEVICE_KIND = "Nightscout uploader"


class DocumentError(ValueError):
    """A document that cannot be stored (no time, no value...); the message says why."""


class SkippedDocument(DocumentError):
    """A well-formed document deliberately not stored (a CGM's error code in `sgv`)."""


def number(value: Any, name: str) -> float | int | None:
    """A JSON number or numeric string (old uploaders send `"sgv": "120"`); None if absent."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise DocumentError(f"{name} must be a number")
    if isinstance(value, int | float):
        result: float | int = value
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            raise DocumentError(f"{name} must be a number, not {value[:20]!r}") from None
    else:
        raise DocumentError(f"{name} must be a number")
    if not math.isfinite(result):
        raise DocumentError(f"{name} must be a finite number")
    return int(result) if result == int(result) and abs(result) < 1e15 else result


def _parse_text(text: str) -> datetime:
    cleaned = text.strip().replace("Z", "+00:00")
    if len(cleaned) > 5 and cleaned[-5] in "+-" and cleaned[-3] != ":" and "T" in cleaned:
        cleaned = cleaned[:-2] + ":" + cleaned[-2:]  # +0100 -> +01:00
    moment = datetime.fromisoformat(cleaned)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def moment_of(doc: dict[str, Any], *fields: str) -> datetime:
    """The document's time from the first of `fields` it has: epoch milliseconds (`date`,
    `mills`) or ISO 8601 text (`dateString`, `sysTime`, `created_at`); kept in the offset
    the uploader gave (`utcOffset` minutes, or the text's own)."""
    for name in fields:
        value = doc.get(name)
        if value is None or value == "":
            continue
        try:
            if isinstance(value, int | float) and not isinstance(value, bool):
                moment = datetime.fromtimestamp(float(value) / 1000, UTC)
            elif isinstance(value, str):
                moment = _parse_text(value)
            else:
                continue
        except (ValueError, OverflowError, OSError):
            raise DocumentError(f"{name}: not a time: {str(value)[:40]!r}") from None
        offset = doc.get("utcOffset")
        if isinstance(offset, int | float) and not isinstance(offset, bool) and \
                abs(offset) <= 18 * 60 and moment.utcoffset() == timedelta(0):
            moment = moment.astimezone(timezone(timedelta(minutes=int(offset))))
        return moment
    raise DocumentError(f"no time: one of {', '.join(fields)} is required")


def fhir_time(moment: datetime) -> str:
    """FHIR dateTime with milliseconds when there are any, and the offset (`Z` for UTC)."""
    spec = "milliseconds" if moment.microsecond else "seconds"
    text = moment.isoformat(timespec=spec)
    return text.replace("+00:00", "Z")


def epoch_ms(moment: datetime) -> int:
    return int(round(moment.timestamp() * 1000))


def iso_utc(moment: datetime) -> str:
    """Nightscout's `dateString` / `created_at` shape: UTC with milliseconds and `Z`."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_fhir_time(text: str) -> datetime:
    return _parse_text(text)


def document_id(site: str, key: str) -> str:
    """A 24-hex-digit `_id` for a document the uploader sent without one."""
    return hashlib.sha1(f"{site}/{key}".encode()).hexdigest()[:24]


def given_id(doc: dict[str, Any]) -> str | None:
    value = doc.get("_id")
    if isinstance(value, dict):  # {"$oid": "..."} from some exporters
        value = value.get("$oid")
    return value.strip()[:64] if isinstance(value, str) and value.strip() else None


def uploader(site: str, doc: dict[str, Any], fallback: str = "nightscout") -> DeviceInfo:
    """The uploader named by the document's `device` (or `enteredBy`), one per site."""
    name = doc.get("device") or doc.get("enteredBy") or fallback
    name = str(name).strip()[:200] or fallback
    return DeviceInfo(vendor="nightscout", serial=None, name=name, manufacturer=None,
                      kind=DEVICE_KIND, key=f"nightscout:{site}:{name}")


def uploader_resource(device: DeviceInfo, patient_ref: str) -> dict[str, Any]:
    resource = device_resource(device, patient_ref)
    resource["deviceName"] = [{"name": device.name, "type": "user-friendly-name"}]
    return resource


def extension(name: str, value: str) -> dict[str, Any]:
    return {"url": EXTENSION + name, "valueString": value}


def extension_value(resource: dict[str, Any], name: str) -> str | None:
    for item in resource.get("extension") or ():
        if item.get("url") == EXTENSION + name:
            return item.get("valueString")
    return None


def identifier_value(resource: dict[str, Any], system: str) -> str | None:
    for item in resource.get("identifier") or ():
        if item.get("system") == system:
            return item.get("value")
    return None
