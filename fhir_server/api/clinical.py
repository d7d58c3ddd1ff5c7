"""Clinical operations over HTTP:

- `GET /Observation/$lastn` and `GET /Patient/{id}/Observation/$lastn`
  (fhir_server/clinical/lastn.py);
- `GET /Patient/{id}/$cgm-metrics` (fhir_server/clinical/service.py): the CGM summary of
  a period as a collection Bundle coded as the HL7 CGM IG codes it; `persist=true` stores
  it (a write, which needs create and update on Observation and DiagnosticReport).

Authorization (auth/routes.py) treats these as searches of Observation in the patient's
compartment; the patient itself is read through the caller's access, so a patient the
caller may not see is a 404, as a read would be.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from fhir_server.api.http import base_url, check_accept, fhir_response, pretty, query_items
from fhir_server.clinical.lastn import OPERATION, lastn
from fhir_server.clinical.service import CgmRequest, CgmService
from fhir_server.model.outcome import error
from fhir_server.service.fhir import FhirService

CGM_METRICS = ("cgm-metrics", "http://diatabase.org/fhir/OperationDefinition/Patient-cgm-metrics")
TRUE_FALSE = {"true": True, "false": False}


def register_clinical_operations(app: FastAPI) -> None:
    """List $lastn on Observation and $cgm-metrics on Patient in the CapabilityStatement
    (`app.state.operations`); the CGM service on `app.state.cgm`."""
    for rtype, operation in (("Observation", OPERATION), ("Patient", CGM_METRICS)):
        entries = app.state.operations.setdefault(rtype, [])
        if operation not in entries:
            entries.append(operation)
    app.state.cgm = CgmService(app.state.fhir)


def flag(items: list[tuple[str, str]], name: str) -> bool:
    values = [v for k, v in items if k == name]
    if not values:
        return False
    if len(values) > 1 or values[0] not in TRUE_FALSE:
        raise error(400, "invalid", f"{name} must be true or false, once")
    return TRUE_FALSE[values[0]]


def require_writes(request: Request, types: tuple[str, ...]) -> None:
    access = getattr(request.state, "access", None)
    if access is None:
        return
    for rtype in types:
        access.require(rtype, "create")
        access.require(rtype, "update")


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

    @router.get("/Patient/{patient_id}/$cgm-metrics")
    async def cgm_metrics(request: Request, patient_id: str) -> Response:
        check_accept(request)
        items = query_items(request)
        cgm_request = CgmRequest.from_items(items)
        persist = flag(items, "persist")
        if persist:
            require_writes(request, ("Observation",))
        base = base_url(request, request.app.state.settings.base_url)
        bundle = await run_in_threadpool(
            summary, request.app.state.cgm, patient_id, cgm_request, base, persist
        )
        return fhir_response(bundle, 200, None, pretty(request))

    return router


def summary(
    cgm: CgmService, patient_id: str, cgm_request: CgmRequest, base: str, persist: bool
) -> dict[str, Any]:
    cgm.fhir.resources.read("Patient", patient_id)  # 404 / 410 as a read would answer
    metrics = cgm.metrics(patient_id, cgm_request)
    return cgm.summary_bundle(patient_id, metrics, base, cgm_request.unit, persist)
