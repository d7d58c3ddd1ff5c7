"""De-duplication of a CGM data submission (HL7 CGM IG 1.0.0, `$submit-cgm-bundle`).

The IG asks submitters to create with `ifNoneExist` on the resource's `identifier`, and
receivers to say how they de-duplicate what comes without. `with_conditions(bundle)`
makes every `POST` entry of a transaction Bundle conditional:

1. an entry with its own `ifNoneExist` is left as it is (201 created, 200 matched, 412 when
   several match, as FHIR says);
2. a resource with an `identifier` (system and value) is created with
   `ifNoneExist=identifier=system|value` on its first such identifier;
3. a resource without one gets an identifier of its own, system
   `https://diatabase.org/fhir/sid/cgm-submission-key`, whose value is the SHA-256 of what
   makes it the same fact (in the spirit of Tidepool's de-duplicator, which hashes a
   datum's user, device, time, type and value): for an Observation its subject, device,
   effective time (as a UTC instant, so `10:15+02:00` and `08:15Z` are one reading), code
   and value (or components); for any other resource its content without `id`, `meta` and
   `text`. The same reading submitted again finds that identifier and creates nothing.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from mappers.bundle import identifier_query

KEY_SYSTEM = "https://diatabase.org/fhir/sid/cgm-submission-key"
_VALUE_FIELDS = ("valueQuantity", "valueCodeableConcept", "valueString", "valueBoolean",
                 "valueInteger", "valueRange", "valueRatio", "valueSampledData",
                 "valueTime", "valueDateTime", "valuePeriod", "component")


def _instant(text: Any) -> Any:
    if not isinstance(text, str) or "T" not in text:
        return text
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    if moment.tzinfo is None:
        return text
    return moment.astimezone(UTC).isoformat()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def submission_key(resource: dict[str, Any]) -> str:
    """The hash that identifies a resource submitted without an identifier."""
    if resource.get("resourceType") == "Observation":
        coding = [(c.get("system"), c.get("code"))
                  for c in (resource.get("code") or {}).get("coding") or ()]
        effective = resource.get("effectiveDateTime") or resource.get("effectiveInstant")
        period = resource.get("effectivePeriod") or {}
        fact = {
            "subject": (resource.get("subject") or {}).get("reference"),
            "device": resource.get("device"),
            "effective": _instant(effective) if effective else
            [_instant(period.get("start")), _instant(period.get("end"))],
            "code": sorted(coding, key=lambda c: (c[0] or "", c[1] or "")),
            "value": {k: resource[k] for k in _VALUE_FIELDS if k in resource},
            "members": resource.get("hasMember"),
        }
    else:
        fact = {k: v for k, v in resource.items() if k not in ("id", "meta", "text")}
    return hashlib.sha256(_canonical(fact).encode()).hexdigest()


def with_conditions(bundle: dict[str, Any]) -> int:
    """Make the Bundle's POST entries conditional (in place); the number of resources
    given a submission key."""
    keyed = 0
    for entry in bundle.get("entry") or ():
        if not isinstance(entry, dict):
            continue
        request, resource = entry.get("request"), entry.get("resource")
        if not isinstance(request, dict) or not isinstance(resource, dict):
            continue
        if str(request.get("method", "")).upper() != "POST" or request.get("ifNoneExist"):
            continue
        identifiers = [i for i in resource.get("identifier") or ()
                       if isinstance(i, dict) and i.get("value")]
        chosen = next((i for i in identifiers if i.get("system")), None)
        if chosen is None:
            chosen = {"system": KEY_SYSTEM, "value": submission_key(resource)}
            resource["identifier"] = [*(resource.get("identifier") or []), chosen]
            keyed += 1
        request["ifNoneExist"] = identifier_query(chosen["system"], chosen["value"])
    return keyed
