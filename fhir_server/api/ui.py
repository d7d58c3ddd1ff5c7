"""The clinician's pages: `GET /ui/patients` (the patient list; `group=` or
`organization=`, `sort=`, `lang=`) and `GET /ui/patients/{id}` (the patient's AGP page, the
same as `Patient/{id}/$agp` in HTML).

Authorization (auth/routes.py): the list is a search of Patient (narrowed to what the
token sees inside the queries, so a patient-context token lists its patient only), a
patient's page a search of Observation in its compartment.
"""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from fhir_server.api.clinical import agp_query, agp_report
from fhir_server.api.http import base_url, query_items
from fhir_server.clinical.agp_text import TEXT, choose_language, number
from fhir_server.clinical.patient_list import (
    DAYS,
    FLAG_TBR54,
    FLAG_TBR70,
    build_rows,
    sort_rows,
)
from fhir_server.ui.pages import html_response, render

COLUMNS = ("name", "hba1c", "hba1c_date", "tir", "tbr", "tbr54", "gmi", "wear", "flags")


def build_ui_router() -> APIRouter:
    router = APIRouter()

    @router.get("/ui/patients")
    async def patient_list(request: Request) -> Response:
        params = request.query_params
        lang = choose_language(params.get("lang"), request.headers.get("accept-language"))
        svc = request.app.state.fhir
        rows = await run_in_threadpool(
            build_rows, svc.search, svc.indexed.clinical, params.get("group"),
            params.get("organization"),
        )
        rows = sort_rows(rows, params.get("sort", "name"))
        page = await run_in_threadpool(list_page, request, rows, lang)
        return html_response(page)

    @router.get("/ui/patients/{patient_id}")
    async def patient_page(request: Request, patient_id: str) -> Response:
        report = await run_in_threadpool(agp_report, request, patient_id)
        base = base_url(request, request.app.state.settings.base_url)
        links = {
            "pdf_url": f"{base}/Patient/{patient_id}/$agp?" + agp_query(request, "pdf"),
            "png_url": f"{base}/Patient/{patient_id}/$agp?" + agp_query(request, "png"),
            "list_url": f"{base}/ui/patients",
        }
        page = await run_in_threadpool(report.html, links)
        return html_response(page)

    return router


def list_page(request: Request, rows: list, lang: str) -> str:
    t = TEXT[lang]
    base = base_url(request, request.app.state.settings.base_url)
    kept = [(k, v) for k, v in query_items(request) if k != "sort"]
    current = request.query_params.get("sort", "name")
    sort_links = {}
    for key in COLUMNS:
        wanted = f"-{key}" if current == key else key
        sort_links[key] = "?" + urlencode([*kept, ("sort", wanted)])
    lang_query = "?" + urlencode([("lang", lang)])
    return render(
        "patients.html",
        lang=lang,
        title=t["list_title"],
        t=t,
        rows=rows,
        columns=[(key, t[f"col_{key}"]) for key in COLUMNS],
        sort_links=sort_links,
        base=base,
        query=lang_query,
        days=DAYS,
        severe={FLAG_TBR54, FLAG_TBR70},
        fmt=lambda value: number(value, 1, lang) if value is not None else "-",
    )
