"""Subscriptions over HTTP (fhir_server/subscriptions/): the delivery worker's life with the
app's, and the backport IG's operations on a Subscription:

- `GET /Subscription/{id}/$status`: a Bundle (searchset) holding its SubscriptionStatus
  (`query-status`: status, events since it started, the last error);
- `GET /Subscription/{id}/$events?eventsSinceNumber=&eventsUntilNumber=&content=`: the
  stored events in that range as a notification Bundle (`query-event`), for a client that
  missed some;
- `GET /Subscription/{id}/$get-ws-binding-token` and the websocket `/subscriptions/websocket`
  of the websocket channel (subscriptions/websocket.py).

Both read the Subscription through the caller's access (one it may not see is a 404) and
are audited as reads of it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from fastapi import APIRouter, FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from fhir_server.api.http import base_url, check_accept, fhir_response, pretty, query_items
from fhir_server.model import jsonio
from fhir_server.model.outcome import error
from fhir_server.service.fhir import FhirService
from fhir_server.storage.base import instant
from fhir_server.subscriptions.delivery import DeliveryWorker, build_worker
from fhir_server.subscriptions.notify import StoredEvent, notification_bundle, status_parameters
from fhir_server.subscriptions.spec import SubscriptionError, read_spec
from fhir_server.subscriptions.websocket import Hub, binding_token, bound_subscription

STATUS = ("status", "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/"
          "backport-subscription-status")
EVENTS = ("events", "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/"
          "backport-subscription-events")
WS_TOKEN = ("get-ws-binding-token", "http://hl7.org/fhir/uv/subscriptions-backport/"
            "OperationDefinition/backport-subscription-get-ws-binding-token")
WEBSOCKET_PATH = "/subscriptions/websocket"
MAX_EVENTS = 1000


def register_subscription_operations(operations: dict[str, list[tuple[str, str]]]) -> None:
    entries = operations.setdefault("Subscription", [])
    for operation in (STATUS, EVENTS, WS_TOKEN):
        if operation not in entries:
            entries.append(operation)


class BaseUrl:
    """The public base for notifications: the configured one, else the base of the last
    request that wrote or asked about a Subscription."""

    def __init__(self, configured: str) -> None:
        self.configured = configured.rstrip("/")
        self.seen = "http://localhost"

    def __call__(self) -> str:
        return self.configured or self.seen


def start_worker(app: FastAPI) -> DeliveryWorker | None:
    """The delivery worker in this process (None when the operator runs it apart, with
    `diatabase subscriptions deliver`), sending to the websockets bound here too."""
    settings = app.state.settings
    if not settings.subscription_delivery:
        return None
    worker = build_worker(app.state.fhir, settings, app.state.subscription_base)
    hub: Hub = app.state.subscription_websockets
    worker.websockets = hub
    hub.on_bind = worker.wake
    worker.start()
    return worker


def build_subscription_router() -> APIRouter:
    router = APIRouter()

    def spec_of(request: Request, rid: str) -> tuple[Any, Any]:
        svc: FhirService = request.app.state.fhir
        stored = svc.resources.read("Subscription", rid)  # the caller's access applies
        try:
            spec = read_spec(jsonio.loads(stored.json), svc.registry, True, stored.version)
        except SubscriptionError as exc:
            raise error(400, "invalid", f"Subscription/{rid} cannot be served: {exc}") from None
        stream = svc.subscriptions.store.stream(rid)
        return spec, stream

    @router.get("/Subscription/{rid}/$status")
    async def status(request: Request, rid: str) -> Response:
        check_accept(request)
        base = base_url(request, request.app.state.settings.base_url)
        request.app.state.subscription_base.seen = base
        spec, stream = await run_in_threadpool(spec_of, request, rid)
        total = stream[1] if stream else 0
        last_error = stream[6] if stream else None
        parameters = status_parameters(spec, base, "query-status", total, [], None, last_error)
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": 1,
            "entry": [{"fullUrl": f"urn:uuid:{parameters['id']}", "resource": parameters,
                       "search": {"mode": "match"}}],
        }
        return fhir_response(bundle, 200, None, pretty(request))

    @router.get("/Subscription/{rid}/$events")
    async def events(request: Request, rid: str) -> Response:
        check_accept(request)
        base = base_url(request, request.app.state.settings.base_url)
        items = dict(query_items(request))
        spec, stream = await run_in_threadpool(spec_of, request, rid)
        total = stream[1] if stream else 0
        try:
            first = int(items.get("eventsSinceNumber", "1"))
            last = int(items.get("eventsUntilNumber", str(total)))
        except ValueError:
            raise error(
                400, "invalid", "eventsSinceNumber and eventsUntilNumber are integers"
            ) from None
        content = items.get("content", spec.content)
        if content not in ("empty", "id-only", "full-resource"):
            raise error(400, "invalid", "content is empty, id-only or full-resource")
        last = min(last, total, first + MAX_EVENTS - 1)
        svc: FhirService = request.app.state.fhir
        rows = await run_in_threadpool(svc.subscriptions.store.events, rid, first, last)
        stored_events = [StoredEvent(*row) for row in rows]
        shown = dataclasses.replace(spec, content=content)

        def focus(event: StoredEvent) -> Any:
            if event.focus_version is None:
                return svc.storage.read(event.focus_type, event.focus_id)
            return svc.storage.vread(event.focus_type, event.focus_id, event.focus_version)

        bundle = await run_in_threadpool(
            notification_bundle, shown, base, "query-event", total, stored_events, focus
        )
        return fhir_response(bundle, 200, None, pretty(request))

    @router.get("/Subscription/{rid}/$get-ws-binding-token")
    async def ws_token(request: Request, rid: str) -> Response:
        check_accept(request)
        spec, _ = await run_in_threadpool(spec_of, request, rid)
        if spec.channel != "websocket":
            raise error(400, "invalid", f"Subscription/{rid} does not use a websocket channel")
        svc: FhirService = request.app.state.fhir
        token, expires = binding_token(svc.subscriptions.backend.cursors, rid)
        ws_base = base_url(request, request.app.state.settings.base_url).replace("http", "ws", 1)
        body = {"resourceType": "Parameters", "parameter": [
            {"name": "token", "valueString": token},
            {"name": "expiration", "valueDateTime": instant(expires)},
            {"name": "subscription", "valueString": f"Subscription/{rid}"},
            {"name": "websocket-url", "valueUrl": f"{ws_base}{WEBSOCKET_PATH}"},
        ]}
        return fhir_response(body, 200, None, pretty(request))

    @router.websocket(WEBSOCKET_PATH)
    async def websocket(socket: WebSocket) -> None:
        await socket.accept()
        app = socket.app
        hub: Hub = app.state.subscription_websockets
        codec = app.state.fhir.subscriptions.backend.cursors
        loop = asyncio.get_running_loop()
        try:
            while True:
                message = (await socket.receive_text()).strip()
                verb, _, argument = message.partition(" ")
                sub_id = None
                if verb == "bind-with-token":
                    sub_id = bound_subscription(codec, argument.strip())
                elif verb == "bind" and app.state.settings.insecure_dev:
                    sub_id = argument.strip() or None
                if sub_id is None:
                    await socket.send_text("error the binding token is invalid or expired")
                    continue
                hub.bind(sub_id, socket, loop)
                await socket.send_text(f"bound {sub_id}")
        except WebSocketDisconnect:
            pass
        finally:
            hub.unbind(socket)

    return router
