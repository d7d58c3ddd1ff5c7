"""A hand-made search parameter registry for the query parser tests.

A TEST DOUBLE of `fhir_server.search.registry.SearchParamRegistry`: it answers
`get(resource_type, code)` from a few dozen hand-made SearchParam entries. The parser tests
run against the real registry (search_registry_real.py); this double is kept only where a
test needs a parameter R4 does not define (a reference parameter without declared target).
"""

from __future__ import annotations

from fhir_server.search.types import Component, SearchParam

_SP = "http://hl7.org/fhir/SearchParameter/"

_PRACTITIONERS = ("Practitioner", "PractitionerRole")
_OBS_PERFORMER = (
    "CareTeam",
    "Organization",
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "RelatedPerson",
)

_COMMON = {
    "_id": "token",
    "_lastUpdated": "date",
    "_tag": "token",
    "_profile": "uri",
    "_security": "token",
    "_source": "uri",
    "_text": "special",
}

# (resource type, code, type, targets or components)
_TABLE: list[tuple[str, str, str, tuple]] = [
    ("Patient", "name", "string", ()),
    ("Patient", "family", "string", ()),
    ("Patient", "given", "string", ()),
    ("Patient", "birthdate", "date", ()),
    ("Patient", "gender", "token", ()),
    ("Patient", "identifier", "token", ()),
    ("Patient", "active", "token", ()),
    ("Patient", "address-city", "string", ()),
    ("Patient", "organization", "reference", ("Organization",)),
    ("Patient", "general-practitioner", "reference", ("Organization", *_PRACTITIONERS)),
    ("Patient", "link", "reference", ("Patient", "RelatedPerson")),
    ("Observation", "code", "token", ()),
    ("Observation", "category", "token", ()),
    ("Observation", "status", "token", ()),
    ("Observation", "identifier", "token", ()),
    ("Observation", "date", "date", ()),
    ("Observation", "value-quantity", "quantity", ()),
    ("Observation", "value-string", "string", ()),
    ("Observation", "value-concept", "token", ()),
    ("Observation", "value-date", "date", ()),
    ("Observation", "component-code", "token", ()),
    ("Observation", "component-value-quantity", "quantity", ()),
    ("Observation", "subject", "reference", ("Device", "Group", "Location", "Patient")),
    ("Observation", "patient", "reference", ("Patient",)),
    ("Observation", "performer", "reference", _OBS_PERFORMER),
    ("Observation", "encounter", "reference", ("Encounter",)),
    ("Observation", "focus", "reference", ()),  # "Any": no declared target
    (
        "Observation",
        "code-value-quantity",
        "composite",
        ("clinical-code", "Observation-value-quantity"),
    ),
    ("Observation", "code-value-date", "composite", ("clinical-code", "Observation-value-date")),
    (
        "Observation",
        "component-code-value-quantity",
        "composite",
        ("Observation-component-code", "Observation-component-value-quantity"),
    ),
    ("Condition", "code", "token", ()),
    ("Condition", "clinical-status", "token", ()),
    ("Condition", "onset-date", "date", ()),
    ("Condition", "subject", "reference", ("Group", "Patient")),
    ("Condition", "patient", "reference", ("Patient",)),
    ("Condition", "asserter", "reference", ("Patient", "RelatedPerson", *_PRACTITIONERS)),
    ("Condition", "encounter", "reference", ("Encounter",)),
    ("Encounter", "patient", "reference", ("Patient",)),
    ("Encounter", "subject", "reference", ("Group", "Patient")),
    ("Encounter", "service-provider", "reference", ("Organization",)),
    ("Encounter", "date", "date", ()),
    ("Encounter", "class", "token", ()),
    ("Organization", "name", "string", ()),
    ("Organization", "identifier", "token", ()),
    ("Organization", "partof", "reference", ("Organization",)),
    ("Organization", "address-city", "string", ()),
    ("Practitioner", "name", "string", ()),
    ("Practitioner", "family", "string", ()),
    ("Practitioner", "identifier", "token", ()),
    ("Location", "name", "string", ()),
    ("Location", "address-city", "string", ()),
    ("Location", "near", "special", ()),
    ("Location", "organization", "reference", ("Organization",)),
    ("Group", "code", "token", ()),
    ("Group", "member", "reference", ("Device", "Group", "Medication", "Patient", "Practitioner")),
    ("Device", "device-name", "string", ()),
    ("Device", "organization", "reference", ("Organization",)),
    # Custom SearchParameter (as the server may load): a string "birthdate" on Device, so
    # that "subject.birthdate" means a date on Patient but a string on Device.
    ("Device", "birthdate", "string", ()),
    ("MedicationStatement", "code", "token", ()),
    ("MedicationStatement", "subject", "reference", ("Group", "Patient")),
    ("MedicationStatement", "patient", "reference", ("Patient",)),
    ("MedicationStatement", "effective", "date", ()),
    ("MedicationStatement", "medication", "reference", ("Medication",)),
    ("MedicationRequest", "subject", "reference", ("Group", "Patient")),
    ("MedicationRequest", "patient", "reference", ("Patient",)),
    ("Medication", "code", "token", ()),
    ("AuditEvent", "entity", "reference", ()),
    ("AuditEvent", "agent", "reference", ("Device", "Organization", "Patient", *_PRACTITIONERS)),
    ("AuditEvent", "patient", "reference", ("Patient",)),
    ("ValueSet", "url", "uri", ()),
    ("RiskAssessment", "probability", "number", ()),
    ("RiskAssessment", "subject", "reference", ("Group", "Patient")),
    ("ValueSet", "name", "string", ()),
]


def _param(resource_type: str, code: str, kind: str, extra: tuple) -> SearchParam:
    if kind == "composite":
        components = tuple(Component(_SP + name, "") for name in extra)
        return SearchParam(code, "composite", resource_type, None, components=components)
    return SearchParam(code, kind, resource_type, f"{resource_type}.{code}", target=extra)


class HandMadeRegistry:
    """Answers `get` like SearchParamRegistry does: common parameters on every type."""

    def __init__(self) -> None:
        self._params = {
            (resource_type, code): _param(resource_type, code, kind, extra)
            for resource_type, code, kind, extra in _TABLE
        }
        self._types = {resource_type for resource_type, *_ in _TABLE}

    def get(self, resource_type: str, code: str) -> SearchParam | None:
        found = self._params.get((resource_type, code))
        if found is not None:
            return found
        if code in _COMMON and (resource_type in self._types or resource_type == "Resource"):
            return SearchParam(code, _COMMON[code], "Resource", None)  # type: ignore[arg-type]
        return None


REGISTRY = HandMadeRegistry()
