"""Patients' rights over HTTP: `$expunge` (erasure, for an operator) and the public
transparency page (`/transparency`, HTML in French or English; `/transparency.json`).

`POST [type]/[id]/$expunge` erases every version of the resource; on a Patient it erases
the patient's whole compartment (rights/erasure.py). Refused with 409 while a legal hold
covers any of it. The answer is a Parameters resource: `count` (versions removed) and one
`erased` per resource (its type and id)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from fhir_server.api.http import check_accept, fhir_response
from fhir_server.auth.access import forbidden
from fhir_server.clinical.agp_text import choose_language
from fhir_server.model.outcome import error
from fhir_server.model.resource_types import is_resource_type, is_valid_id
from fhir_server.rights.erasure import Erasure
from fhir_server.rights.transparency import Transparency
from fhir_server.rights.transparency_text import TEXT
from fhir_server.ui.pages import html_response, render

EXPUNGE = ("expunge", "https://diatabase.org/fhir/OperationDefinition/expunge")


def register_rights_operations(operations: dict[str, list[tuple[str, str]]]) -> None:
    # Listed on Patient (its compartment variant); the instance form works on every type.
    listed = operations.setdefault("Patient", [])
    if EXPUNGE not in listed:
        listed.append(EXPUNGE)


def build_rights_router() -> APIRouter:
    router = APIRouter()

    @router.post("/{resource_type}/{rid}/$expunge")
    async def expunge(request: Request, resource_type: str, rid: str) -> Response:
        check_accept(request)
        # An operator's operation: every interaction on every type, not one patient's.
        if not request.state.access.allows_everything("cruds"):
            raise forbidden("$expunge is for an operator: a token granting every "
                            "interaction on every type")
        if not is_resource_type(resource_type) or not is_valid_id(rid):
            raise error(404, "not-found", f"Nothing at {resource_type}/{rid}")
        erasure: Erasure = request.app.state.erasure

        def work() -> dict[str, Any]:
            targets = erasure.instance_targets(resource_type, rid)
            report = erasure.erase(targets)
            parameters: list[dict[str, Any]] = [
                {"name": "count", "valueInteger": report.versions}
            ]
            parameters += [{"name": "erased", "valueString": r} for r in report.erased]
            return {"resourceType": "Parameters", "parameter": parameters}

        return fhir_response(await run_in_threadpool(work), 200)

    @router.get("/transparency.json")
    async def transparency_json(request: Request) -> Response:
        transparency: Transparency = request.app.state.transparency
        figures = await run_in_threadpool(transparency.figures)
        return Response(orjson.dumps(figures), 200, media_type="application/json")

    @router.get("/transparency")
    async def transparency_page(request: Request) -> Response:
        lang = choose_language(request.query_params.get("lang"),
                               request.headers.get("accept-language"))
        transparency: Transparency = request.app.state.transparency
        figures = await run_in_threadpool(transparency.figures)
        page = render("transparency.html", lang=lang, t=TEXT[lang], f=figures,
                      title=TEXT[lang]["title"])
        return html_response(page)

    return router
