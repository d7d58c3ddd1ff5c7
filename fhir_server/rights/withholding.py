"""What a research recipient must not be given because its patient objects: the one check
every research output makes on what it is about to release (the de-identification
facade's transforms, which its reads, searches, includes, totals, `$everything` and
research tables go through; the de-identified export, chunk by chunk; the view stores).

It works on the pseudonymized bodies (what is released), with the recipient's pseudonyms
of the objecting patients: a Patient whose id is one of them, and any resource that refers
to one (`"Patient/<pseudonym>"`: the de-identification engine keeps references as
`Type/id` and drops every other form), is withheld. The objections are asked again on
every call (objections.py: two indexed look-ups), so an objection applies to the next
page, request or export chunk after its commit.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

import orjson

from fhir_server.rights.objections import Objections, ObjectionSet

_PATIENT_TYPE = b'{"resourceType":"Patient"'
_PATIENT_HEAD = _PATIENT_TYPE + b',"id":"'


class _Matcher:
    def __init__(self, pseudonyms: frozenset[str]) -> None:
        self.pseudonyms = pseudonyms
        names = b"|".join(re.escape(p.encode()) for p in sorted(pseudonyms))
        self.refers = re.compile(rb'"Patient/(?:' + names + rb')"')

    def withholds(self, body: bytes) -> bool:
        if body.startswith(_PATIENT_TYPE) and _patient_id(body) in self.pseudonyms:
            return True
        return self.refers.search(body) is not None


def _patient_id(body: bytes) -> str | None:
    if body.startswith(_PATIENT_HEAD):  # as the engine writes it: type, then id
        end = body.find(b'"', len(_PATIENT_HEAD))
        return body[len(_PATIENT_HEAD) : end].decode()
    found = orjson.loads(body).get("id")
    return found if isinstance(found, str) else None


class Withholding:
    def __init__(self, objections: Objections) -> None:
        self.objections = objections
        self._matchers: dict[str, tuple[tuple[Any, ...], _Matcher]] = {}
        self._lock = threading.Lock()

    @classmethod
    def of(cls, service: Any) -> Withholding:
        return cls(Objections(service.storage, service.search.parse))

    def current(self) -> ObjectionSet:
        return self.objections.current()

    def matcher(self, engine: Any, objections: ObjectionSet | None = None) -> _Matcher | None:
        """The recipient's matcher for the objections now (None: nobody objects)."""
        objections = objections or self.objections.current()
        if not objections.patients:
            return None
        recipient = engine.keys.recipient_id
        held = self._matchers.get(recipient)
        if held is not None and held[0] == objections.signature:
            return held[1]
        pseudonyms = frozenset(
            engine.pseudonyms.pseudonym("Patient", p) for p in objections.patients
        )
        matcher = _Matcher(pseudonyms)
        with self._lock:
            self._matchers[recipient] = (objections.signature, matcher)
        return matcher

    def released(self, engine: Any, bodies: Sequence[bytes | None]) -> list[bytes | None]:
        """`bodies` (pseudonymized for `engine`'s recipient) with what objections withhold
        replaced by None."""
        matcher = self.matcher(engine)
        if matcher is None:
            return list(bodies)
        return [None if b is not None and matcher.withholds(b) else b for b in bodies]
