"""Recording and withdrawing objections through the FHIR service (so that each change is a
stored Consent version and an audit event of its write, whichever door made it)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from fhir_server.model.outcome import error
from fhir_server.rights.objections import Objection, Objections, objection_consent


def registry(service: Any) -> Objections:
    return Objections(service.storage, service.search.parse)


def record_objection(service: Any, patient_id: str, source: str) -> str:
    """Store an objection of `patient_id` (who must exist) and return the Consent's id;
    an objection already in force is returned as it is (recording twice changes nothing)."""
    stored = service.storage.read("Patient", patient_id)
    if stored is None or stored.deleted:
        raise error(404, "not-found", f"Patient/{patient_id} is not known")
    for objection in registry(service).current().objections:
        if objection.patient == patient_id:
            return objection.consent_id
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    result = service.resources.create("Consent", objection_consent(patient_id, source, now))
    return result.stored.id


def withdraw_objection(service: Any, patient_id: str) -> list[str]:
    """Make every objection of `patient_id` inactive; the ids of the Consents changed."""
    changed = []
    for objection in registry(service).current().objections:
        if objection.patient != patient_id:
            continue
        stored = service.storage.read("Consent", objection.consent_id)
        if stored is None or stored.json is None:
            continue
        consent = orjson.loads(stored.json)
        consent["status"] = "inactive"
        service.resources.update("Consent", objection.consent_id, consent)
        changed.append(objection.consent_id)
    return changed


def objections_in_force(service: Any) -> list[Objection]:
    found = registry(service).current().objections
    return sorted(found, key=lambda o: (o.date_time or "", o.patient))
