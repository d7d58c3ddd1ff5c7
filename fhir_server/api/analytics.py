"""SQL on FHIR over HTTP: `ViewDefinition/$run` on the clinical API and on the
de-identified facade (`/deid/ViewDefinition/$run`).

- `GET|POST /ViewDefinition/$run`: the view inline (`viewResource`, POST) or by
  `viewReference`; the data inline (`resource` parameters) or from the store.
- `GET|POST /ViewDefinition/{id}/$run`: a stored view.
- `$viewdefinition-run`, the later editions' name, is the same operation.
- Parameters: `_format` (csv, ndjson, json, parquet; or the Accept header), `header`
  (CSV), `patient`, `_limit`, `_since`.

Authorization: the route needs some search scope (auth/routes.py); the handler then
requires search on the type the view reads (nothing when the data is inline), and the
rows come from storage under the request's visibility, so a patient-context token gets
its patient's rows only. Rows are produced in a thread of their own that carries the
request's visibility and audit activity (not the request's time budget: a run is long by
nature), and streamed as they come; an error before the first rows is an
OperationOutcome, one after them ends the stream early (and is logged). Each run is one
audit event (the facade's: with the recipient) counting the rows released.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from fhir_server.analytics.runner import ViewRunError
from fhir_server.analytics.service import (
    RunRequest,
    clinical_resources,
    compile_or_400,
    output,
    run_request,
)
from fhir_server.analytics.stored import VIEW_TYPE
from fhir_server.api.http import JSON_TYPES, fhir_response, query_items, read_body
from fhir_server.audit.activity import Activity, current, opened
from fhir_server.model.outcome import FhirError, error
from fhir_server.search.visibility import current_visibility, visible_as

log = logging.getLogger("diatabase.analytics")

RUN_OPERATION = ("run", "https://sql-on-fhir.org/ig/OperationDefinition/ViewDefinition-run")
# The name the later editions of the guide give $run: the same operation.
RUN_ALIAS = ("viewdefinition-run", "http://sql-on-fhir.org/OperationDefinition/$viewdefinition-run")
RUN_NAMES = ("$run", "$viewdefinition-run")
_END = object()


def register_analytics_operations(app: FastAPI) -> None:
    entries = app.state.operations.setdefault(VIEW_TYPE, [])
    for operation in (RUN_OPERATION, RUN_ALIAS):
        if operation not in entries:
            entries.append(operation)


async def _parameters(request: Request) -> Any:
    if request.method != "POST":
        return None
    return await read_body(request, request.app.state.settings.max_body_bytes, JSON_TYPES)


def _stored_view(fhir: Any, view_id: str) -> dict:
    return orjson.loads(fhir.resources.read(VIEW_TYPE, view_id).json)


def _view_of(fhir: Any, run: RunRequest, view_id: str | None) -> dict:
    if view_id is not None:
        if run.view is not None or run.view_reference is not None:
            raise error(400, "invalid", "$run on a stored view takes no viewResource")
        return _stored_view(fhir, view_id)
    if run.view is not None and run.view_reference is not None:
        raise error(400, "invalid", "$run takes viewResource or viewReference, not both")
    if run.view is not None:
        return run.view
    if run.view_reference is not None:
        reference = run.view_reference.split("/_history/")[0]
        return _stored_view(fhir, reference.removeprefix(f"{VIEW_TYPE}/"))
    raise error(400, "required", "$run needs a view: viewResource or viewReference")


async def stream_from_thread(
    produce: Callable[[], Iterator[bytes]], setup: Callable[[], Any]
) -> tuple[bytes | None, AsyncIterator[bytes]]:
    """Run `produce` in a thread of its own (inside `setup()`'s context manager, in a
    fresh context) and hand its chunks over through a small queue. Returns the first chunk
    (raising what the producer raised before it) and an iterator of the rest."""
    chunks: queue.Queue[Any] = queue.Queue(maxsize=4)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            with setup():
                for chunk in produce():
                    if chunk and not put(chunk):
                        return
        except BaseException as exc:  # handed to the response side
            put(exc)
            return
        put(_END)

    thread = threading.Thread(
        target=contextvars.Context().run, args=(work,), name="view-run", daemon=True
    )
    thread.start()
    first = await run_in_threadpool(chunks.get)
    if isinstance(first, BaseException):
        raise first

    async def rest() -> AsyncIterator[bytes]:
        try:
            item = first
            while item is not _END:
                yield item
                item = await run_in_threadpool(chunks.get)
                if isinstance(item, BaseException):
                    log.warning("a view run stopped after streaming began: %s", item)
                    return
        finally:
            stop.set()

    return (None if first is _END else first), rest()


async def respond(
    request: Request,
    media_type: str,
    chunks: Iterator[bytes],
    activity: Activity | None,
    on_done: Callable[[], None] | None = None,
    facade: bool = False,
) -> Response:
    # the facade's own reads are not limited by a SMART token (it authenticated the
    # recipient, and releases only what its rules allow)
    visibility = None if facade else current_visibility.get()

    class Scope:
        def __enter__(self) -> None:
            self.stack = (
                [visible_as(visibility), opened(activity)] if activity else [visible_as(visibility)]
            )
            for manager in self.stack:
                manager.__enter__()

        def __exit__(self, *exc: Any) -> None:
            for manager in reversed(self.stack):
                manager.__exit__(None, None, None)
            if on_done is not None:
                on_done()

    try:
        _, body = await stream_from_thread(lambda: chunks, Scope)
    except ViewRunError as exc:
        raise error(400, "invalid", f"The view cannot run on this data: {exc}") from None
    headers = {"Cache-Control": "no-store"}
    if "parquet" in media_type:
        headers["Content-Disposition"] = 'attachment; filename="view.parquet"'
    return StreamingResponse(body, media_type=media_type, headers=headers)


def build_analytics_router() -> APIRouter:
    """Routes to include before the generic /{type}/{id} ones."""
    router = APIRouter()

    async def run(request: Request, view_id: str | None) -> Response:
        fhir = request.app.state.fhir
        parameters = await _parameters(request)
        run = run_request(parameters, query_items(request), request.headers.get("accept"))
        view = compile_or_400(await run_in_threadpool(_view_of, fhir, run, view_id))
        activity = current()
        if activity is not None:
            activity.collect_reads = False  # a table of a million rows: counted, not listed
        if run.resources is not None:
            resources: Any = iter(run.resources)
        else:
            access = getattr(request.state, "access", None)
            if access is not None:
                access.require(view.resource, "search-type")
            fhir.resources.check_type(view.resource)
            resources = clinical_resources(fhir, view.resource, run.patient, run.since)
        media_type, chunks, rows = output(view, resources, run)

        def done() -> None:
            if activity is not None:
                activity.read_count = rows.count

        return await respond(request, media_type, chunks, activity, done)

    async def endpoint(request: Request, view_id: str | None = None) -> Response:
        return await run(request, view_id)

    for name in RUN_NAMES:
        for path in (f"/ViewDefinition/{name}", f"/ViewDefinition/{{view_id}}/{name}"):
            router.add_api_route(path, endpoint, methods=["GET", "POST"])
    return router


def _as_facade(call: Callable[..., Any], *args: Any) -> Any:
    """The facade's work, which no SMART token limits (the recipient is authenticated by
    its key; what it may see is the facade's decision)."""
    with visible_as(None):
        return call(*args)


def build_deid_analytics_router() -> APIRouter:
    """`/deid/ViewDefinition/$run`: a recipient's views over what the facade gives it."""
    from fhir_server.api.deid import PREFIX, _audit, _recipient
    from fhir_server.audit.events import REFUSED

    router = APIRouter()

    async def run(request: Request, view_id: str | None) -> Response:
        recipient = _recipient(request)
        deid = request.app.state.deid
        fhir = request.app.state.fhir
        try:
            parameters = await _parameters(request)
            run = run_request(parameters, query_items(request), request.headers.get("accept"))
            view = compile_or_400(await run_in_threadpool(_as_facade, _view_of, fhir, run, view_id))
            if run.patient is not None or run.since is not None:
                raise error(400, "not-supported", "patient and _since are not offered here")
            engine = deid.recipients.engine(recipient.id)
            resources = (
                iter(run.resources)
                if run.resources is not None
                else deid.facade.released(engine, view.resource)
            )
            media_type, chunks, rows = output(view, resources, run)
            return await respond(
                request,
                media_type,
                chunks,
                None,
                lambda: _audit(request, recipient.id, "operation", rows.count),
                facade=True,
            )
        except FhirError:
            _audit(request, recipient.id, "operation", 0, REFUSED)
            raise

    async def endpoint(request: Request, view_id: str | None = None) -> Response:
        return await run(request, view_id)

    for name in RUN_NAMES:
        for path in (f"{PREFIX}/ViewDefinition/{name}",
                     f"{PREFIX}/ViewDefinition/{{view_id}}/{name}"):  # fmt: skip
            router.add_api_route(path, endpoint, methods=["GET", "POST"])
    return router


# -- Measure/$evaluate-measure ----------------------------------------------------------------

EVALUATE_MEASURE = ("evaluate-measure",
                    "http://hl7.org/fhir/OperationDefinition/Measure-evaluate-measure")  # fmt: skip
REPORT_TYPES = frozenset({"summary", "subject-list"})


def _measure(fhir: Any, measure_id: str | None, reference: str | None) -> dict:
    if measure_id is not None:
        return orjson.loads(fhir.resources.read("Measure", measure_id).json)
    if not reference:
        raise error(400, "required", "$evaluate-measure needs a measure (its id or url)")
    if reference.startswith(("http://", "https://")):
        from fhir_server.search.query import parse_search

        query = parse_search("Measure", [("url", reference)], fhir.registry)
        page = fhir.storage.search(query, 2, None)
        if len(page.matches) != 1 or page.matches[0].json is None:
            raise error(404, "not-found", f"no single Measure with url {reference}")
        return orjson.loads(page.matches[0].json)
    return orjson.loads(fhir.resources.read("Measure", reference.removeprefix("Measure/")).json)


def _check_criteria_access(access: Any, measure: dict) -> None:
    """Each search population needs search on its type; SQL over the materialised views
    (computed from every patient's data) needs a search scope not limited to a patient."""
    from fhir_server.analytics.measures import FHIR_QUERY, _extended_language
    from fhir_server.auth.access import forbidden

    for group in measure.get("group", []) or []:
        for population in group.get("population", []) or []:
            criteria = population.get("criteria") or {}
            language = criteria.get("language") or _extended_language(criteria)
            if language == FHIR_QUERY:
                rtype = str(criteria.get("expression", "")).lstrip("/").split("?")[0]
                access.require(rtype, "search-type")
            elif not access.allows_everything("s"):
                raise forbidden(
                    "SQL criteria read the materialised views of every patient: "
                    "they need a search scope on every type, not limited to a "
                    "patient"
                )


def register_measure_operations(app: FastAPI) -> None:
    entries = app.state.operations.setdefault("Measure", [])
    if EVALUATE_MEASURE not in entries:
        entries.append(EVALUATE_MEASURE)


def _evaluate(fhir: Any, views_dir: str, measure: dict, period: Any, report_type: str,
              suppress: bool, deid: Any = None, recipient: str | None = None) -> dict:  # fmt: skip
    from fhir_server.analytics.measure_report import measure_report
    from fhir_server.analytics.measures import MeasureEvaluator

    evaluator = MeasureEvaluator(fhir, views_dir or None)
    results = evaluator.evaluate(measure, period)
    if deid is not None and recipient is not None:
        from fhir_server.analytics.research import released_populations

        results = released_populations(results, deid, recipient)
    return measure_report(measure, period, results, report_type, suppress)


def build_measure_router() -> APIRouter:
    router = APIRouter()

    async def evaluate(request: Request, measure_id: str | None) -> Response:
        from fhir_server.analytics.measures import parse_period

        fhir = request.app.state.fhir
        params = request.query_params
        report_type = params.get("reportType", "summary")
        if report_type not in REPORT_TYPES:
            raise error(400, "not-supported", "reportType: summary or subject-list")
        period = parse_period(params.get("periodStart"), params.get("periodEnd"))
        measure = await run_in_threadpool(_measure, fhir, measure_id, params.get("measure"))
        access = getattr(request.state, "access", None)
        if access is not None:
            _check_criteria_access(access, measure)
            if report_type == "subject-list":
                access.require("Patient", "search-type")
        report = await run_in_threadpool(_evaluate, fhir, request.app.state.settings.views_dir,
                                         measure, period, report_type, False)  # fmt: skip
        return fhir_response(report)

    async def endpoint(request: Request, measure_id: str | None = None) -> Response:
        return await evaluate(request, measure_id)

    for path in ("/Measure/$evaluate-measure", "/Measure/{measure_id}/$evaluate-measure"):
        router.add_api_route(path, endpoint, methods=["GET"])
    return router


def build_deid_measure_router() -> APIRouter:
    """`/deid/Measure/{id}/$evaluate-measure`: summary reports only, over the patients the
    facade releases to the recipient, every small cell suppressed."""
    from fhir_server.api.deid import PREFIX, _audit, _recipient
    from fhir_server.audit.events import REFUSED

    router = APIRouter()

    async def evaluate(request: Request, measure_id: str | None) -> Response:
        from fhir_server.analytics.measures import parse_period

        recipient = _recipient(request)
        fhir = request.app.state.fhir
        params = request.query_params
        try:
            if params.get("reportType", "summary") != "summary":
                raise error(403, "forbidden", "research recipients get summary reports only")
            period = parse_period(params.get("periodStart"), params.get("periodEnd"))
            measure = await run_in_threadpool(
                _as_facade, _measure, fhir, measure_id, params.get("measure")
            )
            report = await run_in_threadpool(
                _as_facade,
                _evaluate, fhir, request.app.state.settings.views_dir, measure, period,
                "summary", True, request.app.state.deid, recipient.id,
            )  # fmt: skip
        except FhirError:
            _audit(request, recipient.id, "operation", 0, REFUSED)
            raise
        _audit(request, recipient.id, "operation", 1)
        return fhir_response(report)

    async def endpoint(request: Request, measure_id: str | None = None) -> Response:
        return await evaluate(request, measure_id)

    for path in (f"{PREFIX}/Measure/$evaluate-measure",
                 f"{PREFIX}/Measure/{{measure_id}}/$evaluate-measure"):  # fmt: skip
        router.add_api_route(path, endpoint, methods=["GET"])
    return router
