"""The short way to the endpoints that take only the request and their path: reads,
searches, creates, updates and deletes (`/{type}`, `/{type}/{id}`) and the operations at a
fixed path (`/CodeSystem/$validate-code`, `/metadata`, ...).

Measured on a read with a token (py-spy, GIL samples): FastAPI's routing walked every
included router's routes in turn (~15 % of the server's CPU, the REST router coming last,
after the terminology, clinical, bulk, ... routes that must come before it), then solved
dependencies the endpoint does not have (~8 %). `FastLane` chooses the route once per
shape instead, and calls the endpoint with the request and its path parameters.

The route chosen is always the one FastAPI would choose: for a shape (method, first
segment, one or two segments, the second an id) it is found by asking the application's
own routes in their order which one matches a probe path of that shape, the first time
the shape is seen; exact paths are looked up among the routes' literal paths the same way.
Whatever does not fit (a third segment, a segment that is not an id or that some route
names literally, a route with query, header, body or dependency parameters, an included
router with a prefix or dependencies, websockets) goes through FastAPI's routing as before.

It sits inside FastAPI's exception handling (as the router's middleware), so an error is
answered by the application's handlers (an OperationOutcome) exactly as before; every
middleware outside (audit, authorization, budgets, gzip, HEAD) sees the request as before.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from fhir_server.model.resource_types import ID_PATTERN, is_resource_type

PROBE_ID = "fast-lane-probe"
Shape = tuple[str, str, int]  # (method, first segment, number of segments)


def install_fast_lane(app: Any) -> None:
    """Put the lane in front of `app`'s router, inside its exception handling (Starlette's
    Router calls `middleware_stack`, which it builds from its own middleware list)."""
    router = app.router
    router.middleware_stack = FastLane(router.middleware_stack, lambda: router.routes)


class FastLane:
    def __init__(self, app: ASGIApp, routes: Callable[[], list[BaseRoute]]) -> None:
        self.app = app
        self._routes = routes
        self._seen_routes: int | None = None
        self._flat: list[BaseRoute] = []
        self._literal_paths: frozenset[str] = frozenset()
        self._literal_segments: frozenset[str] = frozenset()
        self._by_shape: dict[Shape, Route | None] = {}
        self._by_path: dict[tuple[str, str], Route | None] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._route(scope) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        match, child = route.matches(scope)
        if match != Match.FULL:  # the probe's route does not take this path after all
            await self.app(scope, receive, send)
            return
        scope.update(child)
        scope["route"] = route
        request = Request(scope, receive, send)
        try:
            if isinstance(route, APIRoute):
                arguments = dict(scope["path_params"])
                if route.dependant.request_param_name:  # some endpoints take no request
                    arguments[route.dependant.request_param_name] = request
                response: Response = await route.endpoint(**arguments)
            else:  # a Starlette route: the endpoint reads request.path_params itself
                response = await route.endpoint(request)
            await response(scope, receive, send)
        finally:
            await request.close()  # a form read by the endpoint (as FastAPI's handler does)

    # -- choosing ----------------------------------------------------------------------------

    def _route(self, scope: Scope) -> Route | None:
        routes = self._routes()
        if len(routes) != self._seen_routes:  # routes added since: choose afresh
            self._learn(routes)
        method, path = scope["method"], scope["path"]
        if path in self._literal_paths:
            key = (method, path)
            if key not in self._by_path:
                self._by_path[key] = self._probe(method, path)
            return self._by_path[key]
        parts = path.split("/")
        # "/Observation" -> ["", "Observation"]; "/Observation/1" -> ["", "Observation", "1"]
        by_id = len(parts) == 3 and parts[2] not in self._literal_segments \
            and ID_PATTERN.match(parts[2]) is not None
        if not (len(parts) == 2 or by_id):
            return None
        first = parts[1]
        if not is_resource_type(first):
            return None
        shape = (method, first, len(parts) - 1)
        if shape not in self._by_shape:
            probe = f"/{first}" if shape[2] == 1 else f"/{first}/{PROBE_ID}"
            self._by_shape[shape] = self._probe(method, probe)
        return self._by_shape[shape]

    def _learn(self, routes: list[BaseRoute]) -> None:
        self._seen_routes = len(routes)
        self._flat = list(_flatten(routes))
        paths = [getattr(r, "path", "") for r in self._flat]
        self._literal_paths = frozenset(p for p in paths if p and "{" not in p)
        self._literal_segments = frozenset(
            segment for p in paths for segment in p.split("/")[2:] if "{" not in segment
        )
        self._by_shape.clear()
        self._by_path.clear()

    def _probe(self, method: str, path: str) -> Route | None:
        """The route FastAPI would run for `method path`, if the lane can call it."""
        probe = {"type": "http", "method": method, "path": path, "root_path": "",
                 "headers": [], "query_string": b""}
        for route in self._flat:
            match, _ = route.matches(probe)
            if match == Match.FULL:
                return route if _plain(route) else None
        return None


def _flatten(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
    """The application's routes in the order FastAPI tries them. Recent FastAPI keeps an
    included router whole (`original_router`); one without a prefix or dependencies of its
    own is walked into, any other stays a single opaque route (it then takes the probe, and
    the lane leaves its paths to FastAPI)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        context = getattr(route, "include_context", None)
        if inner is not None and context is not None and not context.prefix \
                and not context.dependencies:
            yield from _flatten(inner.routes)
        else:
            yield route


def _plain(route: BaseRoute) -> bool:
    """An APIRoute whose endpoint takes only the request and string path parameters and
    returns a Response: nothing for FastAPI to parse, validate or serialise; or a
    Starlette Route whose endpoint is a coroutine function of the request."""
    if type(route) is Route:
        endpoint = route.endpoint
        return inspect.iscoroutinefunction(endpoint) and list(
            inspect.signature(endpoint).parameters) == ["request"]
    if not isinstance(route, APIRoute) or route.dependencies:
        return False
    dependant = route.dependant
    if (dependant.query_params or dependant.header_params or dependant.cookie_params
            or dependant.body_params or dependant.dependencies
            or dependant.background_tasks_param_name or dependant.response_param_name
            or not inspect.iscoroutinefunction(route.endpoint)):
        return False
    signature = inspect.signature(route.endpoint)
    for name, parameter in signature.parameters.items():
        if name == dependant.request_param_name:
            continue
        if name not in route.param_convertors or parameter.annotation not in (str, "str"):
            return False
    return signature.return_annotation in (Response, "Response")
