"""`GET /metadata`: a CapabilityStatement built from what the server actually has.

Types come from the R4 schema, search parameters from the live registry (custom ones
included), operations from the services that registered them; nothing is listed by hand.
"""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from fhir_server import __version__
from fhir_server.api.http import base_url, check_accept, fhir_response, pretty
from fhir_server.auth.smart import capability_security
from fhir_server.model import jsonio
from fhir_server.model.resource_types import resource_types
from fhir_server.search.support import is_supported
from fhir_server.subscriptions.topics import TOPICS

TYPE_INTERACTIONS = (
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
)


def _references(service: Any) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Per type, the `_include` values it takes (`Type:param` for each supported reference
    parameter, and `*`) and the `_revinclude` values that reach it (`Source:param` for each
    reference parameter of any type that may point to it)."""
    includes: dict[str, list[str]] = {}
    revincludes: dict[str, list[str]] = {}
    all_types = sorted(resource_types())
    for rtype in all_types:
        for code, param in sorted(service.registry.for_type(rtype).items()):
            if param.type != "reference" or not is_supported(param, service.registry, rtype):
                continue
            includes.setdefault(rtype, ["*"]).append(f"{rtype}:{code}")
            for target in param.target or all_types:
                revincludes.setdefault(target, []).append(f"{rtype}:{code}")
    return includes, revincludes


def _profiles_by_type(service: Any) -> dict[str, list[str]]:
    """The profiles the server holds (the diabetes ones), by the type they constrain."""
    found: dict[str, list[str]] = {}
    for definition in service.profiles.structure_definitions:
        if definition.get("kind") == "resource" and definition.get("url"):
            found.setdefault(definition["type"], []).append(definition["url"])
    return found


TOPIC_CANONICAL = ("http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
                   "capabilitystatement-subscriptiontopic-canonical")


def capability_statement(request: Request) -> dict[str, Any]:
    service = request.app.state.fhir
    operations = getattr(request.app.state, "operations", {})
    includes, revincludes = _references(service)
    profiles = _profiles_by_type(service)
    resources = []
    for rtype in sorted(resource_types()):
        params = service.registry.for_type(rtype)
        entry: dict[str, Any] = {
            "type": rtype,
            "interaction": [{"code": code} for code in TYPE_INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "full-support",
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "searchParam": [
                {
                    "name": code,
                    **({"definition": p.url} if p.url else {}),
                    "type": p.type,
                    "documentation": p.description or f"{p.type} search on {p.expression}",
                }
                for code, p in sorted(params.items())
                if is_supported(p, service.registry, rtype)
            ],
        }
        if rtype in includes:
            entry["searchInclude"] = includes[rtype]
        if rtype in revincludes:
            entry["searchRevInclude"] = sorted(revincludes[rtype])
        type_operations = operations.get(rtype, [])
        if type_operations:
            entry["operation"] = [{"name": n, "definition": d} for n, d in type_operations]
        if rtype in profiles:
            entry["supportedProfile"] = sorted(profiles[rtype])
        if rtype == "Subscription":
            # the backport IG's way of listing the topics an R4 server offers
            entry["extension"] = [{"url": TOPIC_CANONICAL, "valueCanonical": url}
                                  for url in TOPICS]
        resources.append(entry)
    rest: dict[str, Any] = {
        "mode": "server",
        "documentation": "Diatabase FHIR R4 server for diabetes data (JSON only)",
        "resource": resources,
        "interaction": [
            {"code": "transaction"},
            {"code": "batch"},
            {"code": "history-system"},
            {"code": "search-system"},
        ],
    }
    rest["security"] = capability_security(request)
    system_operations = operations.get("*", [])
    if system_operations:
        rest["operation"] = [{"name": n, "definition": d} for n, d in system_operations]
    statement: dict[str, Any] = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "publisher": "Diatabase",
        "kind": "instance",
        "software": {"name": "Diatabase", "version": __version__},
        "implementation": {
            "description": "Diatabase FHIR server",
            "url": base_url(request, request.app.state.settings.base_url),
        },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        # JSON Patch, FHIRPath Patch (a Parameters resource) and JSON Merge Patch
        "patchFormat": [
            "application/json-patch+json",
            "application/fhir+json",
            "application/merge-patch+json",
        ],
        "rest": [rest],
    }
    # Guides' own CapabilityStatements this server meets in full; a feature that makes the
    # server meet one adds its canonical to `app.state.instantiates` (the CGM IG's data
    # receiver, with $submit-cgm-bundle: api/cgm_submit.py).
    instantiates = getattr(request.app.state, "instantiates", [])
    if instantiates:
        statement["instantiates"] = list(instantiates)
    return statement


def build_metadata_router() -> APIRouter:
    router = APIRouter()
    # The statement is ~900 KB and ~90 ms to build, ~50 ms to gzip; what it lists is fixed
    # when the app is built (registry, profiles, operations), so it is built and compressed
    # once per base URL and day (the gzip middleware leaves an encoded response alone).
    cache: dict[str, tuple[str, bytes, bytes]] = {}

    def render(request: Request) -> tuple[bytes, bytes]:
        body = jsonio.dumps(capability_statement(request))
        return body, gzip.compress(body, compresslevel=9, mtime=0)

    @router.get("/metadata")
    async def metadata(request: Request) -> Response:
        check_accept(request)
        base = base_url(request, request.app.state.settings.base_url)
        today = datetime.now(UTC).strftime("%Y-%m-%d")
        cached = cache.get(base)
        if cached is None or cached[0] != today:
            cached = cache[base] = (today, *await run_in_threadpool(render, request))
        if "gzip" in request.headers.get("accept-encoding", "") and not pretty(request):
            response = fhir_response(cached[1], 200)
            response.body = cached[2]
            response.headers["Content-Encoding"] = "gzip"
            response.headers["Content-Length"] = str(len(cached[2]))
            response.headers["Vary"] = "Accept-Encoding"
            return response
        return fhir_response(cached[1], 200, None, pretty(request))

    return router
