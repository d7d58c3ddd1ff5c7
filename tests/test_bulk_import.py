"""`$import` over HTTP: an export of one server read back into an empty one gives the same
resources (ids and contents); an uploaded NDJSON file with bad lines stores the good ones
and reports each bad one as an OperationOutcome in the error file; file:// URLs are read
only inside the folders the operator allows. Real servers on 127.0.0.1 (--insecure-dev:
access control of imports is in test_bulk_access.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_server.settings import Settings
from tests.bulk_client import ASYNC, export, resources, wait
from tests.conftest import RunningServer, database_url
from tests.test_bulk_export import observation, population, store

TYPES = "Patient,Observation,Condition,Practitioner,Group"


def without_meta(resource: dict[str, Any]) -> dict[str, Any]:
    """A resource's content: `meta.versionId` and `meta.lastUpdated` are the store's."""
    copy = dict(resource)
    meta = {k: v for k, v in (copy.pop("meta", None) or {}).items()
            if k not in ("versionId", "lastUpdated")}
    if meta:
        copy["meta"] = meta
    return copy


def import_job(http: httpx.Client, **kwargs: Any) -> dict[str, Any]:
    kicked = http.post("/$import", headers={**ASYNC, **kwargs.pop("headers", {})}, **kwargs)
    assert kicked.status_code == 202, kicked.text[:500]
    assert "/$import-status/" in kicked.headers["content-location"]
    status = wait(http, kicked.headers["content-location"])
    assert status.status_code == 200, status.text[:500]
    return status.json()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("import")
    allowed = folder / "allowed"
    allowed.mkdir()
    (folder / "a").mkdir()
    (folder / "b").mkdir()
    source = RunningServer(Settings(db_url=database_url(folder / "a"), insecure_dev=True))
    target = RunningServer(Settings(db_url=database_url(folder / "b"), insecure_dev=True,
                                    import_dirs=(str(allowed),)))
    with source, target, httpx.Client(base_url=source.url, timeout=60) as a, \
            httpx.Client(base_url=target.url, timeout=60) as b:
        yield {"a": a, "b": b, "allowed": allowed, "folder": folder}


def test_export_then_import_gives_the_same_resources(servers: dict[str, Any]) -> None:
    a, b = servers["a"], servers["b"]
    items = population()
    items.append({"resourceType": "Group", "id": "g1", "type": "person", "actual": True,
                  "member": [{"entity": {"reference": "Patient/p1"}}]})
    store(a, items)
    store(a, [observation("p1-glu", "p1", "2339-0", 150, "mg/dL")])  # a second version
    manifest = export(a, "/$export", _type=TYPES)
    exported = resources(a, manifest)
    # The export's completion manifest is itself an import manifest (`output`: type, url).
    report = import_job(b, json=manifest, headers={"Content-Type": "application/json"})
    assert report["error"] == []
    assert sum(o["count"] for o in report["output"]) == len(exported)
    assert {o["inputUrl"] for o in report["output"]} == {o["url"] for o in manifest["output"]}
    again = resources(b, export(b, "/$export", _type=TYPES))
    assert sorted(map(repr, map(without_meta, again))) == sorted(
        map(repr, map(without_meta, exported)))
    read = b.get("/Observation/p1-glu").json()
    assert read["valueQuantity"]["value"] == 150  # the current version's content


def test_bad_lines_are_reported_one_outcome_each(servers: dict[str, Any]) -> None:
    b = servers["b"]
    good = observation("imp-ok", "p1", "2339-0", 99, "mg/dL")
    no_status = observation("imp-bad", "p1", "2339-0", 99, "mg/dL")
    del no_status["status"]
    lines = [
        httpx.Request("POST", "/", json=good).content,
        b"{not json",
        httpx.Request("POST", "/", json={"resourceType": "Patient", "id": "imp-pat"}).content,
        httpx.Request("POST", "/", json=no_status).content,
        b"",
    ]
    report = import_job(b, content=b"\n".join(lines),
                        params={"type": "Observation"},
                        headers={"Content-Type": "application/fhir+ndjson"})
    assert report["output"][0]["count"] == 1
    (errors,) = report["error"]
    assert errors["type"] == "OperationOutcome" and errors["count"] == 3
    outcomes = [httpx.Response(200, content=line).json()
                for line in b.get(errors["url"]).text.splitlines()]
    diagnostics = [o["issue"][0]["diagnostics"] for o in outcomes]
    assert [d.split(":")[0] for d in diagnostics] == ["upload line 2", "upload line 3",
                                                      "upload line 4"]
    assert "Patient in a file of Observation" in diagnostics[1]
    assert all(o["resourceType"] == "OperationOutcome" for o in outcomes)
    assert b.get("/Observation/imp-ok").status_code == 200
    assert b.get("/Observation/imp-bad").status_code == 404


def test_file_urls_only_inside_allowed_folders(servers: dict[str, Any]) -> None:
    b, allowed, folder = servers["b"], servers["allowed"], servers["folder"]
    line = httpx.Request("POST", "/", json=observation("from-file", "p2", "2339-0", 80,
                                                       "mg/dL")).content
    inside = allowed / "Observation.ndjson"
    inside.write_bytes(line + b"\n")
    outside = folder / "secret.ndjson"
    outside.write_bytes(line + b"\n")
    refused = b.post("/$import", headers=ASYNC, json={
        "inputFormat": "application/fhir+ndjson",
        "input": [{"type": "Observation", "url": outside.as_uri()}]})
    assert refused.status_code == 403
    sneaky = b.post("/$import", headers=ASYNC, json={
        "input": [{"type": "Observation", "url": f"file://{allowed}/../secret.ndjson"}]})
    assert sneaky.status_code == 403
    report = import_job(b, json={"resourceType": "Parameters", "parameter": [
        {"name": "inputFormat", "valueCode": "application/fhir+ndjson"},
        {"name": "input", "part": [{"name": "type", "valueCode": "Observation"},
                                   {"name": "url", "valueUrl": inside.as_uri()}]}]},
        headers={"Content-Type": "application/fhir+json"})
    assert report["output"][0]["count"] == 1
    assert b.get("/Observation/from-file").status_code == 200
    assert inside.exists()  # the operator's file is read, not consumed


def test_kick_off_errors(servers: dict[str, Any]) -> None:
    b = servers["b"]
    assert b.post("/$import", json={"input": []},
                  headers={"Content-Type": "application/json"}).status_code == 400  # no Prefer
    assert b.post("/$import", headers=ASYNC, json={"input": []}).status_code == 400
    assert b.post("/$import", headers=ASYNC, json={
        "inputFormat": "text/csv", "input": [{"url": "https://x.test/a"}]}).status_code == 400
    assert b.post("/$import", headers=ASYNC, json={
        "input": [{"url": "ftp://x.test/a"}]}).status_code == 400


def test_an_unreachable_input_fails_the_job(servers: dict[str, Any], tmp_path: Path) -> None:
    b = servers["b"]
    kicked = b.post("/$import", headers=ASYNC, json={
        "input": [{"type": "Patient", "url": "http://127.0.0.1:9/nothing.ndjson"}]})
    status = wait(b, kicked.headers["content-location"])
    assert status.status_code == 500
    assert status.json()["resourceType"] == "OperationOutcome"
