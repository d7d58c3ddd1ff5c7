"""The objection (opt-out) registry: which patients object to the research use of their
data, read from the Consent resources the store holds.

An objection is an R4 `Consent` with `status` active, `scope` research
(consentscope#research), a `patient`, and `policyRule` OPTOUT (v3-ActCode) or a
`provision.type` deny. It is written like any resource (the REST API under a Consent
write scope, `diatabase consent object`), so every change is a stored version and an audit
event of the write. Withdrawing it (status inactive, or a delete) restores research use.

`Objections.current()` is asked by every research output on each request, page or export
batch: it reads the newest Consent version and the Consent count (two indexed look-ups)
and reads the objections again only when they changed, so an objection applies from the
moment it is committed, in every process sharing the database.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from fhir_server.search.visibility import visible_as
from fhir_server.storage.base import StoredResource

SCOPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentscope"
ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
LOINC = "http://loinc.org"
PATIENT_CONSENT = "59284-0"  # LOINC "Patient Consent": the category R4 requires one of
SEARCH_PAGE = 1000


def is_objection(consent: dict[str, Any]) -> bool:
    """An active research opt-out of one patient."""
    if consent.get("resourceType") != "Consent" or consent.get("status") != "active":
        return False
    if objecting_patient(consent) is None:
        return False
    scope = consent.get("scope") or {}
    if not any(
        c.get("system") == SCOPE_SYSTEM and c.get("code") == "research"
        for c in scope.get("coding") or ()
    ):
        return False
    rule = consent.get("policyRule") or {}
    opt_out = any(
        c.get("system") == ACT_CODE_SYSTEM and c.get("code") == "OPTOUT"
        for c in rule.get("coding") or ()
    )
    return opt_out or (consent.get("provision") or {}).get("type") == "deny"


def objecting_patient(consent: dict[str, Any]) -> str | None:
    """The id of the Consent's patient when it is a local `Patient/<id>` reference."""
    reference = (consent.get("patient") or {}).get("reference")
    if not isinstance(reference, str) or not reference.startswith("Patient/"):
        return None
    rid = reference.split("/", 2)[1]
    return rid or None


def objection_consent(patient_id: str, source: str, date_time: str) -> dict[str, Any]:
    """A new objection of `patient_id`, recorded at `date_time`, received through `source`
    (how the request came: a letter, the portal, a consultation)."""
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [{"system": SCOPE_SYSTEM, "code": "research", "display": "Research"}]
        },
        "category": [
            {"coding": [{"system": LOINC, "code": PATIENT_CONSENT, "display": "Patient Consent"}]}
        ],
        "patient": {"reference": f"Patient/{patient_id}"},
        "dateTime": date_time,
        "sourceAttachment": {"title": source},
        "policyRule": {
            "coding": [{"system": ACT_CODE_SYSTEM, "code": "OPTOUT", "display": "opt-out"}]
        },
        "provision": {"type": "deny"},
    }


@dataclass(frozen=True)
class Objection:
    consent_id: str
    patient: str
    date_time: str | None
    source: str | None


@dataclass(frozen=True)
class ObjectionSet:
    """The objections in force at one moment. `signature` changes with any Consent write."""

    signature: tuple[Any, ...]
    objections: tuple[Objection, ...]
    patients: frozenset[str]

    def objects(self, patient_id: str | None) -> bool:
        return patient_id is not None and patient_id in self.patients


class Objections:
    """The registry over one storage (a `Storage`, or a service's wrapped storage)."""

    def __init__(self, storage: Any, parse: Any) -> None:
        self._storage = storage
        self._query = parse("Consent", [("scope", f"{SCOPE_SYSTEM}|research")], True)
        self._held: ObjectionSet | None = None
        self._lock = threading.Lock()

    def signature(self) -> tuple[Any, ...]:
        with visible_as(None):  # the registry is the server's own reading
            newest = self._storage.history("Consent", None, None, None, 1, None).entries
            count = self._storage.count("Consent")
        head = (newest[0].id, newest[0].version, newest[0].last_updated) if newest else None
        return (head, count)

    def current(self) -> ObjectionSet:
        """The objections in force now (read again only when a Consent changed)."""
        signature = self.signature()
        held = self._held
        if held is not None and held.signature == signature:
            return held
        with self._lock:
            held = self._held
            if held is None or held.signature != signature:
                found = tuple(self._read())
                held = self._held = ObjectionSet(
                    signature, found, frozenset(o.patient for o in found)
                )
            return held

    def _read(self) -> Iterator[Objection]:
        cursor = None
        with visible_as(None):
            while True:
                page = self._storage.search(self._query, SEARCH_PAGE, cursor)
                for stored in page.matches:
                    objection = as_objection(stored)
                    if objection is not None:
                        yield objection
                cursor = page.next_cursor
                if cursor is None:
                    return


def as_objection(stored: StoredResource) -> Objection | None:
    if stored.deleted or stored.json is None:
        return None
    consent = orjson.loads(stored.json)
    if not is_objection(consent):
        return None
    patient = objecting_patient(consent)
    assert patient is not None
    source = (consent.get("sourceAttachment") or {}).get("title")
    if source is None:
        source = (consent.get("sourceReference") or {}).get("reference")
    return Objection(stored.id, patient, consent.get("dateTime"), source)
