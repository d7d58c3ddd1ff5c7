"""The R4 core rules over HTTP (real servers on SQLite): strict mode refuses a write that
breaks one (400, nothing stored), lenient mode stores it and lists the problems as
warnings, `$validate` reports every issue with its FHIRPath expression. On the old code the
invalid Observation below was stored without a word."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from fhir_server.settings import Settings
from tests.conftest import RunningServer, database_url


def broken_observation(tag: str) -> dict:
    return {
        "resourceType": "Observation",
        "identifier": [{"system": "urn:test:core", "value": tag}],
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
        "subject": {"reference": "Patient/p1"},
        "valueQuantity": {"value": 120, "unit": "mg/dL"},
        "dataAbsentReason": {"text": "meter error"},  # obs-6: not with a value
    }


@pytest.fixture(scope="module", params=["strict", "lenient"])
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, httpx.Client]]:
    settings = Settings(db_url=database_url(tmp_path_factory.mktemp("db")), insecure_dev=True,
                        validation=request.param)
    with RunningServer(settings) as running, httpx.Client(base_url=running.url,
                                                          timeout=60) as http:
        yield request.param, http


def stored(client: httpx.Client, tag: str) -> int:
    found = client.get("/Observation", params={"identifier": f"urn:test:core|{tag}"})
    assert found.status_code == 200
    return len(found.json().get("entry", []))


def test_a_write_that_breaks_a_core_rule(server: tuple[str, httpx.Client]) -> None:
    mode, client = server
    tag = str(uuid.uuid4())
    response = client.post("/Observation", json=broken_observation(tag),
                           headers={"Prefer": "return=OperationOutcome"})
    issues = response.json()["issue"]
    found = [(i["severity"], i["code"], i.get("expression")) for i in issues
             if "obs-6" in i["diagnostics"]]
    if mode == "strict":
        assert response.status_code == 400
        assert found == [("error", "invariant", ["Observation"])]
        assert stored(client, tag) == 0
    else:
        assert response.status_code == 201
        assert found == [("warning", "invariant", ["Observation"])]
        assert stored(client, tag) == 1


def test_validate_reports_every_core_issue_with_its_expression(
    server: tuple[str, httpx.Client],
) -> None:
    _, client = server
    resource = broken_observation("x")
    resource["category"] = [{"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "lab"}]}]
    response = client.post("/Observation/$validate", json=resource)
    assert response.status_code == 200
    errors = {(i["code"], i["expression"][0]) for i in response.json()["issue"]
              if i["severity"] == "error"}
    assert errors == {("invariant", "Observation"),
                      ("code-invalid", "Observation.category[0].coding[0].code")}
