"""The read-only pseudonymized FHIR API, independent of HTTP.

Incoming pseudonyms (in the URL, in reference and `_id` search values, in paging cursors)
are translated back to real ids, the normal search runs (`FhirService.search`: the same
parser and storage), and every resource that leaves (matches and includes) is
pseudonymized for the recipient who asked. Links are rebuilt from what the client sent:
a self or next link never carries a real id, and storage cursors travel encrypted under
the recipient's key.

A search answers as if it ran over the de-identified view, never over the stored data
(else it would be a re-identification oracle: "which patient has this INS?", "which
reading was really taken on 5 March?"). Criteria on data the view does not change run in
storage; view criteria (view_search.py: dates, strings, identifiers, telecom, what the
rules rewrite) run in storage only relaxed (dates widened by the largest de-identification
change, the rest dropped), and each candidate is kept when its de-identified resource
matches them (`_ViewMatcher`: the server's index extraction on the view, then
search/memory_match.py). Chains follow the view's references; `_has` checks the referring
resources' views.

Decisions for searches with view criteria:
- paging: a page reads underlying pages until `_count` matches are kept, storage has no
  more, or VIEW_PAGE_READS reads were made, and its next link resumes after the last
  candidate read (the same encrypted storage cursor): pages may be short or empty, nothing
  is skipped or repeated. No previous link.
- `_total=accurate` and `_summary=count` are counted on the view, scanning at most
  VIEW_TOTAL_SCAN candidates (beyond, no total and a warning): the storage count is of
  stored data and would itself be an oracle. Otherwise a total only when the whole answer
  is on the first page.
- `_sort` on a view parameter, `_id` or a reference is refused with 400: an order computed
  on stored dates reveals each patient's shift (on stored ids, their order), and an order
  on shifted values needs the whole result set in memory, which paging through a filter
  cannot bound.
- `_text` / `_content`: refused (400), chained or not: the server's full-text index holds
  the stored, identifying text.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

import orjson

from fhir_server.deid.engine import Deidentifier
from fhir_server.deid.linkage import LinkageStore
from fhir_server.deid.release import Release, compute
from fhir_server.deid.view_search import UNSUPPORTED_CODES, ViewPolicy
from fhir_server.deid.views import ViewStore, pseudonymized
from fhir_server.model import jsonio
from fhir_server.model.outcome import error
from fhir_server.model.resource_types import resource_types
from fhir_server.rights.withholding import Withholding
from fhir_server.search.compartment import compartment_clause, compartment_resource_types
from fhir_server.search.errors import SearchError, UnsupportedModifier
from fhir_server.search.fulltext import is_fulltext_clause
from fhir_server.search.memory_match import clause_matches
from fhir_server.search.query import ChainClause, Clause, Criterion, HasClause, SearchQuery
from fhir_server.search.result_params import ResultParams
from fhir_server.search.types import IndexEntry, ReferenceEntry
from fhir_server.search.values import ReferenceValue, TokenValue
from fhir_server.service.fhir import FhirService
from fhir_server.service.search import shape_resource
from fhir_server.storage.base import StoredResource

# Never served: the audit trail itself, raw binaries, subscriptions (endpoints, secrets)
# and Bundles (documents whose entries the per-type rules would not reach).
HIDDEN_TYPES = frozenset({"AuditEvent", "Binary", "Subscription", "Bundle"})
# Underlying storage pages read for one page of a view search, and candidates checked for
# a view `_total` or for one `_has` on a view parameter (see _search_view).
VIEW_PAGE_READS = 10
VIEW_TOTAL_SCAN = 10_000
VIEW_HAS_SCAN = 10_000
VIEW_RECHECK_SECONDS = 10.0
INCLUDE_BATCH = 100  # the parser's own bound on OR values (SQLite limits expression depth)
NO_MATCH = "!no-such-id"  # not a valid FHIR id: matches nothing
CURSOR_PURPOSE = "cursor"
EVERYTHING_LIMIT = 10_000
# How often the facade looks whether the Patients changed (then computes the Release of a
# recipient again): between two looks, answers are held to the same Release.
RELEASE_RECHECK_SECONDS = 5.0


def served_types() -> list[str]:
    return sorted(resource_types() - HIDDEN_TYPES)


@dataclass
class ViewPage:
    matches: list[StoredResource]
    included: list[StoredResource] = field(default_factory=list)
    total: int | None = None
    next_cursor: str | None = None
    previous_cursor: str | None = None


@dataclass
class FacadeAnswer:
    body: Any
    count: int
    entity: str | None = None  # the real resource concerned (for the audit trail only)
    release: str | None = None  # what the answer is held to (k-anonymity), for a header


class TransformCache:
    """Pseudonymized JSON by (recipient, type, id, version): a version never changes, so
    an entry is never stale; a restart (new rules or keys) starts empty. Bounded LRU.

    Misses are looked up in the recipient's materialized view store when there is one
    (views.py: rows made from the same version only), and pseudonymized otherwise."""

    def __init__(
        self,
        max_entries: int = 50_000,
        views: Mapping[str, ViewStore] | None = None,
        load: Callable[[StoredResource], StoredResource | None] | None = None,
        withholding: Withholding | None = None,
    ) -> None:
        self._load = load
        # Objections to research use: applied to every answer, after the cache (a cached
        # body stays right; whether it may be released is decided on each call).
        self._withholding = withholding  # the stored version of a resource given without its JSON
        self._entries: OrderedDict[tuple[str, str, str, int], bytes] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()
        self._views = dict(views or {})
        self._usable: dict[str, tuple[float, bool]] = {}

    def serves_views(self, engine: Deidentifier) -> bool:
        return self._store(engine.keys.recipient_id) is not None

    def transform_many(
        self, engine: Deidentifier, resources: Sequence[StoredResource]
    ) -> list[bytes | None]:
        """The pseudonymized JSON of each resource (None: suppressed by the rules, gone, or
        of a patient who objects to research use). A resource without its JSON (a keys-only
        search) is read when its view is missing."""
        out = self._transformed(engine, resources)
        if self._withholding is None:
            return out
        return self._withholding.released(engine, out)

    def _transformed(
        self, engine: Deidentifier, resources: Sequence[StoredResource]
    ) -> list[bytes | None]:
        recipient = engine.keys.recipient_id
        out: list[bytes | None] = [None] * len(resources)
        missing: list[int] = []
        with self._lock:
            for index, stored in enumerate(resources):
                key = (recipient, stored.resource_type, stored.id, stored.version)
                hit = self._entries.get(key)
                if hit is None:
                    missing.append(index)
                else:
                    self._entries.move_to_end(key)
                    out[index] = hit
        if not missing:
            return out
        viewed: dict[tuple[str, str], bytes | None] = {}
        store = self._store(recipient)
        if store is not None:
            try:
                viewed = store.lookup([resources[i] for i in missing])
            except sqlite3.Error:  # a store removed or broken meanwhile: the engine serves
                self._usable[recipient] = (time.monotonic(), False)
        wanted = [resources[i] for i in missing]
        made = []
        for index, stored, body in zip(
            missing, wanted, pseudonymized(engine, viewed, wanted, self._load), strict=True
        ):
            out[index] = body
            if body is not None:
                made.append(((recipient, stored.resource_type, stored.id, stored.version), body))
        with self._lock:
            for key, body in made:
                self._entries[key] = body
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return out

    def _store(self, recipient: str) -> ViewStore | None:
        """The recipient's view store if it is there and was made with its keys and
        rules (checked again every VIEW_RECHECK_SECONDS: a fill may create it later)."""
        store = self._views.get(recipient)
        if store is None:
            return None
        now = time.monotonic()
        checked = self._usable.get(recipient)
        if checked is None or now - checked[0] > VIEW_RECHECK_SECONDS:
            try:
                usable = store.usable()
            except sqlite3.Error:
                usable = False
            checked = self._usable[recipient] = (now, usable)
        return store if checked[1] else None


class DeidFacade:
    def __init__(
        self,
        service: FhirService,
        cache_entries: int = 50_000,
        views: Mapping[str, ViewStore] | None = None,
        linkage: Mapping[str, LinkageStore] | None = None,
    ) -> None:
        self.service = service
        self.withholding = Withholding.of(service)
        self.cache = TransformCache(
            cache_entries,
            views,
            lambda s: service.storage.vread(s.resource_type, s.id, s.version),
            self.withholding,
        )
        self._policies: dict[str, ViewPolicy] = {}
        self._linkage = dict(linkage or {})
        self._releases: dict[str, tuple[Any, Release, float]] = {}
        self._release_lock = threading.Lock()
        self._newest_patient = service.search.parse("Patient", [("_sort", "-_lastUpdated")], True)

    # -- which patients, in which form (release.py) -----------------------------------------

    def patient_release(self, engine: Deidentifier) -> Release:
        """The recipient's Release over the current Patients (those who do not object):
        computed again only when they or the objections changed (count or newest version;
        the objections' signature), looked at every RELEASE_RECHECK_SECONDS."""
        recipient = engine.keys.recipient_id
        now = time.monotonic()
        held = self._releases.get(recipient)
        if held is not None and now - held[2] < RELEASE_RECHECK_SECONDS:
            return held[1]
        with self._release_lock:
            storage = self.service.storage
            newest = storage.search(self._newest_patient, 1, None, False).matches
            signature = (
                storage.count("Patient"),
                [(s.id, s.version) for s in newest],
                self.withholding.current().signature,
            )
            held = self._releases.get(recipient)
            if held is None or held[0] != signature:
                patients = [s for s in storage.iter_current("Patient") if s.json is not None]
                bodies = self.cache.transform_many(engine, patients)
                pairs = zip(patients, bodies, strict=True)
                release = compute(engine, pairs, self._linkage.get(recipient))
            else:
                release = held[1]
            self._releases[recipient] = (signature, release, now)
            return release

    def bodies(
        self, engine: Deidentifier, resources: Sequence[StoredResource]
    ) -> list[bytes | None]:
        """What the recipient is served of each resource (None: nothing): pseudonymized,
        what objections withhold left out, then as the Release lets it out."""
        release = self.patient_release(engine)
        made = self.cache.transform_many(engine, resources)
        return [release.body(s.resource_type, b) for s, b in zip(resources, made, strict=True)]

    def released(
        self, engine: Deidentifier, rtype: str, batch: int = 500
    ) -> Iterator[dict[str, Any]]:
        """Every current resource of `rtype` as this recipient is given it (pseudonymized
        through the same cache and view store as reads and searches; what the rules
        suppress, objections withhold or the recipient's Release holds back is left out):
        what research tables (SQL on FHIR views, measures) are
        computed from, so they never hold what the facade would not serve."""
        self._check_type(rtype)
        pending: list[StoredResource] = []
        for stored in self.service.storage.iter_current(rtype):
            pending.append(stored)
            if len(pending) >= batch:
                yield from self.release(engine, pending)
                pending = []
        if pending:
            yield from self.release(engine, pending)

    def release(self, engine: Deidentifier, stored: list[StoredResource]
                ) -> Iterator[dict[str, Any]]:  # fmt: skip
        """These current resources as this recipient is given them (`bodies`: what is
        not served left out): the one decision research tables go through (`released`,
        and the materialiser's increments), so a rule about what a recipient may see
        holds for them too."""
        return _loaded(self.bodies(engine, stored))

    def release_state(self, engine: Deidentifier) -> str:
        """What decides `release` besides the resources themselves: the patients who
        object to research use, as this recipient's pseudonyms (hashed). Tables kept up to
        date from the history are made again when it changes (an objection changes no
        Observation, yet its patient's rows must go)."""
        patients = self.withholding.current().patients
        pseudonyms = sorted(engine.pseudonyms.pseudonym("Patient", p) for p in patients)
        return hashlib.sha256("\n".join(pseudonyms).encode()).hexdigest()[:32]

    def _policy(self, engine: Deidentifier) -> ViewPolicy:
        """One per recipient: a policy caches which parameters its rules touch."""
        policy = self._policies.get(engine.keys.recipient_id)
        if policy is None or policy.rules is not engine.rules:
            policy = self._policies[engine.keys.recipient_id] = ViewPolicy(engine.rules)
        return policy

    # -- read -----------------------------------------------------------------------------

    def read(self, engine: Deidentifier, rtype: str, pseudonym: str) -> FacadeAnswer:
        self._check_type(rtype)
        real = engine.pseudonyms.real_id(rtype, pseudonym)
        stored = self.service.storage.read(rtype, real) if real else None
        if stored is None or stored.deleted or stored.json is None:
            raise error(404, "not-found", f"{rtype}/{pseudonym} is not known")
        body = self.bodies(engine, [stored])[0]
        if body is None:  # suppressed by the rules, or not released (k-anonymity)
            raise error(404, "not-found", f"{rtype}/{pseudonym} is not known")
        release = self.patient_release(engine).describe()
        return FacadeAnswer(jsonio.fragment(body), 1, f"{rtype}/{real}", release)

    # -- search ---------------------------------------------------------------------------

    def search(
        self,
        engine: Deidentifier,
        rtype: str,
        items: list[tuple[str, str]],
        base: str,
        strict: bool,
    ) -> FacadeAnswer:
        self._check_type(rtype)
        cursor = None
        plain_items = []
        for key, value in items:
            if key == "_cursor":
                cursor = engine.pseudonyms.unseal(value, CURSOR_PURPOSE)
                if cursor is None:
                    raise error(400, "invalid", "The paging cursor is invalid")
            else:
                plain_items.append((key, value))
        query = self.service.search.parse(rtype, plain_items, strict)
        policy = self._policy(engine)
        _check_query(query, policy)
        in_view = [c for c in query.clauses if policy.needs_view(c, rtype)]
        stored_clauses = []
        for criterion in query.clauses:
            if criterion in in_view:
                criterion = policy.relax(criterion)
                if criterion is None:
                    continue
            stored_clauses.append(_translate(criterion, rtype, engine))
        # Insertion order: the order a date range implies would follow the stored dates,
        # revealing each patient's shift (as `_sort` on a view parameter would).
        storage_query = replace(
            query,
            clauses=tuple(stored_clauses),
            result=replace(query.result, cursor=cursor),
            insertion_order=True,
        )
        count = min(query.result.count, self.service.settings.max_count)
        # While patients object or k-anonymity holds some back, every search runs as a
        # view search: each candidate is checked on what is released, and totals are
        # counted on it (never storage's, which would count what is not served).
        holds_back = (
            self.withholding.matcher(engine) is not None
            or self.patient_release(engine).suppressed
        )
        if in_view or holds_back:
            view = _ViewMatcher(self, engine, policy)
            page, warnings = self._search_view(view, in_view, storage_query, count, cursor)
        else:
            # With a view store, the bodies come from it: storage reads the keys only.
            bodies = not self.cache.serves_views(engine)
            page = self.service.storage.search(storage_query, count, cursor, bodies)
            warnings = []
        path = f"{base}/{rtype}"

        def url(token: str | None) -> str:
            extra = [("_cursor", engine.pseudonyms.seal(token, CURSOR_PURPOSE))] if token else []
            all_items = plain_items + extra
            return path + (f"?{urlencode(all_items)}" if all_items else "")

        links = [{"relation": "self", "url": url(cursor)}, {"relation": "first", "url": url(None)}]
        if page.previous_cursor:
            links.append({"relation": "previous", "url": url(page.previous_cursor)})
        if page.next_cursor:
            links.append({"relation": "next", "url": url(page.next_cursor)})
        entries = self._entries(engine, page.matches, "match", base, query.result)
        entries += self._entries(engine, page.included, "include", base, query.result)
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
        if page.total is not None:
            bundle["total"] = page.total
        bundle["link"] = links
        warnings = (
            [f"Search parameter {u.name} was ignored: {u.reason}" for u in query.unknown]
            + list(query.warnings)
            + warnings
        )
        count = len(entries)
        if warnings:
            issues = [
                {"severity": "warning", "code": "not-supported", "diagnostics": w} for w in warnings
            ]
            entries.append(
                {
                    "resource": {"resourceType": "OperationOutcome", "issue": issues},
                    "search": {"mode": "outcome"},
                }
            )
        bundle["entry"] = entries
        return FacadeAnswer(bundle, count, release=self.patient_release(engine).describe())

    def _search_view(
        self,
        view: _ViewMatcher,
        in_view: list[Criterion],
        query: SearchQuery,
        count: int,
        cursor: str | None,
    ) -> tuple[ViewPage, list[str]]:
        """A page of the search as if run over the de-identified view: storage finds the
        candidates (view criteria relaxed), each is kept when its view matches.

        Underlying pages are read until `count` matches are kept, storage has no more,
        or VIEW_PAGE_READS reads were made (so a rare match does not cost an unbounded
        request); the next link resumes after the last candidate read, so no resource is
        skipped or repeated. A page may hold fewer than `_count` matches, even none."""
        result = query.result
        rtype = query.resource_type or ""
        # Storage must neither count (its total is of stored data) nor include (its
        # includes would follow candidates that are not kept).
        bare = replace(
            query,
            result=replace(result, include=(), revinclude=(), total=None, summary=None),
        )
        warnings: list[str] = []
        total = None
        if result.total == "accurate" or result.summary == "count" or count == 0:
            total = self._view_total(view, in_view, bare, rtype)
            if total is None:
                warnings.append(
                    f"_total: not computed: more than {VIEW_TOTAL_SCAN} candidates would have "
                    "to be checked on the de-identified view"
                )
        if result.summary == "count" or count == 0:
            return ViewPage([], total=total), warnings
        kept: list[StoredResource] = []
        position = cursor
        for _ in range(VIEW_PAGE_READS):
            page = self.service.storage.search(bare, count - len(kept), position)
            self.cache.transform_many(view.engine, _served(page.matches))  # one lookup
            kept += [s for s in page.matches if view.matches_all(in_view, s, rtype)]
            position = page.next_cursor
            if position is None or len(kept) >= count:
                break
        if total is None and cursor is None and position is None:
            total = len(kept)
        included: list[StoredResource] = []
        if kept and (result.include or result.revinclude):
            included = self._includes_of(kept, query)
        # No previous link: walking candidates backwards through a filter is not offered.
        return ViewPage(kept, included, total, position, None), warnings

    def _view_total(
        self, view: _ViewMatcher, in_view: list[Criterion], query: SearchQuery, rtype: str
    ) -> int | None:
        """How many resources match on the view (None beyond VIEW_TOTAL_SCAN candidates):
        the storage count would be of the stored data, which is not what is served."""
        matched = scanned = 0
        position = None
        while True:
            page = self.service.storage.search(query, 1000, position)
            scanned += len(page.matches)
            if scanned > VIEW_TOTAL_SCAN:
                return None
            matched += sum(1 for s in page.matches if view.matches_all(in_view, s, rtype))
            position = page.next_cursor
            if position is None:
                return matched

    def _includes_of(self, kept: list[StoredResource], query: SearchQuery) -> list[StoredResource]:
        """The _include / _revinclude resources of the kept matches only, by storage
        searches on their ids (any backend does includes as part of a search), in batches
        of INCLUDE_BATCH ids (each id is one OR term of the storage query)."""
        rtype = query.resource_type or ""
        id_param = self.service.registry.get(rtype, "_id")
        assert id_param is not None
        result = replace(query.result, sort=(), total=None, summary=None, cursor=None)
        seen = {(s.resource_type, s.id) for s in kept}
        included: list[StoredResource] = []
        for start in range(0, len(kept), INCLUDE_BATCH):
            batch = kept[start : start + INCLUDE_BATCH]
            ids = tuple(TokenValue(None, s.id, system_given=False) for s in batch)
            by_id = SearchQuery(rtype, (Clause(id_param, None, ids),), result)
            for found in self.service.storage.search(by_id, len(batch), None).included:
                if (found.resource_type, found.id) not in seen:
                    seen.add((found.resource_type, found.id))
                    included.append(found)
        return included

    # -- $everything ----------------------------------------------------------------------

    def everything(self, engine: Deidentifier, pseudonym: str, base: str) -> FacadeAnswer:
        real = engine.pseudonyms.real_id("Patient", pseudonym)
        stored = self.service.storage.read("Patient", real) if real else None
        served = stored is not None and not stored.deleted
        if not served or self.bodies(engine, [stored])[0] is None:  # objects, or k-anonymity
            raise error(404, "not-found", f"Patient/{pseudonym} is not known")
        assert real is not None
        registry = self.service.registry
        found: dict[tuple[str, str], StoredResource] = {}
        for rtype in compartment_resource_types("Patient"):
            if rtype in HIDDEN_TYPES:
                continue
            try:
                clauses = compartment_clause("Patient", real, rtype, registry)
            except SearchError:
                continue
            for clause in clauses:
                self._collect(SearchQuery(rtype, (clause,), ResultParams(count=1000)), found)
        if len(found) > EVERYTHING_LIMIT:
            raise error(413, "too-costly", f"$everything would return more than {EVERYTHING_LIMIT}")
        ordered = sorted(found.values(), key=lambda r: (r.resource_type != "Patient",))
        entries = self._entries(engine, ordered, "match", base, ResultParams())
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(entries),
            "link": [{"relation": "self", "url": f"{base}/Patient/{pseudonym}/$everything"}],
            "entry": entries,
        }
        release = self.patient_release(engine).describe()
        return FacadeAnswer(bundle, len(entries), f"Patient/{real}", release)

    def _collect(self, query: SearchQuery, found: dict[tuple[str, str], StoredResource]) -> None:
        cursor = None
        while True:
            page = self.service.storage.search(query, 1000, cursor)
            for stored in page.matches:
                found[(stored.resource_type, stored.id)] = stored
            if not page.next_cursor or len(found) > EVERYTHING_LIMIT:
                return
            cursor = page.next_cursor

    # -- helpers --------------------------------------------------------------------------

    @staticmethod
    def _check_type(rtype: str) -> None:
        if rtype not in resource_types() or rtype in HIDDEN_TYPES:
            raise error(404, "not-found", f"Nothing at {rtype}")

    def _entries(
        self,
        engine: Deidentifier,
        resources: list[StoredResource],
        mode: str,
        base: str,
        result: ResultParams,
    ) -> list[dict[str, Any]]:
        served = _served(resources)
        entries = []
        for stored, body in zip(served, self.bodies(engine, served), strict=True):
            if body is None:
                continue  # suppressed by the rules, or not released
            pseudonym = _id_of(body, stored.resource_type)
            if pseudonym is None:
                pseudonym = engine.pseudonyms.pseudonym(stored.resource_type, stored.id)
            entries.append(
                {
                    "fullUrl": f"{base}/{stored.resource_type}/{pseudonym}",
                    "resource": shape_resource(stored.resource_type, body, result),
                    "search": {"mode": mode},
                }
            )
        return entries


_ID_HEADS: dict[str, bytes] = {}


def _loaded(bodies: list[bytes | None]) -> Iterator[dict[str, Any]]:
    for body in bodies:
        if body is not None:
            yield orjson.loads(body)


def _id_of(body: bytes, rtype: str) -> str | None:
    """The id of pseudonymized JSON that starts as the server stores it (resourceType, then
    id): reading it back is cheaper than encrypting the real id again, which a view store's
    rows would need."""
    head = _ID_HEADS.get(rtype)
    if head is None:
        head = _ID_HEADS[rtype] = b'{"resourceType":"' + rtype.encode() + b'","id":"'
    if not body.startswith(head):
        return None
    end = body.find(b'"', len(head))
    return body[len(head) : end].decode() if end > 0 else None


class _ViewMatcher:
    """Evaluates view criteria on the de-identified view of stored resources, for one
    request (one recipient's engine): the view's index entries are extracted with the
    server's own extractor, then matched in memory (search/memory_match.py)."""

    def __init__(self, facade: DeidFacade, engine: Deidentifier, policy: ViewPolicy) -> None:
        self.facade = facade
        self.engine = engine
        self.policy = policy
        self.now = time.time()
        self._entries: dict[tuple[Any, ...], list[IndexEntry] | None] = {}

    def matches_all(self, criteria: list[Criterion], stored: StoredResource, rtype: str) -> bool:
        if not criteria:  # served at all (not withheld by the rules or an objection)
            return self.view_entries(stored, frozenset()) is not None
        return all(self.matches(c, stored, rtype) for c in criteria)

    def matches(self, criterion: Any, stored: StoredResource, rtype: str) -> bool:
        if stored.resource_type in HIDDEN_TYPES:
            return False
        # The view's entries of the one parameter this resource is matched on (a chain
        # reads its reference here, its inner criterion on the target; _has reads none).
        if isinstance(criterion, HasClause):
            codes: frozenset[str] = frozenset()
        else:
            codes = frozenset((criterion.param.code,))
        entries = self.view_entries(stored, codes)
        if entries is None:
            return False  # never served (suppressed): matches nothing
        try:
            if isinstance(criterion, ChainClause):
                return self._chain_matches(criterion, entries)
            if isinstance(criterion, HasClause):
                return self._has_matches(criterion, stored)
            return clause_matches(criterion, entries, self.now)
        except UnsupportedModifier as exc:
            raise error(400, "not-supported", exc.message, criterion.key) from None

    def view_entries(
        self, stored: StoredResource, codes: frozenset[str]
    ) -> list[IndexEntry] | None:
        """The index entries of `codes` in the de-identified `stored`; None when it is
        never served (deleted, or suppressed by the rules)."""
        key = (stored.resource_type, stored.id, stored.version, codes)
        if key not in self._entries:
            entries = None
            if stored.json is not None and not stored.deleted:
                # Matched on what is served: a generalized postal code, no suppressed patient.
                body = self.facade.bodies(self.engine, [stored])[0]
                if body is not None:
                    resource = orjson.loads(body)
                    entries = self.facade.service.extractor.extract(resource, codes)
            self._entries[key] = entries
        return self._entries[key]

    def _chain_matches(self, chain: ChainClause, entries: list[IndexEntry]) -> bool:
        # The references the view holds (pseudonyms), followed to the stored targets.
        storage = self.facade.service.storage
        for entry in entries:
            if not isinstance(entry, ReferenceEntry) or entry.param != chain.param.code:
                continue
            if entry.target_type not in chain.target_types or not entry.target_id:
                continue
            real = self.engine.pseudonyms.real_id(entry.target_type, entry.target_id)
            target = storage.read(entry.target_type, real) if real else None
            if target is not None and self.matches(chain.inner, target, entry.target_type):
                return True
        return False

    def _has_matches(self, has: HasClause, stored: StoredResource) -> bool:
        """Some resource of `has.resource_type` refers to `stored` and matches on its view.
        Its candidates come from storage: the reference, plus the relaxed inner criterion."""
        link = Clause(
            has.ref_param, None, (ReferenceValue(type=stored.resource_type, id=stored.id),)
        )
        clauses: list[Any] = [link]
        relaxed = self.policy.relax(has.inner)
        if relaxed is not None:
            clauses.append(_translate(relaxed, has.resource_type, self.engine))
        query = SearchQuery(has.resource_type, tuple(clauses), ResultParams(count=1000))
        position, scanned = None, 0
        while True:
            page = self.facade.service.storage.search(query, 1000, position)
            for referrer in page.matches:
                if self.matches(has.inner, referrer, has.resource_type):
                    return True
            scanned += len(page.matches)
            position = page.next_cursor
            if position is None:
                return False
            if scanned >= VIEW_HAS_SCAN:
                raise error(
                    400,
                    "too-costly",
                    f"{has.key}: more than {VIEW_HAS_SCAN} resources to check on the "
                    "de-identified view for one candidate; narrow the search",
                )


def _served(resources: list[StoredResource]) -> list[StoredResource]:
    return [s for s in resources if not s.deleted and s.resource_type not in HIDDEN_TYPES]


def _hidden_types_in(criterion: Any) -> bool:
    while not isinstance(criterion, Clause):
        if isinstance(criterion, HasClause) and criterion.resource_type in HIDDEN_TYPES:
            return True
        if isinstance(criterion, ChainClause) and set(criterion.target_types) & HIDDEN_TYPES:
            return True
        criterion = criterion.inner
    return False


def _fulltext_in(criterion: Any) -> bool:
    while isinstance(criterion, ChainClause | HasClause):
        criterion = criterion.inner
    return is_fulltext_clause(criterion)


def _check_query(query: SearchQuery, policy: ViewPolicy) -> None:
    for unknown in query.unknown:
        # Not indexed by the server (`_content`, `_text`): the clinical API would ignore
        # them with a warning, i.e. serve everything; a research client is told no.
        code = unknown.name.split(":", 1)[0].split(".", 1)[0]
        if code in UNSUPPORTED_CODES:
            raise error(
                400,
                "not-supported",
                f"{unknown.name}: full-text search is not supported by this server",
                unknown.name,
            )
    for include in (*query.result.include, *query.result.revinclude):
        if include.source_type in HIDDEN_TYPES or include.target_type in HIDDEN_TYPES:
            raise error(400, "not-supported", f"{include.key}={include.to_param()}: not served")
    for criterion in query.clauses:
        if _hidden_types_in(criterion):
            raise error(400, "not-supported", f"{criterion.key}: not served", criterion.key)
        if _fulltext_in(criterion):
            # The full-text index holds the stored (identifying) text, names included:
            # searching it through the facade would be an oracle on what was removed.
            raise error(
                400,
                "not-supported",
                f"{criterion.key}: full-text search is not served on de-identified data",
                criterion.key,
            )
    rtype = query.resource_type or "Resource"
    for key in query.result.sort:
        # `_id` and references sort on the stored ids: their order is not the recipient's.
        by_real_id = key.code == "_id" or (key.param is not None and key.param.type == "reference")
        if by_real_id or key.param is None or policy.is_view_param(key.param, rtype):
            raise error(
                400,
                "not-supported",
                f"Sorting by {key.code} is not available on the de-identified API: its "
                "values are ids, or shifted, generalized or removed per patient, and an "
                "order computed on the stored values would reveal them",
                "_sort",
            )


def _translate(criterion: Any, rtype: str, engine: Deidentifier) -> Any:
    if isinstance(criterion, ChainClause):
        inner_type = criterion.target_types[0] if criterion.target_types else rtype
        return replace(criterion, inner=_translate(criterion.inner, inner_type, engine))
    if isinstance(criterion, HasClause):
        return replace(
            criterion, inner=_translate(criterion.inner, criterion.resource_type, engine)
        )
    param = criterion.param
    if param.code == "_id":
        values = tuple(
            replace(v, code=engine.pseudonyms.real_id(rtype, v.code) or NO_MATCH)
            if isinstance(v, TokenValue) and v.code
            else v
            for v in criterion.values
        )
        return replace(criterion, values=values)
    if param.type == "reference":
        values = tuple(
            _real_reference(v, param.target, engine) if isinstance(v, ReferenceValue) else v
            for v in criterion.values
        )
        return replace(criterion, values=values)
    return criterion


def _real_reference(
    value: ReferenceValue, targets: tuple[str, ...], engine: Deidentifier
) -> ReferenceValue:
    ref_type, pseudonym = value.type, value.id
    if value.url is not None:
        # An absolute URL to the facade: its last two segments are Type/pseudonym.
        parts = value.url.rstrip("/").split("/")
        ref_type, pseudonym = (parts[-2], parts[-1]) if len(parts) >= 2 else (None, None)
    if not pseudonym:
        return ReferenceValue(type=ref_type, id=NO_MATCH)
    candidates = (ref_type,) if ref_type else (targets or tuple(sorted(resource_types())))
    for candidate in candidates:
        real = engine.pseudonyms.real_id(candidate, pseudonym)
        if real is not None:
            return ReferenceValue(type=candidate, id=real)
    return ReferenceValue(type=ref_type, id=NO_MATCH)
