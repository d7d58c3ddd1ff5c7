"""Clinical operations over HTTP:

- `GET /Observation/$lastn` and `GET /Patient/{id}/Observation/$lastn`
  (fhir_server/clinical/lastn.py);
- `GET /Patient/{id}/$cgm-metrics` (fhir_server/clinical/service.py): the CGM summary of
  a period as a collection Bundle coded as the HL7 CGM IG codes it; `persist=true` stores
  it with the PDF DiagnosticReport (a write, which needs create and update on Observation
  and DiagnosticReport);
- `GET /Patient/{id}/$agp`: the AGP report as HTML, PDF or PNG (`Accept`, or `_format`
  html / pdf / png), in English or French (`lang=`, or `Accept-Language`).

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
from fhir_server.clinical.agp_text import choose_language
from fhir_server.clinical.lastn import OPERATION, lastn
from fhir_server.clinical.patient_list import patient_name
from fhir_server.clinical.service import CgmRequest, CgmService
from fhir_server.model import jsonio
from fhir_server.model.outcome import error
from fhir_server.service.fhir import FhirService
from fhir_server.ui.agp_page import FORMATS, AgpReport
from fhir_server.ui.pages import html_response

CGM_METRICS = ("cgm-metrics", "http://diatabase.org/fhir/OperationDefinition/Patient-cgm-metrics")
AGP = ("agp", "http://diatabase.org/fhir/OperationDefinition/Patient-agp")
TRUE_FALSE = {"true": True, "false": False}


def register_clinical_operations(app: FastAPI) -> None:
    """List $lastn on Observation and $cgm-metrics on Patient in the CapabilityStatement
    (`app.state.operations`); the CGM service on `app.state.cgm`."""
    for rtype, operation in (("Observation", OPERATION), ("Patient", CGM_METRICS),
                             ("Patient", AGP)):
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
        settings = request.app.state.settings
        bundle = await run_in_threadpool(
            lastn, svc.search, query_items(request), base, strict, compartment,
            svc.indexed.clinical, settings.default_count,
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
            require_writes(request, ("Observation", "DiagnosticReport"))
        base = base_url(request, request.app.state.settings.base_url)
        lang = choose_language(request.query_params.get("lang"),
                               request.headers.get("accept-language"))
        bundle = await run_in_threadpool(
            summary, request.app.state.cgm, patient_id, cgm_request, base, persist, lang
        )
        return fhir_response(bundle, 200, None, pretty(request))

    @router.get("/Patient/{patient_id}/$agp")
    async def agp(request: Request, patient_id: str) -> Response:
        fmt = agp_format(request)
        report = await run_in_threadpool(agp_report, request, patient_id)
        if fmt == "html":
            links = {"pdf_url": "?" + agp_query(request, "pdf"),
                     "png_url": "?" + agp_query(request, "png"), "list_url": None}
            page = await run_in_threadpool(report.html, links)
            return html_response(page)
        body = await run_in_threadpool(report.page, fmt)
        return Response(body, 200, media_type=FORMATS[fmt])

    return router


def agp_format(request: Request) -> str:
    """html, pdf or png: `_format` first, then the first of them the Accept header names;
    HTML for a browser's `*/*`; 406 for a client that wants none of them (JSON: the
    figures are `$cgm-metrics`)."""
    fmt = request.query_params.get("_format")
    if fmt is not None:
        if fmt not in FORMATS:
            raise error(406, "not-supported", "_format must be html, pdf or png")
        return fmt
    accept = request.headers.get("accept", "")
    ranges = [part.split(";")[0].strip().lower() for part in accept.split(",") if part.strip()]
    if not ranges:
        return "html"
    for wanted in ranges:
        for name, media in FORMATS.items():
            if wanted == media:
                return name
    if any(r in ("*/*", "text/*") for r in ranges):
        return "html"
    raise error(406, "not-supported", f"Accept '{accept}' cannot be satisfied: the AGP is "
                "text/html, application/pdf or image/png (its figures: $cgm-metrics)")


def agp_query(request: Request, fmt: str) -> str:
    from urllib.parse import urlencode

    items = [(k, v) for k, v in query_items(request) if k != "_format"]
    return urlencode([*items, ("_format", fmt)])


def agp_report(request: Request, patient_id: str) -> AgpReport:
    cgm: CgmService = request.app.state.cgm
    cgm_request = CgmRequest.from_items(query_items(request))
    lang = choose_language(request.query_params.get("lang"),
                           request.headers.get("accept-language"))
    patient = jsonio.loads(cgm.fhir.resources.read("Patient", patient_id).json)
    metrics = cgm.metrics(patient_id, cgm_request)
    return AgpReport.of(metrics, patient_name(patient), lang, cgm_request.unit)


def summary(
    cgm: CgmService,
    patient_id: str,
    cgm_request: CgmRequest,
    base: str,
    persist: bool,
    lang: str,
) -> dict[str, Any]:
    # 404 / 410 as a read would answer
    patient = jsonio.loads(cgm.fhir.resources.read("Patient", patient_id).json)
    metrics = cgm.metrics(patient_id, cgm_request)
    pdf = None
    if persist:  # the IG's PDF DiagnosticReport, with the AGP
        report = AgpReport.of(metrics, patient_name(patient), lang, cgm_request.unit)
        pdf = (report.page("pdf"), report.pdf_title())
    return cgm.summary_bundle(patient_id, metrics, base, cgm_request.unit, persist, pdf)
