"""Cohorts over HTTP: `POST Group/{id}/$evaluate` runs a Group definition (`actual` false)
and records its members with the date (analytics/cohorts.py); `GET Group/{id}/$members`
pages through the members of the latest evaluation (or of `evaluation=N`) as a searchset
of Patients. `Group/{id}/$export` of a definition exports its latest evaluation's members.

Who may: a token that can read the Group and search Patient and every type the definition
searches, not limited to one patient's compartment (a cohort is about many patients).
Members are read back through a Patient search with the reader's own visibility.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from fhir_server.analytics.cohort_store import Evaluation
from fhir_server.analytics.cohorts import ID_BATCH, Cohorts, definition_of
from fhir_server.api.http import base_url, check_accept, fhir_response
from fhir_server.auth.access import Access, forbidden
from fhir_server.model import jsonio
from fhir_server.model.outcome import error
from fhir_server.model.resource_types import is_valid_id
from fhir_server.search.query import parse_search
from fhir_server.storage.base import instant

EVALUATE = ("evaluate", "https://diatabase.org/fhir/OperationDefinition/Group-evaluate")
MEMBERS = ("members", "https://diatabase.org/fhir/OperationDefinition/Group-members")


def register_cohort_operations(operations: dict[str, list[tuple[str, str]]]) -> None:
    listed = operations.setdefault("Group", [])
    for operation in (EVALUATE, MEMBERS):
        if operation not in listed:
            listed.append(operation)


def _cohorts(request: Request) -> Cohorts:
    return request.app.state.cohorts


def _not_one_patient(access: Access) -> None:
    if access.patient_compartment is not None:
        raise forbidden("Cohorts are about many patients: a patient-context token cannot "
                        "evaluate or read them")


def _check_access(access: Access, rtypes: list[str]) -> None:
    for rtype in ("Patient", *rtypes):
        access.require(rtype, "search")


def _group(request: Request, group_id: str) -> dict[str, Any]:
    stored = request.app.state.fhir.resources.read("Group", group_id)
    return jsonio.loads(stored.json)


def _evaluation_parameters(group_id: str, evaluation: Evaluation,
                           previous: Evaluation | None, change: tuple[int, int] | None
                           ) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": "group", "valueReference": {"reference": f"Group/{group_id}"}},
        {"name": "evaluation", "valueString": str(evaluation.id)},
        {"name": "date", "valueDateTime": instant(evaluation.evaluated_at)},
        {"name": "count", "valueInteger": evaluation.count},
    ]
    if previous is not None and change is not None:
        parameters += [
            {"name": "previous", "valueString": str(previous.id)},
            {"name": "added", "valueInteger": change[0]},
            {"name": "removed", "valueInteger": change[1]},
        ]
    return {"resourceType": "Parameters", "parameter": parameters}


def build_cohort_router() -> APIRouter:
    router = APIRouter()

    @router.post("/Group/{group_id}/$evaluate")
    async def evaluate(request: Request, group_id: str) -> Response:
        check_accept(request)
        cohorts = _cohorts(request)

        def work() -> dict[str, Any]:
            _not_one_patient(request.state.access)
            group = _group(request, group_id)
            criteria = definition_of(group, datetime.now(UTC).date())
            _check_access(request.state.access, [c.resource_type for c in criteria])
            evaluation = cohorts.evaluate(group_id, group)
            previous = cohorts.store.previous(evaluation)
            change = cohorts.store.difference(evaluation, previous) if previous else None
            return _evaluation_parameters(group_id, evaluation, previous, change)

        return fhir_response(await run_in_threadpool(work), 200)

    @router.get("/Group/{group_id}/$members")
    async def members(request: Request, group_id: str) -> Response:
        check_accept(request)
        cohorts = _cohorts(request)
        params = request.query_params
        count = params.get("_count", "50")
        if not count.isdigit() or not 1 <= int(count) <= ID_BATCH:
            raise error(400, "invalid", f"_count must be 1 to {ID_BATCH}", "_count")
        wanted = params.get("evaluation")
        if wanted is not None and not wanted.isdigit():
            raise error(400, "invalid", "evaluation must be an evaluation number", "evaluation")
        after = params.get("_cursor", "")
        if after and not is_valid_id(after):
            raise error(400, "invalid", "The paging cursor is invalid", "_cursor")
        base = base_url(request, request.app.state.settings.base_url)

        def work() -> dict[str, Any]:
            _not_one_patient(request.state.access)
            group = _group(request, group_id)
            if group.get("actual") is not False:
                raise error(400, "invalid", f"Group/{group_id} lists its members itself")
            criteria = definition_of(group, datetime.now(UTC).date())
            _check_access(request.state.access, [c.resource_type for c in criteria])
            evaluation = cohorts.store.evaluation(group_id, int(wanted) if wanted else None)
            if evaluation is None:
                raise error(404, "not-found", f"Group/{group_id} has no such evaluation: "
                            "POST $evaluate first")
            ids = next(cohorts.store.member_batches(evaluation, after, int(count)), [])
            return _members_bundle(request, base, group_id, evaluation, ids, int(count))

        return fhir_response(await run_in_threadpool(work), 200)

    return router


def _members_bundle(request: Request, base: str, group_id: str, evaluation: Evaluation,
                    ids: list[str], count: int) -> dict[str, Any]:
    """A searchset of the page's Patients, read with the caller's visibility."""
    service = request.app.state.fhir
    entries = []
    if ids:
        query = parse_search("Patient", [("_id", ",".join(ids))], service.registry, True)
        page = service.storage.search(query, len(ids), None)
        for stored in sorted(page.matches, key=lambda s: s.id):
            entries.append({"fullUrl": f"{base}/Patient/{stored.id}",
                            "resource": jsonio.fragment(stored.json),
                            "search": {"mode": "match"}})
    path = f"{base}/Group/{group_id}/$members"
    items = [("evaluation", str(evaluation.id)), ("_count", str(count))]
    links = [{"relation": "self", "url": f"{path}?{urlencode(items)}"}]
    if len(ids) == count:
        links.append({"relation": "next",
                      "url": f"{path}?{urlencode([*items, ('_cursor', ids[-1])])}"})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": evaluation.count,
        "meta": {"lastUpdated": instant(evaluation.evaluated_at)},
        "link": links,
        "entry": entries,
    }
