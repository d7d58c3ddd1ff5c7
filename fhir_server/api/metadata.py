"""`GET /metadata`: a CapabilityStatement built from what the server actually has.

Types come from the R4 schema, search parameters from the live registry (custom ones
included), operations from the services that registered them; nothing is listed by hand.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from fhir_server import __version__
from fhir_server.api.http import base_url, check_accept, fhir_response, pretty
from fhir_server.auth.smart import capability_security
from fhir_server.model.resource_types import resource_types
from fhir_server.search.support import is_supported

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


def capability_statement(request: Request) -> dict[str, Any]:
    service = request.app.state.fhir
    operations = getattr(request.app.state, "operations", {})
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
        type_operations = operations.get(rtype, [])
        if type_operations:
            entry["operation"] = [{"name": n, "definition": d} for n, d in type_operations]
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
    return {
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


def build_metadata_router() -> APIRouter:
    router = APIRouter()

    @router.get("/metadata")
    async def metadata(request: Request) -> Response:
        check_accept(request)
        return fhir_response(capability_statement(request), 200, None, pretty(request))

    return router
