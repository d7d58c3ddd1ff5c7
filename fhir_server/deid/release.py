"""Which patients a recipient may see, and in which form: decided here, once, for the
facade and for exports alike (the place to add further reasons not to release a patient,
such as objections).

A `Release` is computed over the recipient's whole population (every current Patient, as
the engine pseudonymizes it for that recipient):

- k-anonymity on the quasi-identifiers (kanonymity.py): a patient in a class smaller than
  k loses its postal prefix, then its birth year; what is still rare is not released,
  nor is anything of that patient (every resource whose patient reference names it);
- linkage keys, for a recipient with `"linkage": true`: the stage-2 key the third party
  returned for the patient's traits (linkage.py) becomes a Patient identifier
  `urn:diatabase:linkage:<recipient>`.

The facade keeps one Release per recipient and computes it again only when the Patients
changed (their count or newest version), so a patient is served the same way on every
request until the population changes; an export computes its own over what it reads.
Everything is keyed by the pseudonyms the recipient sees: a body is checked without
parsing unless it is a Patient to change.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from fhir_server.deid.engine import Deidentifier
from fhir_server.deid.kanonymity import KAnonymityReport, enforce, generalize
from fhir_server.deid.linkage import LinkageStore, stage1, system, traits
from fhir_server.storage.base import StoredResource

_PATIENT_HEAD = b'{"resourceType":"Patient","id":"'


@dataclass
class Release:
    recipient: str
    report: KAnonymityReport
    generalized: dict[str, tuple[str, ...]] = field(default_factory=dict)  # pseudonym ->
    linkage: dict[str, str] = field(default_factory=dict)  # pseudonym -> linkage key
    suppressed: frozenset[str] = frozenset()  # pseudonyms of patients not released
    classes: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # pseudonym -> class
    _refers: re.Pattern[bytes] | None = None

    def __post_init__(self) -> None:
        if self.suppressed:
            names = b"|".join(re.escape(p.encode()) for p in sorted(self.suppressed))
            self._refers = re.compile(rb'"Patient/(?:' + names + rb')"')

    def body(self, resource_type: str, body: bytes | None) -> bytes | None:
        """The released form of a pseudonymized resource; None: not released."""
        if body is None:
            return None
        if resource_type == "Patient":
            pseudonym = _patient_id(body)
            if pseudonym is None:
                return body
            if pseudonym in self.suppressed:
                return None
            fields = self.generalized.get(pseudonym)
            key = self.linkage.get(pseudonym)
            if fields is None and key is None:
                return body
            patient = orjson.loads(body)
            if fields:
                generalize(patient, fields)
            if key is not None:
                identifier = {"system": system(self.recipient), "value": key}
                patient["identifier"] = [*patient.get("identifier", ()), identifier]
            return orjson.dumps(patient)
        if self._refers is not None and self._refers.search(body) is not None:
            return None
        return body

    def describe(self) -> str:
        """For the facade's response header: what the recipient's answers are held to."""
        report = self.report
        return (
            f"k={report.k}; quasi-identifiers={','.join(report.quasi_identifiers)}; "
            f"generalized={len(self.generalized)}; suppressed={len(self.suppressed)}"
        )


def compute(
    engine: Deidentifier,
    patients: Iterable[tuple[StoredResource, bytes | None]],
    linkage: LinkageStore | None = None,
) -> Release:
    """The Release of one recipient over (stored Patient, its pseudonymized JSON) pairs;
    `linkage`: the stored stage-2 keys, for a recipient allowed linkage (else None)."""
    released: dict[str, dict[str, Any]] = {}
    stage1_of: dict[str, str] = {}
    key = engine.keys.linkage_stage1
    for stored, body in patients:
        if body is None:
            continue  # suppressed by the rules: never served anyway
        patient = orjson.loads(body)
        pseudonym = patient.get("id")
        if not isinstance(pseudonym, str):
            continue
        released[pseudonym] = patient
        if linkage is not None and stored.json is not None:
            found = traits(orjson.loads(stored.json))
            if found is not None:
                stage1_of[pseudonym] = stage1(key, found)
    rules = engine.rules
    report = enforce(released, rules.k, rules.quasi_identifiers)
    keys: dict[str, str] = {}
    if linkage is not None and stage1_of:
        by_stage1 = linkage.keys(engine.keys.recipient_id, sorted(set(stage1_of.values())))
        keys = {p: by_stage1[s] for p, s in stage1_of.items() if s in by_stage1}
    return Release(
        engine.keys.recipient_id,
        report,
        generalized={p: f for p, f in report.removed.items() if p not in report.suppressed},
        linkage=keys,
        suppressed=frozenset(report.suppressed),
        classes=dict(report.classes),
    )


def _patient_id(body: bytes) -> str | None:
    if not body.startswith(_PATIENT_HEAD):
        found = orjson.loads(body).get("id")
        return found if isinstance(found, str) else None
    end = body.find(b'"', len(_PATIENT_HEAD))
    return body[len(_PATIENT_HEAD) : end].decode() if end > 0 else None
