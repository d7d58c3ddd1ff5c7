"""The CapabilityStatement tells the truth (operations, _include/_revinclude, supported
profiles), large responses are gzipped for clients that accept it, and HEAD works wherever
GET does; over a real server (tests/conftest.py)."""

from __future__ import annotations

import gzip
import uuid

import httpx
import pytest

from tests.test_api_crud import glucose


@pytest.fixture(scope="module")
def statement(client: httpx.Client) -> dict:
    response = client.get("/metadata")
    assert response.status_code == 200
    return response.json()


def resource_entry(statement: dict, resource_type: str) -> dict:
    return next(r for r in statement["rest"][0]["resource"] if r["type"] == resource_type)


def listed_operations(statement: dict) -> set[tuple[str, str]]:
    rest = statement["rest"][0]
    found = {("*", op["name"]) for op in rest.get("operation", [])}
    for resource in rest["resource"]:
        found |= {(resource["type"], op["name"]) for op in resource.get("operation", [])}
    return found


def test_every_operation_the_server_has_is_listed(statement: dict) -> None:
    """Failed before: $everything was not listed (nor anything that names it)."""
    operations = listed_operations(statement)
    expected = {
        ("Patient", "everything"),
        ("Observation", "validate"),
        ("Observation", "lastn"),
        ("CodeSystem", "lookup"),
        ("CodeSystem", "validate-code"),
        ("CodeSystem", "subsumes"),
        ("ValueSet", "expand"),
        ("ConceptMap", "translate"),
        ("*", "convert"),
    }
    assert expected <= operations
    patient = resource_entry(statement, "Patient")
    definitions = {op["name"]: op["definition"] for op in patient["operation"]}
    assert definitions["everything"] == (
        "http://hl7.org/fhir/OperationDefinition/Patient-everything"
    )


def test_every_listed_operation_is_routed(client: httpx.Client, statement: dict) -> None:
    """An operation the statement lists answers something other than 'no such route'."""
    for resource_type, name in sorted(listed_operations(statement)):
        if resource_type in ("*",):
            path = f"/${name}"
        elif (
            resource_type == "Observation"
            or name == "everything"
            or name in ("lookup", "validate-code", "subsumes", "expand", "translate", "validate")
        ):
            path = f"/{resource_type}/${name}"
        else:
            continue
        if name == "validate" and resource_type not in ("Observation", "Patient"):
            continue  # the same route for every type: two of them are enough
        answers = [client.get(path).status_code, client.post(path, json={}).status_code]
        assert any(status not in (404, 405) for status in answers), (path, answers)


def test_search_include_and_revinclude_are_listed_and_work(
    client: httpx.Client, statement: dict
) -> None:
    """Failed before: no resource listed searchInclude or searchRevInclude."""
    observation = resource_entry(statement, "Observation")
    assert {"*", "Observation:subject", "Observation:patient"} <= set(observation["searchInclude"])
    patient = resource_entry(statement, "Patient")
    assert {"Observation:subject", "Condition:subject", "Encounter:subject"} <= set(
        patient["searchRevInclude"]
    )
    for include in observation["searchInclude"][:4]:
        response = client.get("/Observation", params={"_include": include, "_count": "1"})
        assert response.status_code == 200, (include, response.text)
    response = client.get("/Patient", params={"_revinclude": "Observation:subject", "_count": "1"})
    assert response.status_code == 200


def test_supported_profiles_name_the_diabetes_profiles(
    client: httpx.Client, statement: dict
) -> None:
    """Failed before: no supportedProfile anywhere."""
    bundle = client.get("/StructureDefinition", params={"_count": "100"}).json()
    held = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
    diabetes = [sd for sd in held if sd.get("kind") == "resource"]
    assert len(diabetes) >= 5
    for definition in diabetes:
        listed = resource_entry(statement, definition["type"]).get("supportedProfile", [])
        assert definition["url"] in listed, definition["url"]
    # the HL7 CGM IG data receiver ($submit-cgm-bundle)
    assert statement["instantiates"] == [
        "http://hl7.org/fhir/uv/cgm/CapabilityStatement/cgm-data-receiver"]


def test_large_responses_are_gzipped_when_accepted(client: httpx.Client) -> None:
    """Failed before: /metadata went out as ~500 KB of plain JSON whatever the client said."""
    zipped = client.get("/metadata", headers={"Accept-Encoding": "gzip"})
    assert zipped.status_code == 200
    assert zipped.headers["content-encoding"] == "gzip"
    assert "accept-encoding" in zipped.headers["vary"].lower()
    assert zipped.num_bytes_downloaded * 5 < len(zipped.content)
    assert zipped.json()["resourceType"] == "CapabilityStatement"
    with httpx.stream(
        "GET", f"{client.base_url}/metadata", headers={"Accept-Encoding": "gzip"}
    ) as raw:
        compressed = b"".join(raw.iter_raw())
    assert gzip.decompress(compressed) == zipped.content
    plain = client.get("/metadata", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert plain.content == zipped.content
    small = client.get(f"/Observation/{uuid.uuid4()}", headers={"Accept-Encoding": "gzip"})
    assert small.status_code == 404 and "content-encoding" not in small.headers


def test_head_answers_as_get_without_a_body(client: httpx.Client) -> None:
    """Failed before: HEAD was a 405 on every FHIR route."""
    rid = client.post("/Observation", json=glucose(5.9)).json()["id"]
    for path, params in (
        ("/metadata", {}),
        (f"/Observation/{rid}", {}),
        (f"/Observation/{rid}/_history/1", {}),
        ("/Observation", {"_id": rid}),
        (f"/Patient/{uuid.uuid4()}", {}),
    ):
        get = client.get(path, params=params, headers={"Accept-Encoding": "identity"})
        head = client.head(path, params=params, headers={"Accept-Encoding": "identity"})
        assert head.status_code == get.status_code, path
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
        assert head.headers["content-length"] == get.headers["content-length"], path
        if "etag" in get.headers:
            assert head.headers["etag"] == get.headers["etag"]
