"""The FHIR RESTful API: instance, type and system interactions over HTTP."""

from __future__ import annotations

import threading
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from fhir_server.api.http import (
    base_url,
    check_accept,
    fhir_response,
    link,
    pretty,
    query_items,
    read_body,
    read_by_key,
    version_headers,
)
from fhir_server.api.limits import check_bundle_size
from fhir_server.auth.routes import authorize_bundle
from fhir_server.model import jsonio
from fhir_server.model.outcome import error, info_outcome
from fhir_server.model.resource_types import is_resource_type
from fhir_server.service.fhir import FhirService
from fhir_server.service.patching import MEDIA_TYPES as PATCH_MEDIA_TYPES
from fhir_server.service.patching import Patch
from fhir_server.service.resources import WriteResult, parse_etag
from fhir_server.service.search import shape_resource
from fhir_server.storage.base import StoredResource, instant
from fhir_server.storage.cursor import CursorError

RESULT_PARAMS = ("_format", "_pretty")
EVERYTHING_OPERATION = ("everything", "http://hl7.org/fhir/OperationDefinition/Patient-everything")


def register_rest_operations(operations: dict[str, list[tuple[str, str]]]) -> None:
    """List the operations of this router in the CapabilityStatement (`app.state.operations`):
    `$everything` on Patient, at instance and type level."""
    listed = operations.setdefault("Patient", [])
    if EVERYTHING_OPERATION not in listed:
        listed.append(EVERYTHING_OPERATION)


def _service(request: Request) -> FhirService:
    return request.app.state.fhir


def _base(request: Request) -> str:
    return base_url(request, request.app.state.settings.base_url)


def _max_body(request: Request) -> int:
    return request.app.state.settings.max_body_bytes


def _write_response(request: Request, result: WriteResult) -> Response:
    headers = version_headers(result.stored, _base(request))
    prefer = request.headers.get("prefer", "")
    if "return=minimal" in prefer:
        return fhir_response(None, result.status, headers)
    if "return=OperationOutcome" in prefer:
        verb = "created" if result.created else ("updated" if result.status == 200 else "found")
        stored = result.stored
        message = f"{stored.resource_type}/{stored.id} {verb} (version {stored.version})"
        body = info_outcome(message)
        resources = request.app.state.fhir.resources
        if resources.lenient and stored.json:
            # lenient mode stores resources that break core rules: say which
            body["issue"].extend(
                i.to_json() for i in resources.write_issues(jsonio.loads(stored.json))
                if i.severity == "warning"
            )
        return fhir_response(body, result.status, headers)
    return fhir_response(result.stored.json, result.status, headers, pretty(request))


def _patient_scope(request: Request) -> str | None:
    """The patient a patient-context access is limited to (None: no such limit), from the
    request's authorization decision when the server makes one."""
    access = getattr(request.state, "access", None)
    return getattr(access, "patient_compartment", None)


def _conditional_items(request: Request) -> list[tuple[str, str]]:
    return [(k, v) for k, v in query_items(request) if k not in RESULT_PARAMS]


def _no_query(request: Request) -> None:
    """Writes that take no search criteria refuse them rather than drop them silently."""
    items = _conditional_items(request)
    if items:
        names = ", ".join(dict.fromkeys(k for k, _ in items))
        raise error(
            400,
            "invalid",
            f"{request.method} {request.url.path} takes no search parameters (got {names}): "
            "conditional interactions are made on the type, e.g. PUT [type]?criteria",
        )


def _if_none_exist(request: Request) -> list[tuple[str, str]] | None:
    """A create's conditions: the If-None-Exist header, or a search in the URL's query
    string (`POST /Patient?identifier=sys|val`, what fhirpy's `create(**search)` and
    `get_or_create` send). Both at once must agree."""
    header = request.headers.get("if-none-exist")
    from_header = parse_qsl(header.split("?", 1)[-1], keep_blank_values=True) if header else None
    from_url = _conditional_items(request) or None
    if from_header and from_url and sorted(from_header) != sorted(from_url):
        raise error(
            400,
            "invalid",
            "The If-None-Exist header and the URL's query string give different criteria",
        )
    return from_header or from_url


async def _patch_body(request: Request) -> Patch:
    body = await read_body(request, _max_body(request), PATCH_MEDIA_TYPES)
    return Patch.from_body(request.headers.get("content-type", ""), body)


def _parse_instant(name: str, value: str) -> float:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise error(400, "invalid", f"{name}={value} is not a FHIR instant") from None
    if parsed.tzinfo is None:
        raise error(400, "invalid", f"{name}={value} needs a time zone (an instant)")
    return parsed.timestamp()


def _not_modified(request: Request, stored: StoredResource) -> bool:
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        tags = [parse_etag(t) for t in if_none_match.split(",")]
        return "*" in tags or str(stored.version) in tags
    if_modified_since = request.headers.get("if-modified-since")
    if if_modified_since:
        try:
            since = parsedate_to_datetime(if_modified_since).timestamp()
        except (TypeError, ValueError):
            return False
        return int(stored.last_updated) <= since
    return False


def _read_response(request: Request, stored: StoredResource) -> Response:
    headers = version_headers(stored, _base(request))
    headers.pop("Location")
    if _not_modified(request, stored):
        return fhir_response(None, 304, headers)
    body: Any = stored.json
    subset = [(k, v) for k, v in query_items(request) if k in ("_summary", "_elements")]
    if subset and body is not None:
        # R4 allows _summary and _elements on read and vread too.
        result = _service(request).search.parse(stored.resource_type, subset, strict=True).result
        body = shape_resource(stored.resource_type, body, result)
    return fhir_response(body, 200, headers, pretty(request))


# One Bundle at a time per worker process while its work is CPU-bound: two such Bundles in
# threads of one process only fight over the GIL (measured: 4 clients on 2 workers were
# slower than 2). A batch leaves the slot once its creates are prepared, so that the next
# Bundle is prepared while this one waits for the write lock that the other workers share.
# Other requests still run beside it; more cores are used through `--workers`.
_BUNDLE_SLOT = threading.Lock()


def build_router() -> APIRouter:
    router = APIRouter()

    # -- system level ---------------------------------------------------------------------

    @router.post("/")
    async def transaction_or_batch(request: Request) -> Response:
        check_accept(request)
        _no_query(request)
        bundle, raw = await read_body(request, _max_body(request), with_raw=True)
        check_bundle_size(bundle, request.app.state.settings.limits)
        svc = _service(request)
        base = _base(request)
        authorize_bundle(request.state.access, bundle, base)  # every entry, before any runs
        return_resources = "return=representation" in request.headers.get("prefer", "")

        def get(url: str, items: list[tuple[str, str]]) -> tuple[int, Any]:
            return svc.get_for_bundle(url, items, base)

        def process() -> dict:
            return svc.bundles(base).process(
                bundle, get, return_resources, raw, cpu_slot=_BUNDLE_SLOT
            )

        response = await run_in_threadpool(process)
        return fhir_response(response, 200, None, pretty(request))

    @router.get("/")
    async def system_search(request: Request) -> Response:
        """`GET [base]?_type=Patient,Observation&...`: search across types."""
        check_accept(request)
        svc = _service(request)
        items = query_items(request)
        for key, value in items:
            unknown = (
                [n for n in value.split(",") if not is_resource_type(n)] if key == "_type" else []
            )
            if unknown:
                raise error(400, "invalid", f"_type: unknown resource type {unknown[0]!r}", "_type")
        strict = "handling=strict" in request.headers.get("prefer", "")
        bundle = await run_in_threadpool(svc.search_bundle, None, items, _base(request), strict)
        return fhir_response(bundle, 200, None, pretty(request))

    @router.get("/_history")
    async def system_history(request: Request) -> Response:
        return await _history(request, None, None)

    # -- type level -----------------------------------------------------------------------

    @router.get("/{resource_type}")
    async def search(request: Request, resource_type: str) -> Response:
        check_accept(request)
        svc = _service(request)
        svc.resources.check_type(resource_type)
        strict = "handling=strict" in request.headers.get("prefer", "")
        bundle = await run_in_threadpool(
            svc.search_bundle, resource_type, query_items(request), _base(request), strict
        )
        return fhir_response(bundle, 200, None, pretty(request))

    @router.post("/{resource_type}/_search")
    async def search_post(request: Request, resource_type: str) -> Response:
        check_accept(request)
        svc = _service(request)
        svc.resources.check_type(resource_type)
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type and content_type != "application/x-www-form-urlencoded":
            raise error(
                415, "not-supported", "POST _search takes application/x-www-form-urlencoded"
            )
        form = await request.form()
        items = query_items(request) + [(k, str(v)) for k, v in form.multi_items()]
        strict = "handling=strict" in request.headers.get("prefer", "")
        bundle = await run_in_threadpool(
            svc.search_bundle, resource_type, items, _base(request), strict
        )
        return fhir_response(bundle, 200, None, pretty(request))

    @router.post("/{resource_type}")
    async def create(request: Request, resource_type: str) -> Response:
        check_accept(request)
        svc = _service(request)
        svc.resources.check_type(resource_type)
        body = await read_body(request, _max_body(request))
        items = _if_none_exist(request)
        result = await run_in_threadpool(svc.resources.create, resource_type, body, items)
        return _write_response(request, result)

    @router.put("/{resource_type}")
    async def conditional_update(request: Request, resource_type: str) -> Response:
        check_accept(request)
        svc = _service(request)
        svc.resources.check_type(resource_type)
        body = await read_body(request, _max_body(request))
        result = await run_in_threadpool(
            svc.resources.conditional_update,
            resource_type,
            _conditional_items(request),
            body,
            request.headers.get("if-match"),
        )
        return _write_response(request, result)

    @router.delete("/{resource_type}")
    async def conditional_delete(request: Request, resource_type: str) -> Response:
        check_accept(request)
        svc = _service(request)
        svc.resources.check_type(resource_type)
        deleted = await run_in_threadpool(
            svc.resources.conditional_delete,
            resource_type,
            _conditional_items(request),
            request.headers.get("if-match"),
        )
        if not deleted:
            # R4: no match is an ordinary delete of nothing, answered without a body
            return fhir_response(None, 204)
        return fhir_response(
            info_outcome(f"Deleted {deleted[0].resource_type}/{deleted[0].id}"), 200
        )

    @router.patch("/{resource_type}")
    async def conditional_patch(request: Request, resource_type: str) -> Response:
        check_accept(request)
        svc = _service(request)
        svc.resources.check_type(resource_type)
        patch = await _patch_body(request)
        result = await run_in_threadpool(
            svc.resources.conditional_patch,
            resource_type,
            _conditional_items(request),
            patch,
            request.headers.get("if-match"),
        )
        return _write_response(request, result)

    @router.get("/{resource_type}/_history")
    async def type_history(request: Request, resource_type: str) -> Response:
        _service(request).resources.check_type(resource_type)
        return await _history(request, resource_type, None)

    @router.get("/Patient/$everything")
    async def everything_type_level(request: Request) -> Response:
        """`GET /Patient/$everything`: every Patient compartment the caller may see, paged;
        a patient-context access sees its own patient's only."""
        check_accept(request)
        svc = _service(request)
        strict = "handling=strict" in request.headers.get("prefer", "")
        bundle = await run_in_threadpool(
            svc.search.everything,
            "Patient",
            _patient_scope(request),
            query_items(request),
            _base(request),
            strict,
        )
        return fhir_response(bundle, 200, None, pretty(request))

    # -- instance level -------------------------------------------------------------------

    @router.get("/{resource_type}/{rid}")
    async def read(request: Request, resource_type: str, rid: str) -> Response:
        check_accept(request)
        stored = await read_by_key(request, _service(request).resources.read, resource_type, rid)
        return _read_response(request, stored)

    @router.put("/{resource_type}/{rid}")
    async def update(request: Request, resource_type: str, rid: str) -> Response:
        check_accept(request)
        _no_query(request)
        svc = _service(request)
        svc.resources.check_type(resource_type)
        body = await read_body(request, _max_body(request))
        result = await run_in_threadpool(
            svc.resources.update, resource_type, rid, body, request.headers.get("if-match")
        )
        return _write_response(request, result)

    @router.patch("/{resource_type}/{rid}")
    async def patch(request: Request, resource_type: str, rid: str) -> Response:
        check_accept(request)
        _no_query(request)
        svc = _service(request)
        svc.resources.check_type(resource_type)
        patch = await _patch_body(request)
        result = await run_in_threadpool(
            svc.resources.patch, resource_type, rid, patch, request.headers.get("if-match")
        )
        return _write_response(request, result)

    @router.delete("/{resource_type}/{rid}")
    async def delete(request: Request, resource_type: str, rid: str) -> Response:
        check_accept(request)
        _no_query(request)
        svc = _service(request)
        deleted = await run_in_threadpool(
            svc.resources.delete, resource_type, rid, request.headers.get("if-match")
        )
        headers = {"ETag": deleted.etag} if deleted else {}
        if "return=minimal" in request.headers.get("prefer", ""):
            return fhir_response(None, 204, headers)
        message = (
            f"Deleted {resource_type}/{rid} (version {deleted.version})"
            if deleted
            else f"{resource_type}/{rid} did not exist or was already deleted"
        )
        return fhir_response(info_outcome(message), 200, headers)

    @router.get("/{resource_type}/{rid}/_history")
    async def instance_history(request: Request, resource_type: str, rid: str) -> Response:
        svc = _service(request)
        svc.resources.check_type(resource_type)
        if svc.storage.read(resource_type, rid) is None:
            raise error(404, "not-found", f"{resource_type}/{rid} is not known")
        return await _history(request, resource_type, rid)

    @router.get("/{compartment_type}/{compartment_id}/{resource_type}")
    async def compartment_search(
        request: Request, compartment_type: str, compartment_id: str, resource_type: str
    ) -> Response:
        """`GET /Patient/123/Observation?code=...`: a search within a compartment (the
        CompartmentDefinition's reference parameters), whether or not Patient/123 exists."""
        check_accept(request)
        svc = _service(request)
        svc.resources.check_type(compartment_type)
        strict = "handling=strict" in request.headers.get("prefer", "")
        if resource_type == "$everything":
            bundle = await run_in_threadpool(
                svc.search.everything,
                compartment_type,
                compartment_id,
                query_items(request),
                _base(request),
                strict,
            )
            return fhir_response(bundle, 200, None, pretty(request))
        if resource_type != "*":
            svc.resources.check_type(resource_type)
        else:
            raise error(400, "not-supported", "compartment search needs a resource type")
        strict = "handling=strict" in request.headers.get("prefer", "")
        bundle = await run_in_threadpool(
            svc.search.bundle,
            resource_type,
            query_items(request),
            _base(request),
            strict,
            (compartment_type, compartment_id),
        )
        return fhir_response(bundle, 200, None, pretty(request))

    @router.get("/{resource_type}/{rid}/_history/{vid}")
    async def vread(request: Request, resource_type: str, rid: str, vid: str) -> Response:
        check_accept(request)
        stored = await run_in_threadpool(_service(request).resources.vread, resource_type, rid, vid)
        return _read_response(request, stored)

    return router


async def _history(request: Request, resource_type: str | None, rid: str | None) -> Response:
    check_accept(request)
    svc = _service(request)
    settings = request.app.state.settings
    params = request.query_params
    since = _parse_instant("_since", params["_since"]) if "_since" in params else None
    at = _parse_instant("_at", params["_at"]) if "_at" in params else None
    count = _parse_count(params.get("_count"), settings.default_count, settings.max_count)
    cursor = params.get("_cursor")
    try:
        page = await run_in_threadpool(
            svc.storage.history, resource_type, rid, since, at, count, cursor
        )
    except CursorError as exc:
        raise error(400, "invalid", str(exc)) from None
    base = _base(request)
    path = "/".join(p for p in (resource_type, rid, "_history") if p)
    kept = [(k, v) for k, v in query_items(request) if k in ("_since", "_at", "_count")]
    links = [{"relation": "self", "url": link(base, path, query_items(request))}]
    if page.next_cursor:
        links.append(
            {"relation": "next", "url": link(base, path, [*kept, ("_cursor", page.next_cursor)])}
        )
    entries = [_history_entry(stored, base) for stored in page.entries]
    bundle = {
        "resourceType": "Bundle",
        "type": "history",
        "link": links,
        "entry": entries,
    }
    if rid is not None and not cursor and not page.next_cursor:
        bundle["total"] = len(entries)
    return fhir_response(bundle, 200, None, pretty(request))


def _parse_count(value: str | None, default: int, maximum: int) -> int:
    if value is None:
        return default
    if not value.isdigit():
        raise error(400, "invalid", f"_count={value} is not a non-negative integer", "_count")
    return max(1, min(int(value), maximum))


def _history_entry(stored: StoredResource, base: str) -> dict[str, Any]:
    full_url = f"{base}/{stored.resource_type}/{stored.id}"
    entry: dict[str, Any] = {"fullUrl": full_url}
    if stored.json is not None:
        entry["resource"] = jsonio.fragment(stored.json)
    method = "DELETE" if stored.deleted else ("POST" if stored.method == "POST" else "PUT")
    url = f"{stored.resource_type}/{stored.id}" if method != "POST" else stored.resource_type
    entry["request"] = {"method": method, "url": url}
    status = (
        "204 No Content" if stored.deleted else ("201 Created" if stored.version == 1 else "200 OK")
    )
    entry["response"] = {
        "status": status,
        "etag": stored.etag,
        "lastModified": instant(stored.last_updated),
    }
    if not stored.deleted:
        entry["response"]["location"] = f"{full_url}/_history/{stored.version}"
    return entry
