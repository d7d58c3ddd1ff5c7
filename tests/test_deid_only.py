"""`serve --deid-only`: no identifying route at all; /metadata describes only the facade."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import httpx
import pytest
from fastapi.routing import APIRoute

from fhir_server.api.rest import build_router
from fhir_server.cli import build_parser
from fhir_server.ingest.loader import Loader
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage import open_storage
from tests.conftest import RunningServer, database_url
from tests.deid_data import french_patients, transaction

KEY = "only-key-1"


@pytest.fixture(scope="module")
def only_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, str]]:
    folder = tmp_path_factory.mktemp("deid-only")
    url = database_url(folder)
    service = FhirService(open_storage(url), Settings(db_url=url))
    (folder / "bundle.json").write_text(
        json.dumps(transaction(french_patients(count=2, readings=3)))
    )
    assert not Loader(service).load_files([folder / "bundle.json"]).failed
    real_id = next(service.storage.iter_current("Patient")).id
    service.storage.close()
    (folder / "recipients.json").write_text(
        json.dumps(
            [
                {
                    "id": "r1",
                    "api_key_sha256": hashlib.sha256(KEY.encode()).hexdigest(),
                    "parameters": {"kAnonymity": {"k": 1}},  # two patients: else suppressed
                }
            ]
        )
    )
    settings = Settings(
        db_url=url,
        deid_secret="deid-only-test-secret-0123456",
        deid_recipients=str(folder / "recipients.json"),
        deid_only=True,
    )
    with RunningServer(settings) as running:
        yield running, real_id


def clinical_routes() -> list[tuple[str, str]]:
    routes = []
    for route in build_router().routes:
        assert isinstance(route, APIRoute)
        for method in route.methods:
            routes.append((method, route.path))
    return routes


def test_every_clinical_route_is_absent(only_server: tuple[RunningServer, str]) -> None:
    server, real_id = only_server
    routes = clinical_routes()
    assert len(routes) >= 14
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for headers in ({}, {"Authorization": f"Bearer {KEY}"}):
            for method, path in routes:
                url = (
                    path.replace("{resource_type}", "Patient")
                    .replace("{rid}", real_id)
                    .replace("{vid}", "1")
                )
                body = json.dumps({"resourceType": "Patient", "id": real_id}).encode()
                response = http.request(
                    method,
                    url,
                    content=body,
                    headers={"content-type": "application/fhir+json", **headers},
                )
                assert response.status_code == 404, (method, url, response.status_code)
                assert response.json()["resourceType"] == "OperationOutcome"
                assert "Nothing at" in response.json()["issue"][0]["diagnostics"]
        # The facade itself works, with a key.
        assert (
            http.get("/deid/Patient", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        )
        assert http.get("/deid/Patient").status_code == 401


def test_metadata_describes_only_the_facade(only_server: tuple[RunningServer, str]) -> None:
    server, _ = only_server
    statement = httpx.get(f"{server.url}/metadata", timeout=60).json()
    assert statement["implementation"]["url"].endswith("/deid")
    interactions = {i["code"] for r in statement["rest"][0]["resource"] for i in r["interaction"]}
    assert interactions == {"read", "search-type"}
    assert "interaction" not in statement["rest"][0]  # no transaction, batch, history


def test_serve_flags_parse() -> None:
    args = build_parser().parse_args(
        ["serve", "--deid-only", "--deid-recipients", "r.json", "--port", "9000"]
    )
    assert args.deid_only and args.deid_recipients == "r.json"


def test_deid_only_without_recipients_refuses_to_start() -> None:
    from fhir_server.app import create_app
    from fhir_server.deid.keys import DeidConfigError

    with pytest.raises(DeidConfigError):
        create_app(Settings(db_url="sqlite:///:memory:", deid_only=True))
