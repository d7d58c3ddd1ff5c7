"""`$validate` (R4 Resource-validate) at type and instance level.

`POST /{type}/$validate`, `POST /{type}/{id}/$validate` and `GET /{type}/{id}/$validate`
(the stored resource); the body is the resource, or a
Parameters resource with `resource`, `profile` and `mode` (create | update | delete).
`profile` and `mode` may also be given in the query. The answer is always 200 with an
OperationOutcome (an `information` issue when nothing is wrong): what a write of that
resource would meet — base structure, the profiles it claims, the profiles the operator's
rules require, and the nominated profile.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from fhir_server.api.http import check_accept, fhir_response, pretty, read_body
from fhir_server.model import jsonio
from fhir_server.model.outcome import FhirError, Issue, error, outcome
from fhir_server.model.resource_types import resource_types
from fhir_server.service.fhir import FhirService

VALIDATE_DEFINITION = "http://hl7.org/fhir/OperationDefinition/Resource-validate"
MODES = ("create", "update", "delete")


def register_validate_operation(app: FastAPI) -> None:
    """List $validate for every type in the CapabilityStatement (`app.state.operations`)."""
    operations: dict[str, list[tuple[str, str]]] = getattr(app.state, "operations", None) or {}
    for resource_type in resource_types():
        entries = operations.setdefault(resource_type, [])
        if ("validate", VALIDATE_DEFINITION) not in entries:
            entries.append(("validate", VALIDATE_DEFINITION))
    app.state.operations = operations


def _inputs(request: Request, body: Any) -> tuple[Any, list[str], str | None]:
    """(resource, profiles, mode) from a Parameters body or a bare resource + query."""
    profiles = list(request.query_params.getlist("profile"))
    mode = request.query_params.get("mode")
    resource = body
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        resource = None
        for parameter in body.get("parameter") or ():
            if not isinstance(parameter, dict):
                continue
            name = parameter.get("name")
            if name == "resource":
                resource = parameter.get("resource")
            elif name == "profile":
                value = parameter.get("valueUri") or parameter.get("valueCanonical")
                if isinstance(value, str):
                    profiles.append(value)
            elif name == "mode":
                value = parameter.get("valueCode") or parameter.get("valueString")
                if isinstance(value, str):
                    mode = value
    if mode is not None and mode not in MODES:
        raise error(400, "invalid", f"mode={mode} is not one of {', '.join(MODES)}", "mode")
    return resource, profiles, mode


def _answer(request: Request, issues: list[Issue]) -> Response:
    if not any(i.severity in ("error", "fatal", "warning") for i in issues):
        issues = [*issues, Issue("information", "informational", "No problems found")]
    return fhir_response(outcome(issues), 200, None, pretty(request))


def build_validate_router() -> APIRouter:
    router = APIRouter()

    async def validate(
        request: Request, resource_type: str, rid: str | None, with_body: bool = True
    ) -> Response:
        check_accept(request)
        svc: FhirService = request.app.state.fhir
        svc.resources.check_type(resource_type)
        body = None  # instance level without a body: validate the stored resource
        if with_body:
            try:
                body = await read_body(request, request.app.state.settings.max_body_bytes)
            except FhirError as exc:
                if exc.status != 400 or exc.issues[0].code != "required":
                    raise
        resource, profiles, mode = _inputs(request, body)
        if mode == "delete":
            if rid is None:
                raise error(400, "invalid", "mode=delete needs an instance: POST /{type}/{id}/"
                            "$validate")
            await run_in_threadpool(svc.resources.read, resource_type, rid)
            return _answer(request, [])
        if resource is None:
            if rid is None:
                raise error(400, "required", "$validate needs a resource to validate")
            stored = await run_in_threadpool(svc.resources.read, resource_type, rid)
            assert stored.json is not None
            resource = jsonio.loads(stored.json)
        if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
            found = resource.get("resourceType") if isinstance(resource, dict) else None
            raise error(
                400, "invalid", f"$validate on {resource_type} got a {found or 'non-resource'}"
            )
        issues: list[Issue] = []
        if mode == "update" or (rid is not None and mode is None and "id" in resource):
            if rid is not None and "id" in resource and resource["id"] != rid:
                issues.append(
                    Issue(
                        "error",
                        "invalid",
                        f"The resource's id '{resource.get('id')}' is not the id of the URL "
                        f"'{rid}'",
                        (f"{resource_type}.id",),
                    )
                )
            elif "id" not in resource:
                issues.append(
                    Issue("error", "required", "An update needs the resource's id",
                          (f"{resource_type}.id",))
                )
        issues.extend(await run_in_threadpool(svc.validate_resource, resource, profiles))
        return _answer(request, issues)

    @router.post("/{resource_type}/$validate")
    async def validate_type(request: Request, resource_type: str) -> Response:
        return await validate(request, resource_type, None)

    @router.post("/{resource_type}/{rid}/$validate")
    async def validate_instance(request: Request, resource_type: str, rid: str) -> Response:
        return await validate(request, resource_type, rid)

    @router.get("/{resource_type}/{rid}/$validate")
    async def validate_stored(request: Request, resource_type: str, rid: str) -> Response:
        """GET form (R4 allows it when no resource is passed): profile and mode in the query."""
        return await validate(request, resource_type, rid, with_body=False)

    return router
