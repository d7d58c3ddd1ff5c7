"""The terminology library wired into the server.

- one TerminologyService per app (operators' ValueSets and ConceptMaps stay in their app),
  sharing the read-only code system tables loaded once per process and data directory;
- the token expander and canonical-unit hooks that storage uses for `:below`, `:above`,
  `:in`, `:not-in` and quantity searches across units;
- the shipped CodeSystems, ValueSets and ConceptMaps stored as resources at start, and
  ValueSets / ConceptMaps written through the API registered into the service on commit
  (a deletion rebuilds the service from the shipped and the still stored resources).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from fhir_server.model import jsonio
from fhir_server.search.errors import SearchError
from fhir_server.service.quantities import CanonicalQuery, QuantityCanonicalizer, UnitTable
from terminology import TerminologyError, TerminologyService
from terminology.uris import ATC, CIM10, ICD10, LOINC, UCUM, VS_GLUCOSE_CODES, VS_HBA1C_CODES

log = logging.getLogger("diatabase.terminology")

SYSTEM_URLS = (CIM10, ICD10, ATC, LOINC, UCUM)
REGISTERED_TYPES = frozenset({"ValueSet", "ConceptMap"})
# meta.source of a resource the server stored from its shipped terminology: the hash tells
# an untouched copy (refreshed when the tables change) from one an operator edited.
SHIPPED_SOURCE = "https://diatabase.org/fhir/terminology/shipped#"
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")

_shared_lock = threading.Lock()
_shared_tables: dict[str | None, TerminologyService] = {}


def _tables_from(data_dir: str | None) -> TerminologyService:
    """A service whose code systems are all loaded, one per process and data directory."""
    with _shared_lock:
        template = _shared_tables.get(data_dir)
        if template is None:
            template = TerminologyService(data_dir)
            for url in SYSTEM_URLS:
                template.system(url)
            _shared_tables[data_dir] = template
        return template


def new_terminology_service(data_dir: str | None) -> TerminologyService:
    """A fresh service (its own ValueSets and ConceptMaps) over the shared code systems."""
    template = _tables_from(data_dir)
    service = TerminologyService(data_dir)
    for url in SYSTEM_URLS:
        service.replace_system(template.system(url))
    return service


class SearchExpander:
    """The TokenExpander storage asks for :below, :above, :in and :not-in; terminology
    errors become SearchErrors (a 400 naming the problem, never a 500)."""

    def __init__(
        self,
        service: Callable[[], TerminologyService],
        refresh: Callable[[str, str], bool] = lambda _type, _url: False,
    ) -> None:
        self._service = service
        self._refresh = refresh

    def descendants(self, system: str | None, code: str | None) -> set[str]:
        system, code = _system_code(system, code, "below")
        return self._call(lambda tx: tx.descendants(system, code))

    def ancestors(self, system: str | None, code: str | None) -> set[str]:
        system, code = _system_code(system, code, "above")
        return self._call(lambda tx: tx.ancestors(system, code))

    def value_set_codes(self, url: str) -> frozenset[tuple[str, str]]:
        if not isinstance(url, str) or not url:
            raise SearchError(":in and :not-in take a ValueSet URL")
        try:
            return self._service().value_set_codes(url)
        except TerminologyError as exc:
            if exc.status == 404 and self._refresh("ValueSet", url):
                return self._call(lambda tx: tx.value_set_codes(url))
            raise SearchError(exc.message) from None

    def _call(self, work: Callable[[TerminologyService], Any]) -> Any:
        try:
            return work(self._service())
        except TerminologyError as exc:
            raise SearchError(exc.message) from None


def _system_code(system: str | None, code: str | None, modifier: str) -> tuple[str, str]:
    if not system or not code:
        raise SearchError(f":{modifier} needs system|code (e.g. http://hl7.org/fhir/sid/icd-10|E11)")
    return system, code


def content_hash(resource: dict) -> str:
    body = {k: v for k, v in resource.items() if k not in ("id", "meta", "text")}
    text = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def resource_id(resource: dict) -> str:
    rid = resource.get("id")
    if isinstance(rid, str) and _ID.match(rid):
        return rid
    last = [p for p in str(resource.get("url", "")).split("/") if p][-1]
    return re.sub(r"[^A-Za-z0-9\-.]", "-", last)[:64]


class ServerTerminology:
    """Everything terminology for one app; the TerminologyService is built on first use."""

    def __init__(self, data_dir: str | None = None) -> None:
        self.data_dir = data_dir
        self._service: TerminologyService | None = None
        self._lock = threading.RLock()
        units = UnitTable()
        self._units = units
        self._canonicalizer: QuantityCanonicalizer | None = None
        self._storage: Any = None
        self.expander = SearchExpander(lambda: self.service, self.refresh)
        self.canonical_query = CanonicalQuery(units)

    @property
    def service(self) -> TerminologyService:
        if self._service is None:
            with self._lock:
                if self._service is None:
                    self._service = new_terminology_service(self.data_dir)
        return self._service

    # -- quantities -----------------------------------------------------------------------

    def canonicalize(
        self, value: Any, system: str | None, code: str | None, resource: Any
    ) -> list[tuple[float, str]]:
        if self._canonicalizer is None:
            service = self.service
            glucose = {c for s, c in service.value_set_codes(VS_GLUCOSE_CODES) if s == LOINC}
            hba1c = {c for s, c in service.value_set_codes(VS_HBA1C_CODES) if s == LOINC}
            self._canonicalizer = QuantityCanonicalizer(glucose, self._units, hba1c)
        return self._canonicalizer(value, system, code, resource)

    def attach(self, storage: Any) -> None:
        """Give a storage backend the hooks its search compiler looks for."""
        self._storage = storage
        storage.expander = self.expander
        storage.canonical_query = self.canonical_query

    # -- resources ------------------------------------------------------------------------

    def shipped_resources(self) -> Iterator[tuple[str, dict]]:
        tx = self.service
        for url in SYSTEM_URLS:
            yield "CodeSystem", tx.code_system(url)
        for value_set in tx.value_sets():
            yield "ValueSet", value_set
        for concept_map in tx.concept_maps():
            yield "ConceptMap", concept_map

    def register(self, resource_type: str, resource: Any) -> bool:
        """Make a stored ValueSet / ConceptMap usable by the operations and by :in.

        A resource the service cannot use (a ValueSet without compose, a malformed map)
        stays stored and readable; it is only not registered.
        """
        if not isinstance(resource, dict):
            return False
        try:
            if resource_type == "ValueSet":
                compose = resource.get("compose")
                if not isinstance(compose, dict) or not compose.get("include"):
                    return False
                self.service.add_value_set(resource)
            elif resource_type == "ConceptMap":
                self.service.add_concept_map(resource)
            else:
                return False
        except (TerminologyError, TypeError, ValueError, KeyError, AttributeError) as exc:
            log.warning("%s %s not registered: %s", resource_type, resource.get("url"), exc)
            return False
        return True

    def knows(self, resource_type: str, url: str) -> bool:
        """Whether a ValueSet / ConceptMap with this url is registered (other types: True,
        there is nothing to register)."""
        lookups = {"ValueSet": self.service.value_set, "ConceptMap": self.service.concept_map}
        if resource_type not in lookups:
            return True
        try:
            lookups[resource_type](url)
        except TerminologyError:
            return False
        return True

    def refresh(self, resource_type: str, url: str) -> bool:
        """Register the stored ValueSet / ConceptMap with this url, if there is one: it may
        have been written by another process (a second worker, `diatabase import`)."""
        if self._storage is None or resource_type not in REGISTERED_TYPES:
            return False
        for stored in self._storage.iter_current(resource_type):
            resource = jsonio.loads(stored.json) if stored.json else None
            if isinstance(resource, dict) and resource.get("url") == url:
                return self.register(resource_type, resource)
        return False

    def committed(self, written: Iterable[tuple[str, bytes | None]], storage: Any) -> None:
        """After a commit: register what was written; a deletion rebuilds the service from
        the shipped resources and what storage still holds (deletions are rare)."""
        written = list(written)
        with self._lock:
            if any(raw is None for _, raw in written):
                self.reload(storage)
                return
            for resource_type, raw in written:
                self.register(resource_type, jsonio.loads(raw))

    def reload(self, storage: Any) -> None:
        """A fresh service: shipped resources, then every stored ValueSet and ConceptMap."""
        with self._lock:
            fresh = new_terminology_service(self.data_dir)
            previous, self._service = self._service, fresh
            try:
                self._register_stored(storage)
            except Exception:
                self._service = previous
                raise

    def _register_stored(self, storage: Any) -> None:
        for resource_type in sorted(REGISTERED_TYPES):
            for stored in storage.iter_current(resource_type):
                if stored.json is not None:
                    self.register(resource_type, jsonio.loads(stored.json))

    def seed(self, resources: Any) -> None:
        """Store the shipped terminology resources that are absent (or untouched copies of
        older tables), then register every stored ValueSet and ConceptMap."""
        storage = resources.storage
        for resource_type, resource in self.shipped_resources():
            rid = resource_id(resource)
            digest = content_hash(resource)
            stored = storage.read(resource_type, rid)
            if stored is not None and not _untouched_stale_copy(stored.json, digest):
                continue
            body = {**resource, "id": rid, "meta": {"source": SHIPPED_SOURCE + digest}}
            resources.update(resource_type, rid, body)
        with self._lock:
            self._register_stored(storage)

    def observe(self, storage: Any) -> ObservedStorage:
        return ObservedStorage(storage, REGISTERED_TYPES, self.committed)


def _untouched_stale_copy(raw: bytes | None, current_digest: str) -> bool:
    """True for a stored copy the server wrote from older tables and nobody edited since."""
    if raw is None:  # deleted by an operator: leave it deleted
        return False
    stored = jsonio.loads(raw)
    source = (stored.get("meta") or {}).get("source", "")
    if not isinstance(source, str) or not source.startswith(SHIPPED_SOURCE):
        return False
    recorded = source[len(SHIPPED_SOURCE):]
    return recorded != current_digest and content_hash(stored) == recorded


class ObservedStorage:
    """A Storage whose transactions report, after a successful commit, the resources of
    some types written in them (so registration never sees a rolled-back write)."""

    def __init__(
        self,
        storage: Any,
        types: frozenset[str],
        on_commit: Callable[[list[tuple[str, bytes | None]], Any], None],
    ) -> None:
        self._storage = storage
        self._types = types
        self._on_commit = on_commit

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        written: list[tuple[str, bytes | None]] = []
        with self._storage.transaction() as tx:
            yield _ObservedTransaction(tx, self._types, written)
        if written:
            try:
                self._on_commit(written, self._storage)
            except Exception:  # the write is committed; a hook failure must not undo it
                log.exception("terminology registration after commit failed")


class _ObservedTransaction:
    def __init__(self, tx: Any, types: frozenset[str], written: list) -> None:
        self._tx = tx
        self._types = types
        self._written = written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)

    def put(self, resource_type: str, id: str, version: int, last_updated: float,  # noqa: A002
            json: bytes, index: Any, method: str) -> None:
        self._tx.put(resource_type, id, version, last_updated, json, index, method)
        if resource_type in self._types:
            self._written.append((resource_type, json))

    def create_many(self, creates: Any) -> None:
        self._tx.create_many(creates)
        self._written.extend(
            (c.resource_type, c.json) for c in creates if c.resource_type in self._types
        )

    def delete(self, resource_type: str, id: str, version: int,  # noqa: A002
               last_updated: float) -> None:
        self._tx.delete(resource_type, id, version, last_updated)
        if resource_type in self._types:
            self._written.append((resource_type, None))
