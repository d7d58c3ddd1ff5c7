"""`$viewdefinition-export` (SQL on FHIR v2): long view runs as jobs of the one job store.

- `POST /ViewDefinition/$viewdefinition-export` (views as `view` parameters, each with
  `name` and `viewReference` or `viewResource`) and
  `POST /ViewDefinition/{id}/$viewdefinition-export` (a stored view), with
  `Prefer: respond-async`; `_format` (csv, ndjson, json, parquet; default ndjson),
  `header`, `patient`, `_since`, `clientTrackingId`. 202 with `Content-Location`.
- `GET /$viewdefinition-export-status/{id}`: 202 (`X-Progress`, `Retry-After`) while it
  runs, 303 to the result once done, 500 with an OperationOutcome if it failed; DELETE
  cancels it and deletes its files.
- `GET /$viewdefinition-export-result/{id}`: a Parameters with one `output` per view (its
  name and file URL); `GET /$viewdefinition-export-file/{id}/{name}`: the file.

Who may: as `$run`, search on the type each view reads (checked at the kick-off); the job
reads under the kick-off token's visibility (a patient-context token exports its patient's
rows) and is audited as a job. Status, result and files are served to the job's owner only.

The same routes under `/deid` serve a research recipient (its API key): the views run over
what the de-identification facade releases to it (`DeidFacade.released`, as its `$run`);
the kick-off and each file fetched are audited with the recipient.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from fhir_server.analytics.output import MEDIA_TYPES
from fhir_server.analytics.service import clinical_query, compile_or_400, parse_format
from fhir_server.analytics.stored import VIEW_TYPE
from fhir_server.api.bulk import cancel, owner_of
from fhir_server.api.http import JSON_TYPES, base_url, fhir_response, read_body
from fhir_server.jobs import Job, Owner
from fhir_server.jobs.manifest import listed_files, progress_text, status_answer
from fhir_server.jobs.store import CANCELLED, COMPLETED, FAILED
from fhir_server.jobs.view_export import DEID_VIEW_EXPORT, EXTENSIONS, VIEW_EXPORT, export_params
from fhir_server.model.outcome import FhirError, error
from fhir_server.search.visibility import Visibility, visible_as

EXPORT_OPERATION = (
    "viewdefinition-export", "http://sql-on-fhir.org/OperationDefinition/$viewdefinition-export"
)  # fmt: skip
STATUS, RESULT, FILES = (
    "$viewdefinition-export-status", "$viewdefinition-export-result", "$viewdefinition-export-file"
)  # fmt: skip
NOT_OFFERED = frozenset({"group", "source"})
_BY_EXTENSION = {ext: MEDIA_TYPES[fmt] for fmt, ext in EXTENSIONS.items()}


def register_view_export_operation(app: FastAPI) -> None:
    entries = app.state.operations.setdefault(VIEW_TYPE, [])
    if EXPORT_OPERATION not in entries:
        entries.append(EXPORT_OPERATION)


def _value(parameter: dict[str, Any]) -> Any:
    if "resource" in parameter:
        return parameter["resource"]
    return next((v for k, v in parameter.items() if k.startswith("value")), None)


def parse_export(body: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The `view` parameters (each as {name, reference, resource}) and the others by name."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise error(400, "invalid", "$viewdefinition-export takes a Parameters resource")
    views: list[dict[str, Any]] = []
    others: dict[str, Any] = {}
    for parameter in body.get("parameter", []) or []:
        name = parameter.get("name") if isinstance(parameter, dict) else None
        if not isinstance(name, str):
            raise error(400, "invalid", "Parameters.parameter needs a name")
        if name in NOT_OFFERED:
            raise error(400, "not-supported", f"$viewdefinition-export: {name} is not offered")
        if name != "view":
            if name in others:
                raise error(400, "invalid", f"$viewdefinition-export: {name} may be given once")
            others[name] = _value(parameter)
            continue
        parts = {p.get("name"): _value(p) for p in parameter.get("part", []) or []
                 if isinstance(p, dict)}  # fmt: skip
        reference = parts.get("viewReference")
        if isinstance(reference, dict):
            reference = reference.get("reference")
        views.append({"name": parts.get("name"), "reference": reference,
                      "resource": parts.get("viewResource")})  # fmt: skip
    return views, others


def _resolve(fhir: Any, asked: dict[str, Any]) -> dict[str, Any]:
    import orjson

    if (asked["reference"] is None) == (asked["resource"] is None):
        raise error(400, "invalid", "each view needs one of viewReference and viewResource")
    if asked["resource"] is not None:
        if not isinstance(asked["resource"], dict):
            raise error(400, "invalid", "viewResource must be a ViewDefinition")
        return asked["resource"]
    view_id = str(asked["reference"]).split("/_history/")[0].removeprefix(f"{VIEW_TYPE}/")
    return orjson.loads(fhir.resources.read(VIEW_TYPE, view_id).json)


def _views(fhir: Any, asked: list[dict[str, Any]], view_id: str | None
           ) -> list[tuple[str, dict[str, Any]]]:  # fmt: skip
    if view_id is not None:
        if asked:
            raise error(400, "invalid", "an export of a stored view takes no view parameter")
        asked = [{"name": None, "reference": view_id, "resource": None}]
    if not asked:
        raise error(400, "required", "$viewdefinition-export needs at least one view")
    views = []
    for item in asked:
        view = _resolve(fhir, item)
        compile_or_400(view)
        views.append((str(item["name"] or view.get("name") or "view"), view))
    return views


def _boolean(value: Any, name: str) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        value = {"true": True, "false": False}.get(value.lower(), value)
    if not isinstance(value, bool):
        raise error(400, "invalid", f"$viewdefinition-export: {name} must be true or false")
    return value


def _parameters(entries: list[tuple[str, Any]]) -> dict[str, Any]:
    parameter = []
    for name, value in entries:
        if value is None:
            continue
        if name == "output":
            parameter.append({"name": name, "part": value})
        else:
            key = {"status": "valueCode", "_format": "valueCode", "location": "valueUri",
                   "exportStartTime": "valueInstant", "exportEndTime": "valueInstant",
                   "exportDuration": "valueInteger"}.get(name, "valueString")  # fmt: skip
            parameter.append({"name": name, key: value})
    return {"resourceType": "Parameters", "parameter": parameter}


def _instant(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class _Caller:
    owner: Owner
    visibility: Visibility | None
    recipient: str | None = None  # a research recipient, at the facade's door


def _facade_read(call: Any, *args: Any) -> Any:
    """The facade's own reading (a stored view): no SMART token limits it; the recipient
    was authenticated by its key."""
    with visible_as(None):
        return call(*args)


def build_view_export_router(research: bool = False) -> APIRouter:
    """The clinical door (`research` False: routes to include before the generic
    /{type}/{id} ones), or a research recipient's at /deid (its API key; the views run
    over what the facade releases to it, as its `$run`)."""
    router = APIRouter()
    prefix = "/deid" if research else ""
    kind = DEID_VIEW_EXPORT if research else VIEW_EXPORT

    def base(request: Request) -> str:
        return base_url(request, request.app.state.settings.base_url) + prefix

    def caller(request: Request) -> _Caller:
        if research:
            from fhir_server.api.deid import _recipient

            recipient = _recipient(request)
            return _Caller(Owner(recipient=recipient.id), None, recipient.id)
        access = request.state.access
        return _Caller(owner_of(access), access.visibility)

    def audit(request: Request, who: _Caller, count: int, failed: bool = False) -> None:
        if research:  # the clinical door's requests are audited by the middleware
            from fhir_server.api.deid import _audit
            from fhir_server.audit.events import REFUSED, SUCCESS

            _audit(request, who.recipient, "operation", count, REFUSED if failed else SUCCESS)

    def owned(request: Request, job_id: str) -> tuple[Job, _Caller]:
        """The job, if the caller owns it; 404 otherwise (its existence is not told)."""
        who = caller(request)
        job = request.app.state.jobs.store.get(job_id)
        if job is None or job.kind != kind or job.status == CANCELLED or job.owner != who.owner:
            raise error(404, "not-found", "No such job (unknown, deleted or expired)")
        return job, who

    async def kick_off(request: Request, view_id: str | None = None) -> Response:
        who = caller(request)
        try:
            return await _kick_off(request, who, view_id)
        except FhirError:
            audit(request, who, 0, failed=True)
            raise

    async def _kick_off(request: Request, who: _Caller, view_id: str | None) -> Response:
        if "respond-async" not in request.headers.get("prefer", "").lower():
            raise error(400, "invalid", "$viewdefinition-export runs asynchronously: send "
                        "Prefer: respond-async")  # fmt: skip
        fhir = request.app.state.fhir
        body = await read_body(request, request.app.state.settings.max_body_bytes, JSON_TYPES)
        asked, others = parse_export(body)
        patient = others.get("patient")
        if isinstance(patient, dict):
            patient = patient.get("reference")
        if patient is not None:
            patient = str(patient).removeprefix("Patient/")
        if research:
            from fhir_server.deid.facade import served_types

            if patient is not None or others.get("_since") is not None:
                raise error(400, "not-supported", "patient and _since are not offered here")
            views = await run_in_threadpool(_facade_read, _views, fhir, asked, view_id)
            for _, view in views:
                if view["resource"] not in served_types():
                    raise error(400, "not-supported", f"{view['resource']} is not served here")
        else:
            views = await run_in_threadpool(_views, fhir, asked, view_id)
            access = request.state.access
            for _, view in views:
                access.require(view["resource"], "search-type")
                fhir.resources.check_type(view["resource"])
                # a patient or _since that cannot apply is a 400 now, not a failed job later
                clinical_query(fhir, view["resource"], patient, others.get("_since"))
        tracking = others.get("clientTrackingId")
        params = export_params(views, parse_format(others.get("_format") or "ndjson", None),
                               _boolean(others.get("header"), "header"), patient,
                               others.get("_since"), tracking)  # fmt: skip
        params["recipient"] = who.recipient
        job = await run_in_threadpool(
            request.app.state.jobs.submit, kind, who.owner, str(request.url), params,
            who.visibility,
        )  # fmt: skip
        audit(request, who, 0)
        status_url = f"{base(request)}/{STATUS}/{job.id}"
        answer = _parameters([("exportId", job.id), ("clientTrackingId", tracking),
                              ("status", "accepted"), ("location", status_url)])  # fmt: skip
        return fhir_response(answer, 202, {"Content-Location": status_url})

    for path in (f"{prefix}/{VIEW_TYPE}/$viewdefinition-export",
                 f"{prefix}/{VIEW_TYPE}/{{view_id}}/$viewdefinition-export"):  # fmt: skip
        router.add_api_route(path, kick_off, methods=["POST"])

    @router.get(f"{prefix}/{STATUS}/{{job_id}}")
    async def status(request: Request, job_id: str) -> Response:
        job, _ = owned(request, job_id)
        status_url = f"{base(request)}/{STATUS}/{job.id}"
        if job.status == FAILED:
            answer = status_answer(job, "", True)
            return fhir_response(answer.body, answer.status)
        if job.status == COMPLETED:
            return Response(status_code=303,
                            headers={"Location": f"{base(request)}/{RESULT}/{job.id}"})
        state = "in-progress" if job.status == "running" else "accepted"
        answer = _parameters([("exportId", job.id), ("status", state),
                              ("location", status_url)])  # fmt: skip
        return fhir_response(answer, 202, {"X-Progress": progress_text(job), "Retry-After": "2"})

    @router.delete(f"{prefix}/{STATUS}/{{job_id}}")
    async def delete(request: Request, job_id: str) -> Response:
        job, _ = owned(request, job_id)
        return await cancel(request, job)

    @router.get(f"{prefix}/{RESULT}/{{job_id}}")
    async def result(request: Request, job_id: str) -> Response:
        job, _ = owned(request, job_id)
        if job.status != COMPLETED or job.result is None:
            raise error(404, "not-found", f"The export is not complete: see {STATUS}/{job.id}")
        done = job.result
        files = f"{base(request)}/{FILES}/{job.id}"
        outputs = [("output", [{"name": "name", "valueString": item["type"]},
                               {"name": "location", "valueUri": f"{files}/{item['file']}"}])
                   for item in done["output"]]  # fmt: skip
        answer = _parameters([
            ("exportId", job.id), ("clientTrackingId", done.get("clientTrackingId")),
            ("status", "completed"), ("location", f"{base(request)}/{STATUS}/{job.id}"),
            ("_format", done["format"]), ("exportStartTime", _instant(done["started"])),
            ("exportEndTime", _instant(done["finished"])),
            ("exportDuration", round(done["finished"] - done["started"])), *outputs,
        ])  # fmt: skip
        headers = status_answer(job, files, True).headers  # Expires: when the files go
        return fhir_response(answer, 200, headers)

    @router.get(f"{prefix}/{FILES}/{{job_id}}/{{name}}")
    async def file(request: Request, job_id: str, name: str) -> Response:
        job, who = owned(request, job_id)
        if name not in listed_files(job):
            raise error(404, "not-found", "No such file in this export's output")
        count = next((o["count"] for o in job.result["output"] if o["file"] == name), 0)
        audit(request, who, count)  # the rows released to the recipient
        media = _BY_EXTENSION[name.rsplit(".", 1)[-1]]
        return FileResponse(job.folder / name, media_type=media)

    return router
