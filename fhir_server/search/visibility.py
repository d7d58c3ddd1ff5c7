"""What one request may see, as search criteria: the patient compartment of a patient-
context token and the search parameters of granular SMART scopes.

`Visibility` is plain data made by `fhir_server.auth` from an access token: per interaction
letter (`r` read, `s` search) and resource type, the grants that allow it. `Restriction`
compiles it against the search parameter registry into one criterion per type, which the
storage backends AND into every query they run for the request (the searched type, each
type of a system search, chain targets, `_has` sources, `_include` / `_revinclude`
results), so that totals and paging are those of what the client may see.

The value rides in a context variable (`current_visibility`) set by the API for the time
of a request: the service calls are many (bundles, conditional writes, operations) and
shared by other doors, and the storage wrapper (storage/scoped.py) reads it once per call.
Code outside a request (the CLI, jobs started by the operator) sees everything; a job
started on behalf of a request carries the request's value with `visible_as`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from fhir_server.search.compartment import compartment_clause
from fhir_server.search.errors import SearchError
from fhir_server.search.lookup import ParamLookup
from fhir_server.search.query import AnyOf, Clause, CompartmentClause, Criterion, parse_search

# Parameters starting with `_` that a granular scope may filter on.
FILTER_PARAMS = frozenset({"_id", "_lastUpdated", "_tag", "_profile", "_security", "_source"})


@dataclass(frozen=True, slots=True)
class Grant:
    """One scope's permission on a type: limited to a patient's compartment or not, and to
    resources matching granular search parameters or not."""

    patient: str | None = None
    params: tuple[tuple[str, str], ...] = ()

    @property
    def unlimited(self) -> bool:
        return self.patient is None and not self.params


@dataclass(frozen=True)
class Visibility:
    """letter ('r' | 's') -> resource type (or '*') -> the grants allowing it."""

    grants: dict[str, dict[str, tuple[Grant, ...]]] = field(default_factory=dict)
    patient: str | None = None  # the token's patient context, if any

    def for_type(self, letter: str, resource_type: str) -> tuple[Grant, ...]:
        by_type = self.grants.get(letter, {})
        return (*by_type.get(resource_type, ()), *by_type.get("*", ()))

    def types(self, letter: str) -> frozenset[str] | None:
        """The types with any grant for `letter`; None when every type has one."""
        by_type = self.grants.get(letter, {})
        return None if "*" in by_type else frozenset(t for t, g in by_type.items() if g)


EVERYTHING = None  # no Visibility: the request sees everything (system use, --insecure-dev)

current_visibility: ContextVar[Visibility | None] = ContextVar("visibility", default=EVERYTHING)


@contextmanager
def visible_as(visibility: Visibility | None) -> Iterator[None]:
    """Run a block (a job's work, a test) with a request's visibility."""
    token = current_visibility.set(visibility)
    try:
        yield
    finally:
        current_visibility.reset(token)


class Restriction:
    """A Visibility compiled for one letter: per type, the criterion that a visible resource
    matches (None: every resource of the type is visible)."""

    def __init__(self, visibility: Visibility, letter: str, registry: ParamLookup) -> None:
        self.visibility = visibility
        self.letter = letter
        self.registry = registry
        self._cache: dict[str, Criterion | None] = {}

    def allowed_types(self) -> frozenset[str] | None:
        return self.visibility.types(self.letter)

    def criterion(self, resource_type: str) -> Criterion | None:
        if resource_type not in self._cache:
            self._cache[resource_type] = self._compile(resource_type)
        return self._cache[resource_type]

    def _compile(self, resource_type: str) -> Criterion | None:
        grants = self.visibility.for_type(self.letter, resource_type)
        if any(g.unlimited for g in grants):
            return None
        alternatives: list[tuple[Criterion, ...]] = []
        for grant in grants:
            parts = self._grant_criteria(grant, resource_type)
            if parts is None:
                continue
            if not parts:
                return None  # e.g. patient/Practitioner.rs: not patient data, unlimited
            alternatives.append(parts)
        return AnyOf(tuple(alternatives))  # no alternative: nothing of the type is visible

    def _grant_criteria(self, grant: Grant, resource_type: str) -> tuple[Criterion, ...] | None:
        """The criteria of one grant (ANDed), or None when the grant cannot apply."""
        parts: list[Criterion] = []
        if grant.patient is not None:
            try:
                alternatives = compartment_clause("Patient", grant.patient, resource_type,
                                                  self.registry)
                parts.append(CompartmentClause("Patient", grant.patient, tuple(alternatives)))
            except SearchError as exc:
                if "is not in the" not in str(exc):
                    return None  # a bad patient id grants nothing
                # Not a type of the Patient compartment (Practitioner, Medication, ...):
                # no patient's data, visible under the patient's scope for the type.
        if grant.params:
            if any(name.startswith("_") and name not in FILTER_PARAMS for name, _ in grant.params):
                return None  # `_count`, `_include`, ...: not a filter, grants nothing
            try:
                query = parse_search(resource_type, list(grant.params), self.registry,
                                     strict=True)
            except SearchError:
                return None  # a granular scope this server cannot apply grants nothing
            if not query.clauses or not all(isinstance(c, Clause) for c in query.clauses):
                return None  # chains and _has in a scope: not applied, so nothing granted
            parts.extend(query.clauses)
        return tuple(parts)
