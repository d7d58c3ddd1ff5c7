"""The read-only pseudonymized FHIR API, independent of HTTP.

Incoming pseudonyms (in the URL, in reference and `_id` search values, in paging cursors)
are translated back to real ids, the normal search runs (`FhirService.search`: the same
parser and storage), and every resource that leaves (matches and includes) is
pseudonymized for the recipient who asked. Links are rebuilt from what the client sent:
a self or next link never carries a real id, and storage cursors travel encrypted under
the recipient's key.

Search parameters that would let a client probe identifying or shifted data are refused
(400) rather than answered: every `string` parameter (names, addresses, free text), every
`date` parameter and `_lastUpdated` (dates leave shifted per patient, so a search on real
dates would both mislead and reveal the shift), identifiers, telecom, `_text`/`_content`,
and `:identifier` on references. Sorting is refused on the same parameters.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

from fhir_server.deid.engine import Deidentifier, Suppressed
from fhir_server.model import jsonio
from fhir_server.model.outcome import error
from fhir_server.model.resource_types import resource_types
from fhir_server.search.compartment import compartment_clause, compartment_resource_types
from fhir_server.search.errors import SearchError
from fhir_server.search.query import ChainClause, Clause, HasClause, SearchQuery
from fhir_server.search.result_params import ResultParams
from fhir_server.search.values import CompositeValue, ReferenceValue, TokenValue
from fhir_server.service.fhir import FhirService
from fhir_server.service.search import shape_resource
from fhir_server.storage.base import StoredResource

# Never served: the audit trail itself, raw binaries, subscriptions (endpoints, secrets)
# and Bundles (documents whose entries the per-type rules would not reach).
HIDDEN_TYPES = frozenset({"AuditEvent", "Binary", "Subscription", "Bundle"})
DENIED_PARAM_TYPES = frozenset({"string", "date"})
DENIED_CODES = frozenset(
    {"identifier", "telecom", "phone", "email", "_text", "_content", "_lastUpdated", "_source"}
)
NO_MATCH = "!no-such-id"  # not a valid FHIR id: matches nothing
CURSOR_PURPOSE = "cursor"
EVERYTHING_LIMIT = 10_000


def served_types() -> list[str]:
    return sorted(resource_types() - HIDDEN_TYPES)


@dataclass
class FacadeAnswer:
    body: Any
    count: int
    entity: str | None = None  # the real resource concerned (for the audit trail only)


class TransformCache:
    """Pseudonymized JSON by (recipient, type, id, version): a version never changes, so
    an entry is never stale; a restart (new rules or keys) starts empty. Bounded LRU."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self._entries: OrderedDict[tuple[str, str, str, int], bytes] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()

    def transform(self, engine: Deidentifier, stored: StoredResource) -> bytes:
        assert stored.json is not None
        key = (engine.keys.recipient_id, stored.resource_type, stored.id, stored.version)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                return hit
        body = engine.transform_bytes(stored.json)
        with self._lock:
            self._entries[key] = body
            if len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return body


class DeidFacade:
    def __init__(self, service: FhirService, cache_entries: int = 50_000) -> None:
        self.service = service
        self.cache = TransformCache(cache_entries)

    # -- read -----------------------------------------------------------------------------

    def read(self, engine: Deidentifier, rtype: str, pseudonym: str) -> FacadeAnswer:
        self._check_type(rtype)
        real = engine.pseudonyms.real_id(rtype, pseudonym)
        stored = self.service.storage.read(rtype, real) if real else None
        if stored is None or stored.deleted or stored.json is None:
            raise error(404, "not-found", f"{rtype}/{pseudonym} is not known")
        try:
            body = self.cache.transform(engine, stored)
        except Suppressed:
            raise error(404, "not-found", f"{rtype}/{pseudonym} is not known") from None
        return FacadeAnswer(jsonio.fragment(body), 1, f"{rtype}/{real}")

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
        _check_query(query)
        query = replace(
            query,
            clauses=tuple(_translate(c, rtype, engine) for c in query.clauses),
            result=replace(query.result, cursor=cursor),
        )
        count = min(query.result.count, self.service.settings.max_count)
        page = self.service.storage.search(query, count, cursor)
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
        warnings = [
            f"Search parameter {u.name} was ignored: {u.reason}" for u in query.unknown
        ] + list(query.warnings)
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
        return FacadeAnswer(bundle, count)

    # -- $everything ----------------------------------------------------------------------

    def everything(self, engine: Deidentifier, pseudonym: str, base: str) -> FacadeAnswer:
        real = engine.pseudonyms.real_id("Patient", pseudonym)
        stored = self.service.storage.read("Patient", real) if real else None
        if stored is None or stored.deleted:
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
        return FacadeAnswer(bundle, len(entries), f"Patient/{real}")

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
        entries = []
        for stored in resources:
            if stored.json is None or stored.resource_type in HIDDEN_TYPES:
                continue
            try:
                body = self.cache.transform(engine, stored)
            except Suppressed:
                continue
            pseudonym = engine.pseudonyms.pseudonym(stored.resource_type, stored.id)
            entries.append(
                {
                    "fullUrl": f"{base}/{stored.resource_type}/{pseudonym}",
                    "resource": shape_resource(stored.resource_type, body, result),
                    "search": {"mode": mode},
                }
            )
        return entries


def _leaf(criterion: Clause | ChainClause | HasClause) -> Clause:
    while not isinstance(criterion, Clause):
        criterion = criterion.inner
    return criterion


def _denied(code: str, param_type: str) -> bool:
    return code in DENIED_CODES or param_type in DENIED_PARAM_TYPES


def _hidden_types_in(criterion: Any) -> bool:
    while not isinstance(criterion, Clause):
        if isinstance(criterion, HasClause) and criterion.resource_type in HIDDEN_TYPES:
            return True
        if isinstance(criterion, ChainClause) and set(criterion.target_types) & HIDDEN_TYPES:
            return True
        criterion = criterion.inner
    return False


def _check_query(query: SearchQuery) -> None:
    for unknown in query.unknown:
        # Refused even when the server cannot evaluate it (`_content`, `_text`): a research
        # client asking for text or identifiers must be told no, not served everything.
        code = unknown.name.split(":", 1)[0].split(".", 1)[0]
        if code in DENIED_CODES:
            raise error(
                400,
                "not-supported",
                f"{unknown.name}: searching on identifying data is not offered here",
                unknown.name,
            )
    for include in (*query.result.include, *query.result.revinclude):
        if include.source_type in HIDDEN_TYPES or include.target_type in HIDDEN_TYPES:
            raise error(400, "not-supported", f"{include.key}={include.to_param()}: not served")
    for criterion in query.clauses:
        if _hidden_types_in(criterion):
            raise error(400, "not-supported", f"{criterion.key}: not served", criterion.key)
        clause = _leaf(criterion)
        param = clause.param
        refused = _denied(param.code, param.type)
        for value in clause.values:
            if isinstance(value, ReferenceValue) and value.identifier_value is not None:
                refused = True
            if isinstance(value, CompositeValue):
                refused = refused or any(
                    type(part).__name__ in ("DateValue", "StringValue") for part in value.parts
                )
        if refused:
            raise error(
                400,
                "not-supported",
                f"Search parameter {criterion.key} is not available on the de-identified "
                "API (identifying, free-text or date parameter)",
                criterion.key,
            )
    for key in query.result.sort:
        param_type = key.param.type if key.param is not None else "date"
        if _denied(key.code, param_type) or key.code == "_id":
            raise error(
                400, "not-supported", f"Sorting by {key.code} is not available here", "_sort"
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
