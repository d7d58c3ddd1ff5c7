"""The Nightscout-compatible upload API v1, one site per patient: /nightscout/{site}/api/v1/.

    POST/GET entries[.json], GET entries/current[.json], GET entries/{sgv|mbg|cal}[.json]
    POST/GET treatments[.json], devicestatus[.json], profile[.json]
    GET status[.json], verifyauth

Authentication as the uploaders (xDrip+, AndroidAPS, Loop, Trio...) send it: the
`api-secret` header (or `?secret=`) holding the SHA-1 or SHA-512 hex digest of the site's
secret (`diatabase nightscout add`). A wrong or missing secret is a 401 and stores nothing.
An authenticated request runs with the site's access: its patient's compartment only,
write and read of the resources Nightscout data becomes (fhir_server/ingest/nightscout.py),
audited with the site as the agent. Answers are Nightscout's JSON documents.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from fhir_server.api.http import base_url, check_body_memory, read_raw_body
from fhir_server.api.rest import _BUNDLE_SLOT
from fhir_server.auth.access import Access
from fhir_server.auth.routes import authorize_bundle
from fhir_server.auth.scopes import parse_scopes
from fhir_server.ingest.nightscout import SITE_TYPES, NightscoutService, parse_query
from fhir_server.ingest.nightscout_sites import NightscoutSites
from fhir_server.model import jsonio
from fhir_server.model.outcome import FhirError, Issue, error

SITE_SCOPES = parse_scopes(" ".join(f"patient/{t}.crs" for t in SITE_TYPES))
DEFAULT_COUNTS = {"entries": 10, "treatments": 100, "devicestatus": 10, "profile": 10}
API_VERSION = "15.0.0"  # the Nightscout API v1 this answers as (uploaders check `status`)


def site_access(site: str, patient: str, source: str | None) -> Access:
    """The access of an uploader that presented a site's secret: its patient only."""
    return Access(client_id=f"nightscout-site/{site}", source=source, scopes=SITE_SCOPES,
                  patient=patient, authenticated=True)


def _sites(request: Request) -> NightscoutSites:
    sites = getattr(request.app.state, "nightscout_sites", None)
    if sites is None:
        from fhir_server.auth.store import store_path

        sites = NightscoutSites(store_path(request.app.state.settings))
        request.app.state.nightscout_sites = sites
    return sites


def _service(request: Request) -> NightscoutService:
    return NightscoutService(request.app.state.fhir,
                             base_url(request, request.app.state.settings.base_url),
                             _BUNDLE_SLOT)


async def _authenticate(request: Request, site: str) -> Access:
    presented = request.headers.get("api-secret") or request.query_params.get("secret")
    found = await run_in_threadpool(_sites(request).authenticate, site, presented)
    source = request.client.host if request.client else None
    if found is None:
        # the audit trail names the site the caller tried, and why it was refused
        request.state.access = Access.anonymous(
            source, "wrong or missing Nightscout API secret", f"nightscout-site/{site}")
        raise FhirError(401, [Issue("error", "login",
                                    "Unauthorized: wrong or missing API secret")])
    access = site_access(site, found.patient, source)
    request.state.access = access
    return access


def _answer(documents: Any) -> Response:
    return Response(jsonio.dumps(documents), 200, media_type="application/json")


def build_nightscout_router() -> APIRouter:
    router = APIRouter()

    @router.get("/nightscout/{site}/api/v1/{path:path}")
    async def read(request: Request, site: str, path: str) -> Response:
        access = await _authenticate(request, site)
        patient = access.patient or ""
        parts = [p.removesuffix(".json") for p in path.strip("/").split("/") if p]
        if not parts:
            raise error(404, "not-found", "Nothing here")
        name = parts[0]
        service = _service(request)
        items = list(request.query_params.multi_items())
        if name == "verifyauth":
            return _answer({"status": 200, "message": {
                "canRead": True, "canWrite": True, "isAdmin": False, "message": "OK",
                "rolefound": "FOUND", "permissions": "ROLE"}})
        if name == "status":
            return _answer(_status())
        if name == "entries" and len(parts) <= 2:
            current = parts[1:] == ["current"]
            query = parse_query("entries", items, 1 if current else DEFAULT_COUNTS["entries"])
            if current:
                query.count, query.kind = 1, "sgv"
                query.items = [i for i in query.items if i[0] != "date"]
            elif len(parts) == 2:
                if parts[1] not in ("sgv", "mbg", "cal"):
                    raise error(404, "not-found", f"No entries of type {parts[1][:20]!r}")
                query.kind = parts[1]
            return _answer(await run_in_threadpool(
                service.entries, patient, query, access.visibility))
        if name in ("treatments", "devicestatus") and len(parts) == 1:
            query = parse_query(name, items, DEFAULT_COUNTS[name])
            method = service.treatments if name == "treatments" else service.devicestatus
            return _answer(await run_in_threadpool(method, patient, query, access.visibility))
        if name == "profile" and len(parts) <= 2:
            count = 1 if parts[1:] == ["current"] else DEFAULT_COUNTS["profile"]
            return _answer(await run_in_threadpool(
                service.profiles, patient, count, access.visibility))
        raise error(404, "not-found", f"Nothing at {request.url.path}")

    @router.post("/nightscout/{site}/api/v1/{path:path}")
    async def upload(request: Request, site: str, path: str) -> Response:
        access = await _authenticate(request, site)
        name = path.strip("/").removesuffix(".json")
        if name not in DEFAULT_COUNTS:
            raise error(404, "not-found", f"Nothing to upload at {request.url.path}")
        settings = request.app.state.settings
        raw = await read_raw_body(request, settings.max_body_bytes)
        check_body_memory(raw, settings.limits.max_body_memory_bytes)
        try:
            body = jsonio.loads(raw)
        except ValueError:
            raise error(400, "invalid", "The body is not JSON") from None
        service = _service(request)
        bundle, answered = service.prepare(site, access.patient or "", name, body)
        if bundle["entry"]:
            authorize_bundle(access, bundle, service.base_url)
            await run_in_threadpool(service.store, bundle, access.visibility)
        return _answer(answered)

    return router


def _status() -> dict[str, Any]:
    now = time.time()
    return {
        "status": "ok", "name": "diatabase", "version": API_VERSION,
        "serverTime": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now)),
        "serverTimeEpoch": int(now * 1000), "apiEnabled": True, "careportalEnabled": True,
        "boluscalcEnabled": False,
        "settings": {"units": "mg/dl", "enable": ["careportal", "iob", "cob", "basal"],
                     "authDefaultRoles": "denied"},
        "extendedSettings": {}, "authorized": None,
    }
