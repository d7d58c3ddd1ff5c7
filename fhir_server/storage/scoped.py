"""Storage as one request may see it: the request's visibility (search/visibility.py)
applied inside every storage call the services make.

- searches (`search`, conditional lookups' `search_ids`) get the visibility's criteria
  AND-ed in, so that the backends answer only what the client may see, totals and pages
  included (and chain targets, `_has` sources and includes, through `query.restriction`);
- reads (`read`, `vread`, instance `history`) of a resource the client may not see answer
  as if it did not exist (no existence leak); type and system history, which no index
  can restrict, are refused to a restricted access;
- writes inside a transaction: a resource may be changed or deleted only if the client may
  see it, and a patient-context client writes only resources that stay in its patient's
  compartment and in no other patient's.

Without a visibility (`current_visibility` unset: the CLI, the operator's jobs, a server
run with --insecure-dev) every call goes straight to the backend.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from fhir_server.model import jsonio
from fhir_server.model.outcome import FhirError, Issue, error
from fhir_server.search.compartment import compartment_params
from fhir_server.search.errors import SearchError
from fhir_server.search.memory_match import clause_matches
from fhir_server.search.query import (
    AnyOf,
    Clause,
    CompartmentClause,
    Criterion,
    SearchQuery,
    parse_search,
)
from fhir_server.search.types import IndexEntry, ReferenceEntry
from fhir_server.search.visibility import Restriction, Visibility, current_visibility
from fhir_server.storage.base import HistoryPage, NewResource, StoredResource

Extract = Callable[[dict[str, Any]], Sequence[IndexEntry]]


def restrict(query: SearchQuery, restriction: Restriction) -> SearchQuery:
    """`query` limited to what `restriction` lets through: a type-level search carries its
    type's criterion among its clauses (so planners and counts see it); a system search is
    narrowed to the visible types, each restricted by the backend."""
    if query.resource_type is not None:
        criterion = restriction.criterion(query.resource_type)
        clauses = query.clauses if criterion is None else (criterion, *query.clauses)
        return dataclasses.replace(query, clauses=clauses, restriction=restriction)
    allowed = restriction.allowed_types()
    if allowed is None:
        return dataclasses.replace(query, restriction=restriction)
    types = tuple(t for t in (query.resource_types or sorted(allowed)) if t in allowed)
    if not types:  # no visible type among those asked for: nothing matches
        return dataclasses.replace(query, clauses=(AnyOf(()),), restriction=restriction)
    return dataclasses.replace(query, resource_types=types, restriction=restriction)


def criterion_matches(
    criterion: Criterion, rtype: str, rid: str, entries: Sequence[IndexEntry]
) -> bool:
    """A visibility criterion evaluated on one resource's index entries (in memory)."""
    if isinstance(criterion, AnyOf):
        return any(
            all(criterion_matches(part, rtype, rid, entries) for part in alternative)
            for alternative in criterion.alternatives
        )
    if isinstance(criterion, CompartmentClause):
        return any(criterion_matches(c, rtype, rid, entries) for c in criterion.alternatives)
    if isinstance(criterion, Clause):
        if criterion.param.code == "_id":
            return any(getattr(v, "code", None) == rid for v in criterion.values)
        try:
            return clause_matches(criterion, entries)
        except SearchError:
            return False  # a clause that cannot be decided here grants nothing
    return False


class ScopedStorage:
    def __init__(self, storage: Any, registry: Any, extract: Extract) -> None:
        self.inner = storage
        self.registry = registry
        self.extract = extract

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    # -- the request's restriction -----------------------------------------------------------

    def restriction(self, letter: str) -> Restriction | None:
        visibility = current_visibility.get()
        return None if visibility is None else Restriction(visibility, letter, self.registry)

    def visible(self, stored: StoredResource, restriction: Restriction) -> bool:
        """Whether the client may see `stored` (a deletion: as its last content was)."""
        criterion = restriction.criterion(stored.resource_type)
        if criterion is None:
            return True
        if not stored.deleted:
            current = self.inner.read(stored.resource_type, stored.id)
            if current is not None and current.version == stored.version:
                # The current version: asked of the backend's indexes, as a search would.
                query = parse_search(stored.resource_type, [("_id", stored.id)],
                                     self.registry)
                query = dataclasses.replace(query, clauses=(criterion, *query.clauses))
                return bool(self.inner.search(query, 1, None, False).matches)
        raw = stored.json
        if raw is None and stored.version > 1:
            previous = self.inner.vread(stored.resource_type, stored.id, stored.version - 1)
            raw = previous.json if previous is not None else None
        if raw is None:
            return False
        entries = self.extract(jsonio.loads(raw))
        return criterion_matches(criterion, stored.resource_type, stored.id, entries)

    # -- reads and searches ------------------------------------------------------------------

    def search(self, query: Any, count: int, cursor: str | None, bodies: bool = True) -> Any:
        restriction = self.restriction("s")
        if restriction is not None:
            query = restrict(query, restriction)
        return self.inner.search(query, count, cursor, bodies)

    def read(self, resource_type: str, id: str) -> StoredResource | None:
        stored = self.inner.read(resource_type, id)
        restriction = self.restriction("r")
        if stored is None or restriction is None:
            return stored
        return stored if self.visible(stored, restriction) else None

    def vread(self, resource_type: str, id: str, version: int) -> StoredResource | None:
        stored = self.inner.vread(resource_type, id, version)
        restriction = self.restriction("r")
        if stored is None or restriction is None:
            return stored
        # Both the version asked for and the resource as it is now must be visible.
        current = self.read(resource_type, id)
        if current is None or not self.visible(stored, restriction):
            return None
        return stored

    def history(
        self,
        resource_type: str | None,
        id: str | None,
        since: float | None,
        at: float | None,
        count: int,
        cursor: str | None,
    ) -> HistoryPage:
        restriction = self.restriction("r")
        if restriction is None:
            return self.inner.history(resource_type, id, since, at, count, cursor)
        if resource_type is None or id is None:
            raise FhirError(403, [Issue(
                "error", "forbidden",
                "Type and system history are not available to this access token (it is "
                "limited to some resources); read each resource's own history, or search "
                "with _lastUpdated",
            )])
        if self.read(resource_type, id) is None:
            return HistoryPage([], None)
        page = self.inner.history(resource_type, id, since, at, count, cursor)
        entries = [e for e in page.entries if self.visible(e, restriction)]
        return HistoryPage(entries, page.next_cursor)

    def iter_current(self, resource_type: str) -> Iterator[StoredResource]:
        restriction = self.restriction("s")
        for stored in self.inner.iter_current(resource_type):
            if restriction is None or self.visible(stored, restriction):
                yield stored

    # -- writes ------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        with self.inner.transaction() as tx:
            visibility = current_visibility.get()
            yield tx if visibility is None else ScopedTransaction(tx, self, visibility)


class ScopedTransaction:
    """A write transaction limited to what the request may see and write."""

    def __init__(self, tx: Any, storage: ScopedStorage, visibility: Visibility) -> None:
        self.tx = tx
        self.storage = storage
        self.visibility = visibility

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tx, name)

    def _patient_limit(self, resource_type: str) -> str | None:
        """The patient whose compartment writes of the type are confined to: when every
        write grant of the type is patient-level."""
        grants = [g for letter in "cud" for g in self.visibility.for_type(letter, resource_type)]
        if not grants or any(g.patient is None for g in grants):
            return None
        return self.visibility.patient

    def read(self, resource_type: str, id: str) -> StoredResource | None:
        stored = self.tx.read(resource_type, id)
        if stored is None:
            return None
        restriction = self.storage.restriction("r")
        patient = self._patient_limit(resource_type)
        hidden = (restriction is not None and restriction.criterion(resource_type) is not None
                  and not self.storage.visible(stored, restriction))
        if not hidden and patient is not None:
            hidden = not self._stays_in(stored, patient, require_link=False)
        if hidden:
            # Not the client's to change: as if unknown (its existence is not told).
            raise error(404, "not-found", f"{resource_type}/{id} is not known")
        return stored

    def _stays_in(self, stored: StoredResource, patient: str, require_link: bool) -> bool:
        raw = stored.json
        if raw is None and stored.version > 1:
            previous = self.storage.inner.vread(stored.resource_type, stored.id,
                                                stored.version - 1)
            raw = previous.json if previous is not None else None
        if raw is None:
            return True
        entries = self.storage.extract(jsonio.loads(raw))
        return only_in_compartment(stored.resource_type, stored.id, entries, patient,
                                   require_link)

    def _check_write(self, resource_type: str, rid: str, index: Sequence[IndexEntry]) -> None:
        patient = self._patient_limit(resource_type)
        if patient is not None and not only_in_compartment(resource_type, rid, index, patient):
            raise error(
                403, "forbidden",
                f"This access token may write only resources of Patient/{patient}'s "
                f"compartment: this {resource_type} would be outside it or in another "
                "patient's",
            )

    def put(self, resource_type: str, id: str, version: int, last_updated: float,
            json: bytes, index: Sequence[IndexEntry], method: str) -> Any:
        self._check_write(resource_type, id, index)
        return self.tx.put(resource_type, id, version, last_updated, json, index, method)

    def delete(self, resource_type: str, id: str, version: int, last_updated: float) -> None:
        self.read(resource_type, id)  # what the client may not see: 404, as for a read
        self.tx.delete(resource_type, id, version, last_updated)

    def create_many(self, creates: Sequence[NewResource]) -> None:
        for create in creates:
            self._check_write(create.resource_type, create.id, create.index)
        self.tx.create_many(creates)

    def search_ids(self, query: Any, limit: int) -> list[str]:
        restriction = self.storage.restriction("s")
        if restriction is not None:
            query = restrict(query, restriction)
        return self.tx.search_ids(query, limit)


def only_in_compartment(
    resource_type: str,
    rid: str,
    entries: Sequence[IndexEntry],
    patient: str,
    require_link: bool = True,
) -> bool:
    """True when the resource is in Patient/`patient`'s compartment and in no other
    patient's (types outside the Patient compartment hold no patient's data: True)."""
    if resource_type == "Patient":
        return rid == patient
    links = compartment_params("Patient", resource_type)
    if not links:
        return True
    patients = {
        e.target_id
        for e in entries
        if isinstance(e, ReferenceEntry) and e.param in links and e.target_type == "Patient"
    }
    if not patients:
        return not require_link
    return patients == {patient}
