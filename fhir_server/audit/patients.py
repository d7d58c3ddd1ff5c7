"""Which patients a resource concerns: the patients whose compartment it is in.

A resource of a type the Patient CompartmentDefinition lists (search/compartment.py) is in
the compartment of every Patient it references; a Patient is in its own. The references
are found in the stored JSON text rather than through the search index extractor: the
same answer for the types of this server's data at 0.6 µs a resource instead of 26 µs
(measured on a glucose Observation), which is what lets every search page be audited
without slowing it. It errs on the side of naming a patient: a reference to a Patient in
an element that is not one of the compartment's parameters (Observation.focus) counts too,
as the data returned does disclose it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache

from fhir_server.search.compartment import compartment_resource_types
from fhir_server.storage.base import StoredResource

# "reference":"Patient/123", an absolute URL ending in Patient/123, or a version of it.
_PATIENT_REFERENCE = re.compile(
    rb'"reference":\s*"(?:[^"]*/)?Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[^"]*)?"'
)


@cache
def _in_compartment() -> frozenset[str]:
    return frozenset(compartment_resource_types("Patient"))


def patients_of(resource_type: str, rid: str, json: bytes | None) -> set[str]:
    """The ids of the patients whose compartment this resource is in."""
    if resource_type == "Patient":
        found = {rid}
    elif resource_type not in _in_compartment() or json is None:
        return set()
    else:
        found = set()
    if json is not None and b"Patient/" in json:
        found.update(m.decode() for m in _PATIENT_REFERENCE.findall(json))
    return found


def touches_patient_data(resources: Iterable[StoredResource]) -> bool:
    """Whether any of these is a Patient or of a type in the Patient compartment."""
    in_compartment = _in_compartment()
    return any(r.resource_type == "Patient" or r.resource_type in in_compartment for r in resources)


def patients_of_all(resources: Iterable[StoredResource]) -> set[str]:
    """`patients_of` of each resource, together. The texts are searched as one (joined by a
    NUL byte, which JSON text never holds raw, so no match spans two resources): a page of
    50 Observations costs ~40 µs instead of ~200 µs resource by resource, and the audit
    writer runs this for every search page."""
    in_compartment = _in_compartment()
    found: set[str] = set()
    texts = []
    for stored in resources:
        if stored.resource_type == "Patient":
            found.add(stored.id)
        elif stored.resource_type not in in_compartment:
            continue
        if stored.json is not None:
            texts.append(stored.json)
    joined = b"\x00".join(texts)
    if b"Patient/" in joined:
        found.update(m.decode() for m in set(_PATIENT_REFERENCE.findall(joined)))
    return found
