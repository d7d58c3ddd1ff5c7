"""`/deid/`: the pseudonymized, read-only FHIR API for research recipients.

Every request needs `Authorization: Bearer <API key>` of a configured recipient (401
otherwise, audited too). Everything served is pseudonymized for that recipient by
`fhir_server.deid`; this module only does HTTP: routes, auth, audit calls, headers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from fhir_server import __version__
from fhir_server.api.bulk import answer_response
from fhir_server.api.http import base_url, check_accept, fhir_response, pretty, query_items
from fhir_server.audit import Activity, Agent
from fhir_server.audit.events import RECIPIENT_SYSTEM, REFUSED, SUCCESS
from fhir_server.deid.context import DeidContext
from fhir_server.deid.facade import FacadeAnswer, served_types
from fhir_server.deid.recipients import Recipient
from fhir_server.deid.signing import MANIFEST
from fhir_server.deid.view_search import UNSUPPORTED_CODES, ViewPolicy
from fhir_server.jobs import Job
from fhir_server.jobs.manifest import listed_files, status_answer
from fhir_server.jobs.store import CANCELLED
from fhir_server.model.outcome import error

PREFIX = "/deid"
VIEW_DOCUMENTATION = (
    "Evaluated on the de-identified resources (shifted dates, removed names and "
    "identifiers), not on the stored data; not sortable; _total=accurate is computed "
    "on the view up to 10000 candidates"
)
MANIFEST_EXTENSION = "https://diatabase.org/fhir/StructureDefinition/deid-export-manifest"
# The signed manifest itself (counts, hashes, k-anonymity report), inline in the status.
SIGNED_EXTENSION = "https://diatabase.org/fhir/StructureDefinition/deid-export-signed-manifest"
# Every answer says what it is held to: k, the quasi-identifiers, how many patients of the
# recipient's population are generalized and how many are not served.
K_ANONYMITY_HEADER = "X-Diatabase-K-Anonymity"


def _deid(request: Request) -> DeidContext:
    return request.app.state.deid


def _base(request: Request) -> str:
    return base_url(request, request.app.state.settings.base_url) + PREFIX


def _what(request: Request) -> str:
    query = request.url.query
    return f"{request.method} {request.url.path}" + (f"?{query}" if query else "")


def _audit(
    request: Request,
    recipient_id: str | None,
    interaction: str,
    count: int,
    outcome: str = SUCCESS,
    entity: str | None = None,
) -> None:
    """The facade's event: which recipient, what, how many resources it served."""
    address = request.client.host if request.client else None
    agent = Agent(
        client_id=recipient_id,
        address=address,
        display=None if recipient_id else "unauthenticated client",
        client_system=RECIPIENT_SYSTEM,
    )
    activity = Activity(
        agent,
        interaction,
        _what(request),
        entity,
        door="deid",
        collect_reads=False,
        read_count=count,
        outcome=outcome,
    )
    request.app.state.fhir.audit.finish(activity, 200)


def _recipient(request: Request) -> Recipient:
    deid = _deid(request)
    recipient = deid.recipients.authenticate(request.headers.get("authorization"))
    if recipient is None:
        _audit(request, None, "operation", 0, REFUSED)
        raise error(
            401,
            "security",
            "A recipient API key is required: Authorization: Bearer <key>",
            **{"WWW-Authenticate": 'Bearer realm="diatabase-deid"'},
        )
    return recipient


async def _answer(
    request: Request, recipient: Recipient, interaction: str, call: Any, *args: Any
) -> Response:
    try:
        answer: FacadeAnswer = await run_in_threadpool(call, *args)
    except Exception:
        # Refused (4xx) or failed: audited either way, then answered by the app's handlers.
        _audit(request, recipient.id, interaction, 0, REFUSED)
        raise
    _audit(request, recipient.id, interaction, answer.count, entity=answer.entity)
    headers = {K_ANONYMITY_HEADER: answer.release} if answer.release else None
    return fhir_response(answer.body, 200, headers, pretty(request))


async def _search(request: Request, resource_type: str, with_form: bool) -> Response:
    """A type-level search, GET or POST `_search` (the form's parameters added)."""
    check_accept(request)
    recipient = _recipient(request)
    engine = _deid(request).recipients.engine(recipient.id)
    items = query_items(request)
    if with_form:
        form = await request.form()
        items += [(k, str(v)) for k, v in form.multi_items()]
    strict = "handling=strict" in request.headers.get("prefer", "")
    return await _answer(
        request,
        recipient,
        "search-type",
        _deid(request).facade.search,
        engine,
        resource_type,
        items,
        _base(request),
        strict,
    )


def facade_capability_statement(request: Request) -> dict[str, Any]:
    """What the facade serves, truthfully: read and search of the served types with every
    search parameter the server indexes (those on data de-identification changes say they
    are evaluated on the de-identified view), $everything on Patient and $export."""
    registry = request.app.state.fhir.registry
    # Unauthenticated, so for every recipient: a parameter on the view for one is listed so.
    policies = [ViewPolicy(recipient.rules) for recipient in _deid(request).recipients]
    resources = []
    for rtype in served_types():
        params = []
        for code, p in sorted(registry.for_type(rtype).items()):
            if code in UNSUPPORTED_CODES or not p.expression or p.type == "special":
                continue
            param: dict[str, Any] = {"name": code, "type": p.type}
            if any(policy.is_view_param(p, rtype) for policy in policies):
                param["documentation"] = VIEW_DOCUMENTATION
            params.append(param)
        entry: dict[str, Any] = {
            "type": rtype,
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": params,
        }
        if rtype == "Patient":
            entry["operation"] = [
                {
                    "name": "everything",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                }
            ]
        resources.append(entry)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "publisher": "Diatabase",
        "kind": "instance",
        "software": {"name": "Diatabase de-identification facade", "version": __version__},
        "implementation": {
            "description": "Pseudonymized, read-only FHIR API for research recipients",
            "url": _base(request),
        },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Every resource is pseudonymized for the calling recipient, and every "
                    "answer is k-anonymous over the recipient's whole population on its "
                    "quasi-identifiers (birth year, gender, postal prefix by default): a "
                    "patient in a class smaller than k is served with its postal prefix, "
                    "then its birth year removed, or not at all, the same way on every "
                    f"request until the patients change. Each answer's {K_ANONYMITY_HEADER} "
                    "header gives k, the quasi-identifiers and how many patients are "
                    "generalized or not served."
                ),
                "security": {
                    "description": "Authorization: Bearer <recipient API key>",
                },
                "resource": resources,
                "operation": [
                    {
                        "name": "export",
                        "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
                    }
                ],
            }
        ],
    }


def build_deid_metadata_router(path: str) -> APIRouter:
    router = APIRouter()

    @router.get(path)
    async def metadata(request: Request) -> Response:
        check_accept(request)
        return fhir_response(facade_capability_statement(request), 200, None, pretty(request))

    return router


def build_deid_router() -> APIRouter:
    router = APIRouter(prefix=PREFIX)
    router.include_router(build_deid_metadata_router("/metadata"))

    @router.get("/$export")
    async def export(request: Request) -> Response:
        recipient = _recipient(request)
        deid = _deid(request)
        types = None
        if request.query_params.get("_type"):
            types = [t for t in request.query_params["_type"].split(",") if t]
            unknown = set(types) - set(served_types())
            if unknown:
                raise error(400, "not-supported", f"_type: not served here: {sorted(unknown)}")
        job = await run_in_threadpool(deid.jobs.start, recipient.id, types, str(request.url))
        _audit(request, recipient.id, "operation", 0)
        status_url = f"{_base(request)}/$export-status/{job.id}"
        return Response(status_code=202, headers={"Content-Location": status_url})

    def _job(request: Request, recipient: Recipient, job_id: str) -> Job:
        job = _deid(request).jobs.get(job_id, recipient.id)
        if job is None or job.status == CANCELLED:
            raise error(404, "not-found", "No such export job")
        return job

    @router.get("/$export-status/{job_id}")
    async def export_status(request: Request, job_id: str) -> Response:
        recipient = _recipient(request)
        job = await run_in_threadpool(_job, request, recipient, job_id)
        files = f"{_base(request)}/$export-file/{job.id}"
        signed = (job.result or {}).get("signed")
        extension = {MANIFEST_EXTENSION: f"{files}/{MANIFEST}", SIGNED_EXTENSION: signed}
        return answer_response(status_answer(job, files, True, extension if signed else None))

    @router.delete("/$export-status/{job_id}")
    async def export_delete(request: Request, job_id: str) -> Response:
        recipient = _recipient(request)
        job = await run_in_threadpool(_job, request, recipient, job_id)
        await run_in_threadpool(_deid(request).jobs.runner.cancel, job.id)
        return Response(status_code=202)

    @router.get("/$export-file/{job_id}/{name}")
    async def export_file(request: Request, job_id: str, name: str) -> Response:
        recipient = _recipient(request)
        job = await run_in_threadpool(_job, request, recipient, job_id)
        if name not in listed_files(job):
            raise error(404, "not-found", "No such export file")
        _audit(request, recipient.id, "operation", 0)
        media = "application/json" if name == MANIFEST else "application/fhir+ndjson"
        return FileResponse(job.folder / name, media_type=media)

    @router.get("/Patient/{pseudonym}/$everything")
    async def everything(request: Request, pseudonym: str) -> Response:
        check_accept(request)
        recipient = _recipient(request)
        engine = _deid(request).recipients.engine(recipient.id)
        facade = _deid(request).facade
        return await _answer(
            request, recipient, "operation", facade.everything, engine, pseudonym, _base(request)
        )

    @router.get("/{resource_type}")
    async def search(request: Request, resource_type: str) -> Response:
        return await _search(request, resource_type, with_form=False)

    @router.post("/{resource_type}/_search")
    async def search_post(request: Request, resource_type: str) -> Response:
        return await _search(request, resource_type, with_form=True)

    @router.get("/{resource_type}/{pseudonym}")
    async def read(request: Request, resource_type: str, pseudonym: str) -> Response:
        check_accept(request)
        recipient = _recipient(request)
        engine = _deid(request).recipients.engine(recipient.id)
        facade = _deid(request).facade
        return await _answer(
            request, recipient, "read", facade.read, engine, resource_type, pseudonym
        )

    return router
