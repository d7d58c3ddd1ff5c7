"""Bulk Data over HTTP: `$export` kick-off at system, Patient and Group level, the status
URL (poll, DELETE to cancel) and the output files; `$import` (a manifest of NDJSON file
URLs, or one NDJSON file as the body) with its status and error file. HTTP only: the jobs
themselves are fhir_server/jobs/.

Who may: the kick-off needs a scope allowing the search of each exported type (a system
export of everything needs system/*.rs), and the job sees only what the kick-off's token
could see (a patient-context token exports its own patient). `$import` needs a scope
writing every type (system/*.cruds). Status and files are served
to the job's owner only (another client gets a 404, as if there were no such job).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from fhir_server.api.http import base_url, check_accept, fhir_response, query_items, read_body
from fhir_server.auth.access import Access, forbidden
from fhir_server.jobs import EXPORT, IMPORT, Job, JobRunner, Owner
from fhir_server.jobs.bulk_import import parse_manifest, stage_upload
from fhir_server.jobs.export_request import (
    GROUP,
    PATIENT,
    SYSTEM,
    items_from_parameters,
    parse_export_request,
)
from fhir_server.jobs.manifest import StatusAnswer, listed_files, status_answer
from fhir_server.jobs.store import CANCELLED
from fhir_server.model.outcome import Issue, error, info_outcome, outcome
from fhir_server.model.resource_types import is_resource_type

EXPORT_OPERATION = ("export", "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export")
PATIENT_EXPORT = (
    "export", "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"
)
GROUP_EXPORT = ("export", "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export")
NDJSON = "application/fhir+ndjson"
NDJSON_UPLOADS = ("application/fhir+ndjson", "application/ndjson", "application/x-ndjson")
# An NDJSON file sent as the body of the kick-off (larger imports: a manifest of URLs).
MAX_UPLOAD_BYTES = 4 * 1024**3


def register_bulk_operations(operations: dict[str, list[tuple[str, str]]]) -> None:
    """The Bulk Data operations in the CapabilityStatement."""
    for where, operation in (("*", EXPORT_OPERATION), ("Patient", PATIENT_EXPORT),
                             ("Group", GROUP_EXPORT)):
        listed = operations.setdefault(where, [])
        if operation not in listed:
            listed.append(operation)


def _runner(request: Request) -> JobRunner:
    return request.app.state.jobs


def _base(request: Request) -> str:
    return base_url(request, request.app.state.settings.base_url)


def _access(request: Request) -> Access:
    return request.state.access


def owner_of(access: Access) -> Owner:
    """Who owns a job started with `access` (nobody in particular with --insecure-dev)."""
    if access.unrestricted:
        return Owner()
    return Owner(client_id=access.client_id, subject=access.subject)


def owned_job(request: Request, job_id: str, kind: str) -> Job:
    """The job, if the caller owns it; 404 otherwise (its existence is not told)."""
    job = _runner(request).store.get(job_id)
    if job is None or job.kind != kind or job.status == CANCELLED:
        raise error(404, "not-found", "No such job (unknown, deleted or expired)")
    if job.owner != owner_of(_access(request)):
        raise error(404, "not-found", "No such job (unknown, deleted or expired)")
    return job


def requires_access_token(request: Request) -> bool:
    return not request.app.state.settings.insecure_dev


def job_status(request: Request, job: Job, files_path: str,
               extension: dict[str, Any] | None = None) -> Response:
    answer = status_answer(job, f"{_base(request)}/{files_path}/{job.id}",
                           requires_access_token(request), extension)
    return answer_response(answer)


def answer_response(answer: StatusAnswer) -> Response:
    """A job's status as HTTP: the manifest (200), progress (202) or the failure."""
    if answer.status == 200:
        headers = {"Content-Type": "application/json", **answer.headers}
        return fhir_response(answer.body, 200, headers)
    if answer.body is not None:
        return fhir_response(answer.body, answer.status, answer.headers)
    return Response(status_code=answer.status, headers=answer.headers)


def job_file(job: Job, name: str) -> Response:
    if name not in listed_files(job):
        raise error(404, "not-found", "No such file in this job's output")
    media = NDJSON if name.endswith(".ndjson") else "application/json"
    return FileResponse(job.folder / name, media_type=media)


async def cancel(request: Request, job: Job) -> Response:
    await run_in_threadpool(_runner(request).cancel, job.id)
    message = "The job was cancelled and its files deleted" if job.finished is None else \
        "The job's files were deleted"
    return fhir_response(info_outcome(message), 202)


async def receive_upload(request: Request, target: Path) -> None:
    """Stream an uploaded NDJSON body to `target` (never whole in memory); 413 past
    MAX_UPLOAD_BYTES, 400 when empty."""
    size = 0
    try:
        with target.open("wb") as handle:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_UPLOAD_BYTES:
                    raise error(413, "too-costly",
                                f"An upload is limited to {MAX_UPLOAD_BYTES} bytes: send a "
                                "manifest of file URLs instead")
                handle.write(chunk)
        if size == 0:
            raise error(400, "required", "The request has no body")
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _check_async(request: Request) -> bool:
    """The kick-off must ask for the async pattern; returns lenient handling or not."""
    check_accept(request)
    prefer = request.headers.get("prefer", "").lower()
    if "respond-async" not in prefer:
        raise error(400, "invalid", "Bulk operations run asynchronously: send "
                    "Prefer: respond-async")
    return "handling=lenient" in prefer


def _check_types(access: Access, types: list[str] | None) -> None:
    """Each type named in `_type` must be searchable by the token (403 otherwise); without
    `_type`, the job exports the types the token may search."""
    for rtype in types or ():
        if not access.allows(rtype, "search"):
            raise forbidden(f"The access token grants no scope to export {rtype}")


def build_bulk_router() -> APIRouter:
    router = APIRouter()

    async def kick_off(request: Request, level: str, group_id: str | None = None) -> Response:
        lenient = _check_async(request)
        if request.method == "POST":
            body = await read_body(request, request.app.state.settings.max_body_bytes)
            items = items_from_parameters(body)
        else:
            items = [(k, v) for k, v in query_items(request) if k not in ("_format", "_pretty")]
        service = request.app.state.fhir
        export = parse_export_request(level, items, service.registry, lenient, group_id)
        access = _access(request)
        _check_types(access, export.types)
        if group_id is not None:
            # 404 when the Group is unknown or not visible to the token.
            await run_in_threadpool(service.resources.read, "Group", group_id)
        job = await run_in_threadpool(
            _runner(request).submit, EXPORT, owner_of(access), str(request.url),
            export.to_params(), access.visibility,
        )
        status_url = f"{_base(request)}/$export-status/{job.id}"
        issues = [Issue("information", "informational", "The export job was accepted")]
        issues += [Issue("warning", "not-supported", f"Ignored: {m}") for m in export.ignored]
        return fhir_response(outcome(issues), 202, {"Content-Location": status_url})

    @router.get("/$export")
    @router.post("/$export")
    async def export_system(request: Request) -> Response:
        return await kick_off(request, SYSTEM)

    @router.get("/Patient/$export")
    @router.post("/Patient/$export")
    async def export_patients(request: Request) -> Response:
        return await kick_off(request, PATIENT)

    @router.get("/Group/{group_id}/$export")
    @router.post("/Group/{group_id}/$export")
    async def export_group(request: Request, group_id: str) -> Response:
        return await kick_off(request, GROUP, group_id)

    _add_job_routes(router, EXPORT, "export")

    @router.post("/$import")
    async def import_kick_off(request: Request) -> Response:
        _check_async(request)
        settings = request.app.state.settings
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type in NDJSON_UPLOADS:
            declared = request.query_params.get("type", "")
            if declared and not is_resource_type(declared):
                raise error(400, "invalid", f"type={declared} is not a resource type", "type")
            staged = stage_upload(_runner(request).store.root / "uploads")
            await receive_upload(request, staged)
            inputs = [{"type": declared, "url": "upload", "path": str(staged)}]
        else:
            body = await read_body(request, settings.max_body_bytes)
            inputs = await run_in_threadpool(parse_manifest, body, tuple(settings.import_dirs))
        access = _access(request)
        job = await run_in_threadpool(
            _runner(request).submit, IMPORT, owner_of(access), str(request.url),
            {"inputs": inputs}, access.visibility,
        )
        status_url = f"{_base(request)}/$import-status/{job.id}"
        return fhir_response(info_outcome("The import job was accepted"), 202,
                             {"Content-Location": status_url})

    _add_job_routes(router, IMPORT, "import")
    return router


def _add_job_routes(router: APIRouter, kind: str, operation: str) -> None:
    """`$<operation>-status/{job_id}` (GET the status, DELETE to cancel) and
    `$<operation>-file/{job_id}/{name}`, for the owner of a job of `kind`."""

    async def status(request: Request, job_id: str) -> Response:
        job = await run_in_threadpool(owned_job, request, job_id, kind)
        return job_status(request, job, f"${operation}-file")

    async def cancel_job(request: Request, job_id: str) -> Response:
        job = await run_in_threadpool(owned_job, request, job_id, kind)
        return await cancel(request, job)

    async def file(request: Request, job_id: str, name: str) -> Response:
        job = await run_in_threadpool(owned_job, request, job_id, kind)
        return job_file(job, name)

    router.add_api_route(f"/${operation}-status/{{job_id}}", status, methods=["GET"],
                         name=f"{operation}_status")
    router.add_api_route(f"/${operation}-status/{{job_id}}", cancel_job, methods=["DELETE"],
                         name=f"{operation}_cancel")
    router.add_api_route(f"/${operation}-file/{{job_id}}/{{name}}", file, methods=["GET"],
                         name=f"{operation}_file")
