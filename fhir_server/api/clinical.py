"""Clinical operations over HTTP: `GET /Observation/$lastn` and its compartment form
`GET /Patient/{id}/Observation/$lastn` (see fhir_server/clinical/lastn.py)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from fhir_server.api.http import base_url, check_accept, fhir_response, pretty, query_items
from fhir_server.clinical.lastn import OPERATION, lastn
from fhir_server.service.fhir import FhirService


def register_clinical_operations(app: FastAPI) -> None:
    """List $lastn on Observation in the CapabilityStatement (`app.state.operations`)."""
    entries = app.state.operations.setdefault("Observation", [])
    if OPERATION not in entries:
        entries.append(OPERATION)


def build_clinical_router() -> APIRouter:
    """Routes to include before the generic /{type}/{id} ones, which would take `$lastn`
    for an id."""
    router = APIRouter()

    async def answer(request: Request, compartment: tuple[str, str] | None) -> Response:
        check_accept(request)
        svc: FhirService = request.app.state.fhir
        if compartment is not None:
            svc.resources.check_type(compartment[0])
        strict = "handling=strict" in request.headers.get("prefer", "")
        base = base_url(request, request.app.state.settings.base_url)
        bundle = await run_in_threadpool(
            lastn, svc.search, query_items(request), base, strict, compartment
        )
        return fhir_response(bundle, 200, None, pretty(request))

    @router.get("/Observation/$lastn")
    async def observation_lastn(request: Request) -> Response:
        return await answer(request, None)

    @router.get("/{compartment_type}/{compartment_id}/Observation/$lastn")
    async def compartment_lastn(
        request: Request, compartment_type: str, compartment_id: str
    ) -> Response:
        return await answer(request, (compartment_type, compartment_id))

    return router
