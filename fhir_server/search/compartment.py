"""Compartments (`GET /Patient/123/Observation`, `$everything`) from the official R4
CompartmentDefinitions vendored in data/ (see data/SOURCES.md).

A resource is in Patient/123's compartment when any of the reference parameters the
definition lists for its type points to Patient/123: the clauses returned here are to be
ORed (unlike SearchQuery.clauses, which are ANDed).
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

from fhir_server.search.errors import SearchError
from fhir_server.search.lookup import ParamLookup
from fhir_server.search.query import Clause, CompartmentClause
from fhir_server.search.values import ReferenceValue, TokenValue

_DATA = Path(__file__).parent / "data"
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# CompartmentDefinition's placeholder for "the compartment's own resource".
_SELF = "{def}"


@cache
def _definitions() -> dict[str, dict[str, tuple[str, ...]]]:
    """compartment type -> resource type -> reference parameter codes (read once)."""
    definitions: dict[str, dict[str, tuple[str, ...]]] = {}
    for path in sorted(_DATA.glob("CompartmentDefinition-*.json")):
        definition = json.loads(path.read_text(encoding="utf-8"))
        definitions[definition["code"]] = {
            entry["code"]: tuple(entry.get("param", ()))
            for entry in definition.get("resource", ())
            if entry.get("param")
        }
    return definitions


def compartment_types() -> tuple[str, ...]:
    return tuple(sorted(_definitions()))


def compartment_resource_types(compartment_type: str) -> tuple[str, ...]:
    """The resource types that can be in a compartment of this type (for $everything)."""
    return tuple(sorted(_compartment(compartment_type)))


def compartment_params(compartment_type: str, resource_type: str) -> tuple[str, ...]:
    """The parameter codes linking `resource_type` to the compartment, e.g.
    ("Patient", "Observation") -> ("subject", "performer"); () when not in it."""
    return _compartment(compartment_type).get(resource_type, ())


def compartment_clause(
    compartment_type: str, compartment_id: str | None, resource_type: str, registry: ParamLookup
) -> list[Clause]:
    """The clauses, to be ORed, selecting `resource_type` resources in the compartment
    `compartment_type`/`compartment_id`. The compartment's own resource (Patient/123 in
    its own compartment) comes through an `_id` clause.

    Raises SearchError when the type is not in that compartment: returning no clause would
    read as "no restriction" and leak every resource of the type.
    """
    if compartment_id is not None and not _FHIR_ID.fullmatch(compartment_id):
        raise SearchError(f"not a valid id: {compartment_id!r}")
    codes = compartment_params(compartment_type, resource_type)
    clauses: list[Clause] = []
    if resource_type == compartment_type and compartment_id is None:
        return clauses  # every one is a member (CompartmentClause.everyone)
    if resource_type == compartment_type:
        id_param = registry.get(resource_type, "_id")
        if id_param is not None:
            clauses.append(Clause(id_param, None, (TokenValue(None, compartment_id, False),)))
    reference = ReferenceValue(type=compartment_type, id=compartment_id)
    for code in codes:
        if code == _SELF:
            continue
        param = registry.get(resource_type, code)
        # The definition names parameters of the full R4 set; a registry that lacks one
        # (or where it is not a reference) simply has no such link to follow.
        if param is None or param.type != "reference":
            continue
        if param.target and compartment_type not in param.target:
            continue
        clauses.append(Clause(param, None, (reference,)))
    if not clauses:
        raise SearchError(f"{resource_type} is not in the {compartment_type} compartment")
    return clauses


def compartment_criterion(
    compartment_type: str, compartment_id: str | None, resource_type: str, registry: ParamLookup
) -> CompartmentClause:
    """One criterion (to AND with the query's own) for a compartment search."""
    alternatives = compartment_clause(compartment_type, compartment_id, resource_type, registry)
    return CompartmentClause(compartment_type, compartment_id, tuple(alternatives))


def _compartment(compartment_type: str) -> dict[str, tuple[str, ...]]:
    definitions = _definitions()
    if compartment_type not in definitions:
        raise SearchError(f"no compartment of type {compartment_type!r}")
    return definitions[compartment_type]
