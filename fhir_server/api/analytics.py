"""SQL on FHIR over HTTP: `ViewDefinition/$run` on the clinical API and on the
de-identified facade (`/deid/ViewDefinition/$run`).

- `GET|POST /ViewDefinition/$run`: the view inline (`viewResource`, POST) or by
  `viewReference`; the data inline (`resource` parameters) or from the store.
- `GET|POST /ViewDefinition/{id}/$run`: a stored view.
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
from fhir_server.api.http import JSON_TYPES, query_items, read_body
from fhir_server.audit.activity import Activity, current, opened
from fhir_server.model.outcome import FhirError, error
from fhir_server.search.visibility import current_visibility, visible_as

log = logging.getLogger("diatabase.analytics")

RUN_OPERATION = ("run", "https://sql-on-fhir.org/ig/OperationDefinition/ViewDefinition-run")
_END = object()


def register_analytics_operations(app: FastAPI) -> None:
    entries = app.state.operations.setdefault(VIEW_TYPE, [])
    if RUN_OPERATION not in entries:
        entries.append(RUN_OPERATION)


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
) -> Response:
    visibility = current_visibility.get()

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

    for path in ("/ViewDefinition/$run", "/ViewDefinition/{view_id}/$run"):
        router.add_api_route(path, endpoint, methods=["GET", "POST"])
    return router


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
            view = compile_or_400(await run_in_threadpool(_view_of, fhir, run, view_id))
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
            )
        except FhirError:
            _audit(request, recipient.id, "operation", 0, REFUSED)
            raise

    async def endpoint(request: Request, view_id: str | None = None) -> Response:
        return await run(request, view_id)

    for path in (f"{PREFIX}/ViewDefinition/$run", f"{PREFIX}/ViewDefinition/{{view_id}}/$run"):
        router.add_api_route(path, endpoint, methods=["GET", "POST"])
    return router
