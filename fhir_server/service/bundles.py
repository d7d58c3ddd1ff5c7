"""Transaction and batch Bundles (`POST /`).

A transaction is one storage transaction: entries run in the spec's order (DELETE, POST,
PUT/PATCH, GET), `urn:uuid:` fullUrls are given their final ids before anything is written
and rewritten everywhere in the bundle, conditional references (`Patient?identifier=..`)
are resolved against the data as it stands at that point of the transaction, and the first
failure rolls everything back. A batch runs each entry on its own.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fhir_server.audit.activity import set_interaction
from fhir_server.model import jsonio
from fhir_server.model.ids import new_id
from fhir_server.model.outcome import FhirError, Issue, error, outcome
from fhir_server.model.references import rewrite_strings
from fhir_server.model.resource_types import is_resource_type
from fhir_server.service.patching import Patch
from fhir_server.service.resources import PreparedCreate, ResourceService, WriteResult
from fhir_server.storage import budget
from fhir_server.storage.base import StoredResource, WriteTransaction

# `"reference": "Type?query"` somewhere in a body: only then are references searched.
CONDITIONAL_REFERENCE = re.compile(rb'"reference"\s*:\s*"[A-Za-z]+\?')
METHOD_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
STATUS_TEXT = {
    200: "200 OK",
    201: "201 Created",
    204: "204 No Content",
    304: "304 Not Modified",
    400: "400 Bad Request",
    404: "404 Not Found",
    409: "409 Conflict",
    410: "410 Gone",
    412: "412 Precondition Failed",
    422: "422 Unprocessable Entity",
}


@dataclass
class EntryRequest:
    index: int
    method: str
    resource_type: str
    id: str | None
    version: str | None
    query: list[tuple[str, str]]
    url: str
    full_url: str | None
    resource: Any
    if_match: str | None
    if_none_exist: list[tuple[str, str]] | None
    assigned_id: str | None = None
    found_id: str | None = None  # a conditional create that matched: no write, just this id
    response: dict[str, Any] = field(default_factory=dict)


# A callable the API gives for GET entries: (url, query) -> (status, resource JSON).
GetHandler = Callable[[str, list[tuple[str, str]]], tuple[int, Any]]


def _entry_error(index: int, message: str, code: str = "invalid") -> FhirError:
    return error(400, code, f"Bundle.entry[{index}]: {message}", f"Bundle.entry[{index}]")


def parse_entry(index: int, entry: Any, base_url: str) -> EntryRequest:
    if not isinstance(entry, dict):
        raise _entry_error(index, "an entry must be an object", "structure")
    request = entry.get("request")
    if not isinstance(request, dict):
        raise _entry_error(index, "request is required in a transaction or batch", "required")
    method = request.get("method")
    url = request.get("url")
    if method is None:
        raise _entry_error(index, "request.method is required", "required")
    if method not in METHOD_ORDER:
        raise _entry_error(index, f"request.method '{method}' is not supported")
    if not isinstance(url, str) or not url:
        raise _entry_error(index, "request.url is required", "required")
    if url.startswith(base_url.rstrip("/") + "/"):
        url = url[len(base_url.rstrip("/")) + 1 :]
    parts = urlsplit(url)
    path = [p for p in parts.path.split("/") if p]
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not path or not is_resource_type(path[0]):
        if method in ("GET", "HEAD") and (
            not path or path[0].startswith("$") or path[0] == "_history"
        ):
            path = path or [""]
        else:
            raise _entry_error(index, f"request.url '{url}' does not name a resource type")
    rid = path[1] if len(path) > 1 else None
    version = path[3] if len(path) > 3 and path[2] == "_history" else None
    if_none_exist = request.get("ifNoneExist")
    return EntryRequest(
        index=index,
        method=method,
        resource_type=path[0],
        id=rid,
        version=version,
        query=query,
        url=url,
        full_url=entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None,
        resource=entry.get("resource"),
        if_match=request.get("ifMatch"),
        if_none_exist=parse_qsl(if_none_exist.split("?", 1)[-1], keep_blank_values=True)
        if isinstance(if_none_exist, str) and if_none_exist
        else None,
    )


def _single_identifier(req: EntryRequest) -> str | None:
    """`system|value` when a POST's ifNoneExist is exactly one plain identifier token."""
    if req.method != "POST" or not req.if_none_exist or len(req.if_none_exist) != 1:
        return None
    name, token = req.if_none_exist[0]
    if name != "identifier" or token.count("|") != 1 or any(c in token for c in ",\\$"):
        return None
    system, _, value = token.partition("|")
    return token if system and value else None


def _patch_document(req: EntryRequest) -> Patch:
    """A PATCH entry's document. R4 carries a JSON Patch as a Binary (base64 data) and a
    FHIRPath Patch as a Parameters resource; a JSON Merge Patch travels as a Binary too,
    its `contentType` (application/merge-patch+json) telling it from a JSON Patch, as
    HTTP's Content-Type does outside a Bundle."""
    resource = req.resource
    if isinstance(resource, list):
        return Patch("json-patch", resource)
    if isinstance(resource, dict) and resource.get("resourceType") == "Parameters":
        return Patch("fhirpath-patch", resource)
    if isinstance(resource, dict) and resource.get("resourceType") == "Binary":
        try:
            document = jsonio.loads(base64.b64decode(resource.get("data", ""), validate=True))
        except (binascii.Error, jsonio.JsonError, ValueError) as exc:
            raise _entry_error(
                req.index, f"the Binary does not hold a JSON document: {exc}"
            ) from None
        content_type = resource.get("contentType")
        return Patch.from_body(content_type if isinstance(content_type, str) else "", document)
    raise _entry_error(
        req.index,
        "PATCH needs a Binary holding a JSON Patch or JSON Merge Patch, or a Parameters "
        "resource holding a FHIRPath Patch",
    )


def _write_response(result: WriteResult) -> dict[str, Any]:
    stored = result.stored
    return {
        "status": STATUS_TEXT[result.status],
        "location": stored.location,
        "etag": stored.etag,
        "lastModified": stored.instant,
    }


class BundleProcessor:
    def __init__(self, resources: ResourceService, base_url: str) -> None:
        self.resources = resources
        self.base_url = base_url
        self._conditional_references = True
        # Conditional references already resolved in this Bundle, per target type.
        self._resolved: dict[str, dict[str, str]] = {}

    def process(
        self,
        bundle: Any,
        get: GetHandler,
        return_resources: bool = False,
        raw: bytes | None = None,
        tx: WriteTransaction | None = None,
        cpu_slot: AbstractContextManager[Any] | None = None,
    ) -> dict:
        """Run a transaction or batch. `raw`, the body as received, lets the processor skip
        the search for conditional references when the text has none (a large speed-up
        for device uploads of thousands of entries). A transaction runs inside `tx` when
        given (the caller commits it, with whatever else it writes there: an HL7 v2 merge).
        `cpu_slot` is held while the Bundle's work is CPU-bound: a transaction's whole run,
        a batch's preparation of its creates but not its wait for the write lock and its
        writes (meanwhile the process prepares its next Bundle instead of idling)."""
        if raw is None:
            # In-process callers (imports, the MLLP listener) hand over a dict: serialising it
            # once is far cheaper than walking every entry's elements for references.
            try:
                raw = jsonio.dumps(bundle)
            except (TypeError, ValueError):
                raw = None
        self._conditional_references = raw is None or bool(CONDITIONAL_REFERENCE.search(raw))
        self._resolved: dict[str, dict[str, str]] = {}
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise error(400, "invalid", "POST / takes a Bundle of type transaction or batch")
        kind = bundle.get("type")
        if kind not in ("transaction", "batch"):
            raise error(
                400,
                "invalid" if kind is not None else "required",
                f"POST / takes a transaction or batch Bundle, not '{kind}'"
                if kind is not None
                else "POST / takes a transaction or batch Bundle; Bundle.type is missing",
                "Bundle.type",
            )
        set_interaction(kind)
        entries = bundle.get("entry") or []
        if not isinstance(entries, list):
            raise error(400, "structure", "Bundle.entry must be an array", "Bundle.entry")
        slot = cpu_slot if cpu_slot is not None else nullcontext()
        if kind == "transaction":
            with slot:
                responses = self._transaction(entries, get, tx)
        else:
            responses = self._batch(entries, get, slot)
        if not return_resources:
            for response in responses:
                if not response.pop("_read", False):
                    response.pop("_resource", None)
        for response in responses:
            response.pop("_read", None)
        return {
            "resourceType": "Bundle",
            "id": new_id(),
            "type": f"{kind}-response",
            "link": [{"relation": "self", "url": self.base_url}],
            "entry": [
                {**({"resource": r.pop("_resource")} if "_resource" in r else {}), "response": r}
                for r in responses
            ],
        }

    # -- transaction -----------------------------------------------------------------------

    def _transaction(
        self, entries: list[Any], get: GetHandler, tx: WriteTransaction | None = None
    ) -> list[dict[str, Any]]:
        requests = [parse_entry(i, e, self.base_url) for i, e in enumerate(entries)]
        seen_full_urls: set[str] = set()
        for req in requests:
            if req.full_url:
                if req.full_url in seen_full_urls:
                    raise _entry_error(req.index, f"fullUrl '{req.full_url}' appears twice")
                seen_full_urls.add(req.full_url)
        order = sorted(requests, key=lambda r: (METHOD_ORDER[r.method], r.index))
        if tx is None:
            with self.resources.storage.transaction() as own:
                self._write_entries(own, requests, order)
        else:
            self._write_entries(tx, requests, order)
        # Reads run after the writes commit, so they see the transaction's results.
        for req in order:
            if req.method in ("GET", "HEAD"):
                req.response = self._execute_get(req, get)
        return [req.response for req in requests]

    def _write_entries(
        self, tx: WriteTransaction, requests: list[EntryRequest], order: list[EntryRequest]
    ) -> None:
        mapping = self._assign_ids(tx, requests)
        for req in requests:
            if req.resource is not None and req.method in ("POST", "PUT"):
                self._rewrite(req, mapping)
        for req in order:
            if req.method in ("GET", "HEAD"):
                continue
            budget.check()  # a long Bundle stops between entries too (storage/budget.py)
            try:
                self._resolve_conditional_references(tx, req)
                req.response = self._execute_write(tx, req)
            except FhirError as exc:
                raise self._locate(exc, req) from None

    @staticmethod
    def _locate(exc: FhirError, req: EntryRequest) -> FhirError:
        issues = [
            Issue(
                i.severity,
                i.code,
                f"Bundle.entry[{req.index}] ({req.method} {req.url}): {i.diagnostics}",
                i.expression or (f"Bundle.entry[{req.index}]",),
            )
            for i in exc.issues
        ]
        return FhirError(exc.status, issues)

    def _identifier_matches(
        self, tx: WriteTransaction, requests: list[EntryRequest]
    ) -> dict[tuple[str, str, str], list[str]]:
        """For conditional creates on one `identifier=system|value` (what every mapper and
        device upload sends), the matching ids of all of them in a few searches of 100
        values each instead of one search per entry: a 90-day CGM import has 26,000."""
        wanted: dict[str, set[str]] = {}
        for req in requests:
            token = _single_identifier(req)
            if token is not None:
                wanted.setdefault(req.resource_type, set()).add(token)
        found: dict[tuple[str, str, str], list[str]] = {}
        for rtype, tokens in wanted.items():
            if len(tokens) < 2:
                continue  # one entry: the ordinary conditional search is as cheap
            for key in tokens:
                system, _, value = key.partition("|")
                found[(rtype, system, value)] = []
            ordered = sorted(tokens)
            for start in range(0, len(ordered), 100):
                chunk = ordered[start : start + 100]
                query = [("identifier", ",".join(chunk))]
                for rid in self.resources.conditional_ids(tx, rtype, query, limit=None):
                    stored = tx.read(rtype, rid)
                    if stored is None or stored.json is None:
                        continue
                    for ident in jsonio.loads(stored.json).get("identifier") or []:
                        if not isinstance(ident, dict):
                            continue
                        hit = found.get((rtype, ident.get("system"), ident.get("value")))
                        if hit is not None and rid not in hit:
                            hit.append(rid)
        return found

    def _assign_ids(self, tx: WriteTransaction, requests: list[EntryRequest]) -> dict[str, str]:
        """Decide the id of every created or updated entry before anything is written."""
        mapping: dict[str, str] = {}
        prefetched = self._identifier_matches(tx, requests)
        for req in requests:
            if req.method == "POST":
                if req.if_none_exist:
                    token = _single_identifier(req)
                    key = None
                    if token is not None:
                        system, _, value = token.partition("|")
                        key = (req.resource_type, system, value)
                    if key in prefetched:
                        ids = prefetched[key]
                    else:
                        ids = self.resources.conditional_ids(
                            tx, req.resource_type, req.if_none_exist
                        )
                    if len(ids) > 1:
                        raise self._locate(
                            error(412, "multiple-matches", "ifNoneExist matched several resources"),
                            req,
                        )
                    req.assigned_id = ids[0] if ids else new_id()
                    req.found_id = ids[0] if ids else None
                else:
                    req.assigned_id = new_id()
            elif req.method == "PUT" and req.id:
                req.assigned_id = req.id
            elif req.method == "PUT" and req.query:
                ids = self.resources.conditional_ids(tx, req.resource_type, req.query)
                if len(ids) > 1:
                    raise self._locate(
                        error(412, "multiple-matches", "The conditional update matched several"),
                        req,
                    )
                body_id = req.resource.get("id") if isinstance(req.resource, dict) else None
                req.assigned_id = ids[0] if ids else (body_id or new_id())
            elif req.method == "PATCH" and req.id:
                req.assigned_id = req.id
            if req.full_url and req.assigned_id:
                mapping[req.full_url] = f"{req.resource_type}/{req.assigned_id}"
        return mapping

    def _rewrite(self, req: EntryRequest, mapping: dict[str, str]) -> None:
        # Without a base (bundles loaded from files), only fullUrls are rewritten.
        base = self.base_url.rstrip("/") + "/" if self.base_url else None

        def replace(value: str) -> str | None:
            target = mapping.get(value)
            if target is not None:
                return target
            if base and value.startswith(base):  # references to our own base become relative
                rest = value[len(base) :]
                return rest if rest.count("/") in (1, 3) else None
            return None

        rewrite_strings(req.resource, replace)

    def _resolve_conditional_references(self, tx: WriteTransaction, req: EntryRequest) -> None:
        if not self._conditional_references or not isinstance(req.resource, dict):
            return
        from fhir_server.model.references import iter_references

        for ref in iter_references(req.resource):
            value = ref["reference"]
            if "?" not in value or value.startswith(("http:", "https:", "urn:")):
                continue
            rtype, _, query = value.partition("?")
            if not is_resource_type(rtype):
                raise error(
                    400, "invalid", f"Conditional reference '{value}' names no resource type"
                )
            cached = self._resolved.get(rtype, {}).get(value)
            if cached is not None:
                ref["reference"] = cached
                continue
            ids = self.resources.conditional_ids(
                tx, rtype, parse_qsl(query, keep_blank_values=True)
            )
            if len(ids) != 1:
                raise error(
                    412 if ids else 404,
                    "not-found" if not ids else "multiple-matches",
                    f"Conditional reference '{value}' matched {len(ids)} resources (needs 1)",
                )
            ref["reference"] = f"{rtype}/{ids[0]}"
            # Reused for the other entries until a write to that type could change the answer.
            self._resolved.setdefault(rtype, {})[value] = ref["reference"]

    def _execute_write(self, tx: WriteTransaction, req: EntryRequest) -> dict[str, Any]:
        svc = self.resources
        svc.check_type(req.resource_type)
        self._resolved.pop(req.resource_type, None)
        if req.method == "DELETE":
            if req.id:
                svc.delete_in(tx, req.resource_type, req.id, if_match=req.if_match)
            else:
                svc.conditional_delete_in(tx, req.resource_type, req.query, req.if_match)
            return {"status": STATUS_TEXT[204]}
        if req.method == "POST":
            if req.found_id:
                existing = tx.read(req.resource_type, req.found_id)
                assert existing is not None
                return self._with_resource(
                    _write_response(WriteResult(200, existing, False)), existing
                )
            result = svc.create_in(tx, req.resource_type, req.resource, rid=req.assigned_id)
        elif req.method == "PUT":
            if req.id:
                result = svc.update_in(tx, req.resource_type, req.id, req.resource, req.if_match)
            else:
                body = req.resource
                if isinstance(body, dict):
                    body = {**body, "id": req.assigned_id}
                result = svc.update_in(
                    tx, req.resource_type, str(req.assigned_id), body, req.if_match
                )
        elif req.id:  # PATCH
            result = svc.patch_in(tx, req.resource_type, req.id, _patch_document(req), req.if_match)
        elif req.query:  # conditional PATCH
            result = svc.conditional_patch_in(
                tx, req.resource_type, req.query, _patch_document(req), req.if_match
            )
        else:
            raise error(400, "invalid", "PATCH in a Bundle needs Type/id or Type?criteria")
        return self._with_resource(_write_response(result), result.stored)

    @staticmethod
    def _with_resource(response: dict[str, Any], stored: StoredResource) -> dict[str, Any]:
        if stored.json is not None:
            response["_resource"] = jsonio.fragment(stored.json)
        return response

    def _execute_get(self, req: EntryRequest, get: GetHandler) -> dict[str, Any]:
        try:
            status, body = get(req.url.split("?")[0], req.query)
        except FhirError as exc:
            return {
                "status": STATUS_TEXT.get(exc.status, str(exc.status)),
                "outcome": exc.to_outcome(),
            }
        response: dict[str, Any] = {"status": STATUS_TEXT.get(status, str(status)), "_read": True}
        if body is not None:
            response["_resource"] = body
        return response

    # -- batch -----------------------------------------------------------------------------

    def _batch(
        self, entries: list[Any], get: GetHandler, cpu_slot: AbstractContextManager[Any]
    ) -> list[dict[str, Any]]:
        responses: list[dict[str, Any]] = [{} for _ in entries]
        parsed: list[EntryRequest] = []
        with cpu_slot:
            for i, entry in enumerate(entries):
                try:
                    parsed.append(parse_entry(i, entry, self.base_url))
                except FhirError as exc:
                    responses[i] = {
                        "status": STATUS_TEXT.get(exc.status), "outcome": exc.to_outcome()
                    }
            ordered = sorted(parsed, key=lambda r: (METHOD_ORDER[r.method], r.index))
            writes = [r for r in ordered if r.method not in ("GET", "HEAD")]
            prepared = self._prepare_creates(writes, responses)
        writes = [r for r in writes if r.index in prepared or not responses[r.index]]
        if writes:
            # One commit for the whole batch; each entry in its own savepoint, so that a
            # failing entry undoes only itself. Runs of prepared creates (new ids, nothing
            # left to fail but the storage itself) are stored with one call each.
            with self.resources.storage.transaction() as tx:
                run: list[EntryRequest] = []
                for req in writes:
                    if req.index in prepared:
                        run.append(req)
                        continue
                    self._store_prepared(tx, run, prepared, responses)
                    run = []
                    try:
                        with tx.savepoint():
                            responses[req.index] = self._batch_write(tx, req)
                    except FhirError as exc:
                        responses[req.index] = self._failure(exc, req)
                self._store_prepared(tx, run, prepared, responses)
        for req in ordered:
            if req.method in ("GET", "HEAD"):
                responses[req.index] = self._execute_get(req, get)
        return responses

    def _prepare_creates(
        self, writes: list[EntryRequest], responses: list[dict[str, Any]]
    ) -> dict[int, PreparedCreate]:
        """Plain creates depend on nothing stored: they are validated, indexed and
        serialised before the write lock is taken, which is then held only for the writes
        themselves. A refused one gets its response here."""
        prepared: dict[int, PreparedCreate] = {}
        plain = not self._conditional_references
        for req in writes:
            budget.check()
            if req.method == "POST" and not req.if_none_exist and plain:
                try:
                    prepared[req.index] = self.resources.prepare_create(
                        req.resource_type, req.resource
                    )
                except FhirError as exc:
                    responses[req.index] = self._failure(exc, req)
        return prepared

    def _store_prepared(
        self,
        tx: WriteTransaction,
        run: list[EntryRequest],
        prepared: dict[int, PreparedCreate],
        responses: list[dict[str, Any]],
    ) -> None:
        if not run:
            return
        results = self.resources.create_prepared_many(tx, [prepared[r.index] for r in run])
        for req, result in zip(run, results, strict=True):
            responses[req.index] = self._with_resource(_write_response(result), result.stored)

    def _failure(self, exc: FhirError, req: EntryRequest) -> dict[str, Any]:
        return {
            "status": STATUS_TEXT.get(exc.status, str(exc.status)),
            "outcome": outcome(self._locate(exc, req).issues),
        }

    def _batch_write(self, tx: WriteTransaction, req: EntryRequest) -> dict[str, Any]:
        svc = self.resources
        svc.check_type(req.resource_type)
        if req.method == "POST" and req.if_none_exist:
            result = svc.create_in(tx, req.resource_type, req.resource, req.if_none_exist)
            return self._with_resource(_write_response(result), result.stored)
        self._resolve_conditional_references(tx, req)
        if req.method == "PUT" and not req.id:
            result = svc.conditional_update_in(
                tx, req.resource_type, req.query, req.resource, req.if_match
            )
            return self._with_resource(_write_response(result), result.stored)
        return self._execute_write(tx, req)
