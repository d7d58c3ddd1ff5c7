"""The fast lane (fhir_server/api/fast_lane.py) runs the route FastAPI's own routing would
run, for every shape it takes, and leaves everything else to FastAPI.

FastAPI's choice is observed by sending the request through the router without the lane:
its routing records the endpoint it selected in the scope (`scope["endpoint"]`) before
running it. The application is the real one, on a real SQLite database."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_server.api.fast_lane import FastLane
from fhir_server.app import create_app
from fhir_server.model.resource_types import resource_types
from fhir_server.settings import Settings
from tests.conftest import RunningServer

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")
PATHS = (
    "/", "/metadata", "/_history", "/Patient", "/Patient/p1", "/Patient/_history",
    "/Patient/_search", "/Patient/$everything", "/Patient/p1/$everything",
    "/Patient/p1/Observation", "/Patient/p1/_history", "/Observation/$lastn",
    "/CodeSystem/$validate-code", "/CodeSystem/$lookup", "/ValueSet/$expand",
    "/ValueSet/$validate-code", "/ConceptMap/$translate", "/CodeSystem/icd10",
    "/CodeSystem/icd10/$validate-code", "/Group/g1", "/Group/$export", "/Subscription/s1",
    "/AuditEvent/a1", "/Binary/b1", "/Observation/", "/NotAType/x", "/Observation/bad_id",
    "/Observation/a.b-c", "/auth/token", "/.well-known/smart-configuration",
    "/$export", "/$convert", "/Observation/$validate", "/ui", "/docs",
)


def fastapi_endpoint(app: Any, method: str, path: str) -> Any:
    """The endpoint FastAPI's routing selects for `method path` (None: none, a 404/405)."""
    lane: FastLane = app.router.middleware_stack
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
             "root_path": "", "query_string": b"", "headers": [(b"host", b"testserver")],
             "scheme": "http", "server": ("testserver", 80), "client": ("127.0.0.1", 1),
             "http_version": "1.1", "app": app, "state": {}}

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        return None

    async def through_fastapi() -> None:
        # the endpoint may fail without authorization or body: what was chosen is known
        with contextlib.suppress(Exception):
            await lane.app(scope, receive, send)

    asyncio.run(through_fastapi())
    return scope.get("endpoint")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder: Path = tmp_path_factory.mktemp("lane")
    return create_app(Settings(db_url=f"sqlite:///{folder / 'lane.db'}", insecure_dev=True))


def test_the_lane_sits_in_front_of_the_router(app: Any) -> None:
    assert isinstance(app.router.middleware_stack, FastLane)


@pytest.mark.parametrize("method", METHODS)
def test_the_lane_chooses_the_route_fastapi_chooses(app: Any, method: str) -> None:
    lane: FastLane = app.router.middleware_stack
    types = sorted(resource_types())
    paths = [*PATHS, *(f"/{t}" for t in types), *(f"/{t}/x1" for t in types)]
    taken = 0
    for path in paths:
        chosen = lane._route({"type": "http", "method": method, "path": path})
        if chosen is None:
            continue  # FastAPI routes it, as before
        taken += 1
        assert chosen.endpoint is fastapi_endpoint(app, method, path), f"{method} {path}"
    assert taken > len(types)  # reads, searches, creates, updates, deletes do take it


def test_the_hot_interactions_take_the_lane(app: Any) -> None:
    lane: FastLane = app.router.middleware_stack
    for method, path, endpoint in (
        ("GET", "/Patient/p1", "read"), ("GET", "/Observation", "search"),
        ("POST", "/Observation", "create"),
        ("GET", "/CodeSystem/$validate-code", "CodeSystem_validate-code_type"),
        ("POST", "/ValueSet/$validate-code", "ValueSet_validate-code_type"),
    ):
        chosen = lane._route({"type": "http", "method": method, "path": path})
        assert chosen is not None and chosen.endpoint.__name__ == endpoint, (method, path)
    for method, path in (("GET", "/Patient/_history"), ("GET", "/Observation/bad_id"),
                         ("GET", "/Patient/p1/Observation"), ("GET", "/NotAType/x1")):
        assert lane._route({"type": "http", "method": method, "path": path}) is None


def test_answers_through_the_lane_are_the_same_fhir_answers(tmp_path: Path) -> None:
    """Over HTTP: a create, a read, a search and $validate-code through the lane; a read of
    a missing resource and an unknown type still answer an OperationOutcome."""
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'answers.db'}", insecure_dev=True)
    with RunningServer(settings) as server, httpx.Client(base_url=server.url) as http:
        made = http.post("/Patient", json={"resourceType": "Patient", "gender": "female"})
        assert made.status_code == 201 and made.headers["location"]
        read = http.get(f"/Patient/{made.json()['id']}")
        assert read.status_code == 200 and read.headers["etag"] == 'W/"1"'
        assert read.json()["gender"] == "female"
        found = http.get("/Patient", params={"gender": "female"})
        assert found.json()["total"] == 1
        code = http.get("/CodeSystem/$validate-code",
                        params={"url": "http://hl7.org/fhir/sid/icd-10", "code": "E11"})
        assert code.status_code == 200
        assert {"name": "result", "valueBoolean": True} in code.json()["parameter"]
        missing = http.get("/Patient/nobody")
        assert missing.status_code == 404
        assert missing.json()["resourceType"] == "OperationOutcome"
        unknown = http.get("/Unknown")
        assert unknown.status_code == 404
        assert unknown.json()["resourceType"] == "OperationOutcome"


def test_an_endpoint_without_a_request_parameter_is_called_as_fastapi_calls_it(
    tmp_path: Path,
) -> None:
    """`GET /auth/jwks` (an endpoint of no parameter at all) answers its keys through the
    lane; the lane's first version passed it the request and answered 500."""
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'closed.db'}")
    with RunningServer(settings) as server, httpx.Client(base_url=server.url) as http:
        keys = http.get("/auth/jwks")
        assert keys.status_code == 200, keys.text
        assert keys.json()["keys"]
        assert http.get("/.well-known/smart-configuration").json()["jwks_uri"]
