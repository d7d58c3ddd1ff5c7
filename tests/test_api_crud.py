"""Instance and type interactions over HTTP against a real server (uvicorn + SQLite)."""

from __future__ import annotations

import json
import uuid

import httpx

FHIR_JSON = "application/fhir+json"


def glucose(value: object = 6.3, patient: str = "Patient/p1", **extra: object) -> dict:
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "15074-8"}]},
        "subject": {"reference": patient},
        "effectiveDateTime": "2024-03-05T08:40:00+01:00",
        "valueQuantity": {
            "value": value,
            "unit": "mmol/L",
            "system": "http://unitsofmeasure.org",
            "code": "mmol/L",
        },
    }
    resource.update(extra)
    return resource


def post_raw(client: httpx.Client, path: str, body: bytes, **headers: str) -> httpx.Response:
    return client.post(path, content=body, headers={"content-type": FHIR_JSON, **headers})


def assert_outcome(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"], body
    for issue in body["issue"]:
        assert issue["severity"] in ("error", "fatal", "warning", "information")
        assert issue["diagnostics"]
        assert "Traceback" not in issue["diagnostics"]
    if code is not None:
        assert code in {i["code"] for i in body["issue"]}, body
    return body


def test_create_returns_201_location_etag_last_modified(client: httpx.Client) -> None:
    response = client.post("/Observation", json=glucose())
    assert response.status_code == 201
    location = response.headers["location"]
    assert location.startswith(str(client.base_url))
    assert location.endswith("/_history/1")
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["last-modified"].endswith("GMT")
    body = response.json()
    assert body["meta"]["versionId"] == "1"
    assert location.split("/")[-3] == body["id"]


def test_create_ignores_client_id_and_server_meta(client: httpx.Client) -> None:
    body = glucose(id="client-chosen", meta={"versionId": "99", "tag": [{"code": "t"}]})
    created = client.post("/Observation", json=body).json()
    assert created["id"] != "client-chosen"
    assert created["meta"]["versionId"] == "1"
    assert created["meta"]["tag"] == [{"code": "t"}]


def test_read_returns_exactly_what_was_written_with_decimal_precision(client: httpx.Client) -> None:
    raw = json.dumps(glucose()).replace('"value": 6.3', '"value": 6.30').encode()
    assert b"6.30" in raw
    created = post_raw(client, "/Observation", raw)
    assert created.status_code == 201
    read = client.get(f"/Observation/{created.json()['id']}")
    assert read.status_code == 200
    assert b'"value":6.30' in read.content
    assert read.headers["etag"] == 'W/"1"'


def test_read_unknown_is_404_and_invalid_type_is_404(client: httpx.Client) -> None:
    assert_outcome(client.get("/Observation/does-not-exist"), 404, "not-found")
    assert_outcome(client.get("/NotAType/1"), 404)
    assert_outcome(client.post("/NotAType", json={"resourceType": "NotAType"}), 404)


def test_update_vread_and_history(client: httpx.Client) -> None:
    rid = client.post("/Observation", json=glucose(5.0)).json()["id"]
    updated = client.put(f"/Observation/{rid}", json=glucose(5.5, id=rid))
    assert updated.status_code == 200
    assert updated.headers["etag"] == 'W/"2"'
    assert updated.headers["location"].endswith(f"/Observation/{rid}/_history/2")
    v1 = client.get(f"/Observation/{rid}/_history/1").json()
    v2 = client.get(f"/Observation/{rid}/_history/2").json()
    assert v1["valueQuantity"]["value"] == 5.0
    assert v2["valueQuantity"]["value"] == 5.5
    history = client.get(f"/Observation/{rid}/_history").json()
    assert history["type"] == "history"
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    assert history["entry"][1]["request"]["method"] == "POST"
    assert history["entry"][0]["request"] == {"method": "PUT", "url": f"Observation/{rid}"}
    assert_outcome(client.get(f"/Observation/{rid}/_history/9"), 404)


def test_identical_update_creates_no_new_version(client: httpx.Client) -> None:
    rid = client.post("/Observation", json=glucose(5.1)).json()["id"]
    again = client.put(f"/Observation/{rid}", json=glucose(5.1, id=rid))
    assert again.status_code == 200
    assert again.headers["etag"] == 'W/"1"'


def test_update_as_create_with_client_id(client: httpx.Client) -> None:
    rid = f"client-{uuid.uuid4().hex[:12]}"
    response = client.put(f"/Observation/{rid}", json=glucose(id=rid))
    assert response.status_code == 201
    assert response.headers["location"].endswith(f"/Observation/{rid}/_history/1")


def test_update_errors(client: httpx.Client) -> None:
    rid = client.post("/Observation", json=glucose()).json()["id"]
    assert_outcome(client.put(f"/Observation/{rid}", json=glucose(id="other")), 400, "invalid")
    assert_outcome(client.put(f"/Observation/{rid}", json=glucose()), 400, "required")
    assert_outcome(
        client.put(f"/Observation/{rid}", json={"resourceType": "Patient", "id": rid}), 400
    )


def test_if_match_rejects_stale_version(client: httpx.Client) -> None:
    rid = client.post("/Observation", json=glucose(4.0)).json()["id"]
    ok = client.put(f"/Observation/{rid}", json=glucose(4.1, id=rid), headers={"If-Match": 'W/"1"'})
    assert ok.status_code == 200
    stale = client.put(
        f"/Observation/{rid}", json=glucose(4.2, id=rid), headers={"If-Match": 'W/"1"'}
    )
    assert_outcome(stale, 412, "conflict")
    assert client.get(f"/Observation/{rid}").json()["valueQuantity"]["value"] == 4.1


def test_conditional_read_304(client: httpx.Client) -> None:
    created = client.post("/Observation", json=glucose())
    rid = created.json()["id"]
    same = client.get(f"/Observation/{rid}", headers={"If-None-Match": 'W/"1"'})
    assert same.status_code == 304
    assert same.content == b""
    changed = client.get(f"/Observation/{rid}", headers={"If-None-Match": 'W/"0"'})
    assert changed.status_code == 200
    later = client.get(
        f"/Observation/{rid}", headers={"If-Modified-Since": created.headers["last-modified"]}
    )
    assert later.status_code == 304
    earlier = client.get(
        f"/Observation/{rid}", headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}
    )
    assert earlier.status_code == 200


def test_patch_json_patch(client: httpx.Client) -> None:
    rid = client.post("/Observation", json=glucose(6.0)).json()["id"]
    ops = [{"op": "replace", "path": "/valueQuantity/value", "value": 6.6}]
    response = client.patch(
        f"/Observation/{rid}",
        content=json.dumps(ops),
        headers={"content-type": "application/json-patch+json"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["valueQuantity"]["value"] == 6.6
    assert response.headers["etag"] == 'W/"2"'
    bad_path = [{"op": "replace", "path": "/nothing/here", "value": 1}]
    assert_outcome(
        client.patch(
            f"/Observation/{rid}",
            content=json.dumps(bad_path),
            headers={"content-type": "application/json-patch+json"},
        ),
        422,
    )
    invalid_result = [{"op": "replace", "path": "/status", "value": "bogus"}]
    assert_outcome(
        client.patch(
            f"/Observation/{rid}",
            content=json.dumps(invalid_result),
            headers={"content-type": "application/json-patch+json"},
        ),
        400,
    )
    assert client.get(f"/Observation/{rid}").json()["status"] == "final"


def test_delete_is_logical_and_history_keeps_versions(client: httpx.Client) -> None:
    rid = client.post("/Observation", json=glucose()).json()["id"]
    deleted = client.delete(f"/Observation/{rid}")
    assert deleted.status_code == 200
    assert deleted.headers["etag"] == 'W/"2"'
    assert_outcome(client.get(f"/Observation/{rid}"), 410, "deleted")
    assert client.get(f"/Observation/{rid}/_history/1").status_code == 200
    history = client.get(f"/Observation/{rid}/_history").json()
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]
    assert "resource" not in history["entry"][0]
    # Deleting again is harmless; re-creating by update works and continues the versions.
    assert client.delete(f"/Observation/{rid}").status_code == 200
    recreated = client.put(f"/Observation/{rid}", json=glucose(id=rid))
    assert recreated.status_code == 201
    assert recreated.headers["etag"] == 'W/"3"'


def test_prefer_return(client: httpx.Client) -> None:
    minimal = client.post("/Observation", json=glucose(), headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201
    assert minimal.content == b""
    assert minimal.headers["location"]
    oo = client.post("/Observation", json=glucose(), headers={"Prefer": "return=OperationOutcome"})
    assert oo.status_code == 201
    assert oo.json()["resourceType"] == "OperationOutcome"
    full = client.post("/Observation", json=glucose(), headers={"Prefer": "return=representation"})
    assert full.json()["resourceType"] == "Observation"


def test_conditional_create(client: httpx.Client) -> None:
    ident = f"cc-{uuid.uuid4().hex}"
    body = glucose(identifier=[{"system": "urn:test", "value": ident}])
    header = {"If-None-Exist": f"identifier=urn:test|{ident}"}
    first = client.post("/Observation", json=body, headers=header)
    second = client.post("/Observation", json=body, headers=header)
    assert first.status_code == 201
    assert second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    client.post("/Observation", json=body)  # now two match
    assert_outcome(client.post("/Observation", json=body, headers=header), 412)


def test_conditional_update(client: httpx.Client) -> None:
    ident = f"cu-{uuid.uuid4().hex}"
    body = glucose(7.0, identifier=[{"system": "urn:test", "value": ident}])
    created = client.put(f"/Observation?identifier=urn:test|{ident}", json=body)
    assert created.status_code == 201
    rid = created.json()["id"]
    body["valueQuantity"]["value"] = 7.7
    updated = client.put(f"/Observation?identifier=urn:test|{ident}", json=body)
    assert updated.status_code == 200
    assert updated.json()["id"] == rid
    assert updated.headers["etag"] == 'W/"2"'
    assert_outcome(
        client.put(f"/Observation?identifier=urn:test|{ident}", json={**body, "id": "wrong"}), 400
    )
    client.post("/Observation", json=body)
    assert_outcome(client.put(f"/Observation?identifier=urn:test|{ident}", json=body), 412)
    assert_outcome(client.put("/Observation?nonsense-param=1", json=body), 400)


def test_conditional_delete(client: httpx.Client) -> None:
    ident = f"cd-{uuid.uuid4().hex}"
    body = glucose(identifier=[{"system": "urn:test", "value": ident}])
    rid = client.post("/Observation", json=body).json()["id"]
    response = client.delete(f"/Observation?identifier=urn:test|{ident}")
    assert response.status_code == 200
    assert client.get(f"/Observation/{rid}").status_code == 410
    client.post("/Observation", json=body)
    client.post("/Observation", json=body)
    assert_outcome(client.delete(f"/Observation?identifier=urn:test|{ident}"), 412)


def test_type_and_system_history_with_paging(client: httpx.Client) -> None:
    patient = f"Patient/h-{uuid.uuid4().hex[:8]}"
    for i in range(5):
        client.post("/Observation", json=glucose(float(i), patient=patient))
    first = client.get("/Observation/_history", params={"_count": 2}).json()
    assert len(first["entry"]) == 2
    next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    assert next_url.startswith("http://")
    second = client.get(next_url).json()
    assert len(second["entry"]) == 2
    assert {e["fullUrl"] for e in first["entry"]}.isdisjoint(
        {e["fullUrl"] for e in second["entry"]}
    )
    stamp = first["entry"][0]["resource"]["meta"]["lastUpdated"]
    since = client.get("/_history", params={"_since": stamp}).json()
    assert since["entry"] and all(e["response"]["lastModified"] >= stamp for e in since["entry"])
    assert_outcome(client.get("/_history", params={"_since": "yesterday"}), 400)
    assert_outcome(client.get("/_history", params={"_cursor": "forged"}), 400)


def test_history_at(client: httpx.Client) -> None:
    rid = client.post("/Observation", json=glucose(1.0)).json()["id"]
    stamp = client.get(f"/Observation/{rid}").json()["meta"]["lastUpdated"]
    client.put(f"/Observation/{rid}", json=glucose(2.0, id=rid))
    at = client.get(f"/Observation/{rid}/_history", params={"_at": stamp}).json()
    assert [e["resource"]["meta"]["versionId"] for e in at["entry"]] == ["1"]


def test_search_by_id_identifier_subject_and_paging_links(client: httpx.Client) -> None:
    patient = f"Patient/s-{uuid.uuid4().hex[:8]}"
    ids = [
        client.post("/Observation", json=glucose(float(i), patient=patient)).json()["id"]
        for i in range(7)
    ]
    page = client.get("/Observation", params={"subject": patient, "_count": 3}).json()
    assert page["type"] == "searchset"
    seen = [e["resource"]["id"] for e in page["entry"]]
    while nxt := next((lnk["url"] for lnk in page["link"] if lnk["relation"] == "next"), None):
        assert nxt.startswith("http://127.0.0.1")
        page = client.get(nxt).json()
        seen += [e["resource"]["id"] for e in page["entry"] if e["search"]["mode"] == "match"]
    assert sorted(seen) == sorted(ids)
    by_patient = client.get("/Observation", params={"patient": patient.split("/")[1]}).json()
    assert by_patient["total"] == 7
    by_id = client.get("/Observation", params={"_id": ids[0]}).json()
    assert [e["resource"]["id"] for e in by_id["entry"]] == [ids[0]]


def test_search_reports_unknown_parameters(client: httpx.Client) -> None:
    lenient = client.get("/Observation", params={"foo": "bar", "_count": 1})
    assert lenient.status_code == 200
    body = lenient.json()
    outcome = [e for e in body["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome and "foo" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    assert "foo" not in body["link"][0]["url"]
    strict = client.get(
        "/Observation", params={"foo": "bar"}, headers={"Prefer": "handling=strict"}
    )
    assert_outcome(strict, 400)


def test_invalid_json_and_validation_errors_list_every_problem(client: httpx.Client) -> None:
    assert_outcome(post_raw(client, "/Observation", b'{"resourceType": "Observ'), 400, "structure")
    assert_outcome(post_raw(client, "/Observation", b""), 400)
    bad = glucose(status="bogus", unknownElement=1)
    bad["valueQuantity"]["value"] = "six"
    body = assert_outcome(client.post("/Observation", json=bad), 400)
    expressions = {e for issue in body["issue"] for e in issue.get("expression", [])}
    assert "Observation.status" in expressions
    assert "Observation.valueQuantity.value" in expressions
    assert any("unknownElement" in i["diagnostics"] for i in body["issue"])
    assert_outcome(client.post("/Observation", json={"resourceType": "Patient"}), 400, "invalid")
    assert_outcome(client.post("/Observation", json=[1, 2]), 400)


def test_xml_is_refused_with_operation_outcome(client: httpx.Client) -> None:
    assert_outcome(client.get("/metadata", headers={"Accept": "application/fhir+xml"}), 406)
    assert_outcome(client.get("/metadata", params={"_format": "xml"}), 406)
    assert_outcome(
        client.post(
            "/Observation",
            content=b"<Observation/>",
            headers={"content-type": "application/fhir+xml"},
        ),
        415,
    )
    assert client.get("/metadata", params={"_format": "json"}).status_code == 200
    assert client.get("/metadata", headers={"Accept": "application/json"}).status_code == 200


def test_wrong_method_and_unknown_route(client: httpx.Client) -> None:
    assert_outcome(client.post("/Observation/123", json=glucose()), 405)
    assert_outcome(client.get("/Observation/1/2/3/4/5"), 404)


def test_body_over_limit_is_413(client: httpx.Client) -> None:
    big = glucose(note=[{"text": "x" * 3_000_000}])
    assert_outcome(client.post("/Observation", json=big), 413, "too-costly")


def test_capability_statement(client: httpx.Client) -> None:
    cs = client.get("/metadata").json()
    assert cs["resourceType"] == "CapabilityStatement"
    assert cs["fhirVersion"] == "4.0.1"
    rest = cs["rest"][0]
    types = {r["type"]: r for r in rest["resource"]}
    assert len(types) >= 140
    observation = types["Observation"]
    assert {"read", "vread", "update", "patch", "delete", "create", "search-type"} <= {
        i["code"] for i in observation["interaction"]
    }
    params = {p["name"]: p["type"] for p in observation["searchParam"]}
    assert params["subject"] == "reference"
    assert params["_id"] == "token"
    assert {"transaction", "batch", "history-system"} <= {i["code"] for i in rest["interaction"]}


def test_resources_declaring_fhir_4_0_1_are_accepted(client: httpx.Client) -> None:
    """The vendored schema stops at 4.0.0; R4's 4.0.1 must still be a valid fhirVersion."""
    capability = {
        "resourceType": "CapabilityStatement",
        "status": "draft",
        "date": "2024-01-01",
        "kind": "instance",
        "implementation": {"description": "a test server"},  # R4 cpb-2 and cpb-15
        "rest": [{"mode": "server"}],  # R4 cpb-1
        "fhirVersion": "4.0.1",
        "format": ["json"],
    }
    assert client.post("/CapabilityStatement", json=capability).status_code == 201
    assert_outcome(
        client.post("/CapabilityStatement", json={**capability, "fhirVersion": "9.9.9"}), 400
    )
