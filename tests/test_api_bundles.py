"""Transaction and batch Bundles over HTTP against a real server."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import httpx

from tests.test_api_crud import assert_outcome, glucose

EXAMPLES = Path(__file__).parent.parent / "examples"


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def patient(identifier: str, family: str = "Martin") -> dict:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": identifier}],
        "name": [{"family": family}],
        "gender": "female",
        "birthDate": "1960-01-01",
    }


def count(client: httpx.Client, rtype: str, **params: str) -> int:
    return client.get(f"/{rtype}", params={**params, "_total": "accurate", "_count": 1}).json()[
        "total"
    ]


def test_transaction_resolves_fullurls_and_returns_response_per_entry(client: httpx.Client) -> None:
    p = urn()
    ident = uuid.uuid4().hex
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": urn(),
                "resource": glucose(patient=p),
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "fullUrl": p,
                "resource": patient(ident),
                "request": {"method": "POST", "url": "Patient"},
            },
        ],
    }
    response = client.post("/", json=bundle)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in body["entry"]]
    assert statuses == ["201 Created", "201 Created"]
    obs_location = body["entry"][0]["response"]["location"]
    patient_location = body["entry"][1]["response"]["location"]
    assert patient_location.startswith("Patient/") and patient_location.endswith("/_history/1")
    assert body["entry"][0]["response"]["etag"] == 'W/"1"'
    observation = client.get("/" + obs_location.rsplit("/_history", 1)[0]).json()
    assert observation["subject"]["reference"] == patient_location.rsplit("/_history", 1)[0]


def test_transaction_is_atomic_when_last_entry_is_invalid(client: httpx.Client) -> None:
    ident = uuid.uuid4().hex
    bad = glucose(status="not-a-status")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": urn(),
                "resource": patient(ident),
                "request": {"method": "POST", "url": "Patient"},
            },
            {"resource": glucose(), "request": {"method": "POST", "url": "Observation"}},
            {"resource": bad, "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    before = count(client, "Observation")
    response = client.post("/", json=bundle)
    body = assert_outcome(response, 400)
    assert "Bundle.entry[2]" in body["issue"][0]["diagnostics"]
    assert count(client, "Patient", identifier=f"urn:oid:1.2.250.1.213.1.4.10|{ident}") == 0
    assert count(client, "Observation") == before


def test_transaction_rolls_back_updates_and_deletes_too(client: httpx.Client) -> None:
    rid = client.post("/Observation", json=glucose(3.0)).json()["id"]
    victim = client.post("/Observation", json=glucose(3.1)).json()["id"]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "DELETE", "url": f"Observation/{victim}"}},
            {
                "resource": glucose(9.9, id=rid),
                "request": {"method": "PUT", "url": f"Observation/{rid}"},
            },
            {
                "resource": glucose(),
                "request": {"method": "PUT", "url": "Observation/has-no-id-in-body"},
            },
        ],
    }
    assert_outcome(client.post("/", json=bundle), 400)
    assert client.get(f"/Observation/{victim}").status_code == 200
    assert client.get(f"/Observation/{rid}").json()["valueQuantity"]["value"] == 3.0


def test_transaction_processing_order_delete_post_put_get(client: httpx.Client) -> None:
    ident = uuid.uuid4().hex
    existing = client.post("/Patient", json=patient(ident, "Old")).json()["id"]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "request": {
                    "method": "GET",
                    "url": f"Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|{ident}",
                }
            },
            {
                "resource": {**patient(ident, "New"), "id": existing},
                "request": {"method": "PUT", "url": f"Patient/{existing}"},
            },
            {
                "request": {
                    "method": "DELETE",
                    "url": f"Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|{ident}",
                }
            },
        ],
    }
    response = client.post("/", json=bundle)
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    # DELETE ran first, then the PUT re-created the resource, then the GET saw it.
    assert entries[2]["response"]["status"] == "204 No Content"
    assert entries[1]["response"]["status"] == "201 Created"
    search = entries[0]["resource"]
    assert search["type"] == "searchset"
    assert [
        e["resource"]["name"][0]["family"]
        for e in search["entry"]
        if e["search"]["mode"] == "match"
    ] == ["New"]


def test_transaction_conditional_create_and_conditional_references(client: httpx.Client) -> None:
    ident = uuid.uuid4().hex
    system = "urn:oid:1.2.250.1.213.1.4.10"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": urn(),
                "resource": patient(ident),
                "request": {
                    "method": "POST",
                    "url": "Patient",
                    "ifNoneExist": f"identifier={system}|{ident}",
                },
            },
            {
                "resource": glucose(patient=f"Patient?identifier={system}|{ident}"),
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    first = client.post("/", json=bundle).json()
    second = client.post("/", json=bundle).json()
    assert first["entry"][0]["response"]["status"] == "201 Created"
    assert second["entry"][0]["response"]["status"] == "200 OK"
    patient_ref = first["entry"][0]["response"]["location"].rsplit("/_history", 1)[0]
    assert second["entry"][0]["response"]["location"].startswith(patient_ref)
    obs = client.get(
        "/" + second["entry"][1]["response"]["location"].rsplit("/_history", 1)[0]
    ).json()
    assert obs["subject"]["reference"] == patient_ref
    unresolvable = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": glucose(patient=f"Patient?identifier={system}|nobody-{ident}"),
                "request": {"method": "POST", "url": "Observation"},
            }
        ],
    }
    assert_outcome(client.post("/", json=unresolvable), 404)


def test_transaction_conditional_update_and_patch_entry(client: httpx.Client) -> None:
    ident = uuid.uuid4().hex
    system = "urn:oid:1.2.250.1.213.1.4.10"
    rid = client.post("/Patient", json=patient(ident)).json()["id"]
    patch = [{"op": "replace", "path": "/gender", "value": "male"}]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": patient(ident, "Durand"),
                "request": {"method": "PUT", "url": f"Patient?identifier={system}|{ident}"},
            },
            {
                "resource": {
                    "resourceType": "Binary",
                    "contentType": "application/json-patch+json",
                    "data": base64.b64encode(json.dumps(patch).encode()).decode(),
                },
                "request": {"method": "PATCH", "url": f"Patient/{rid}"},
            },
        ],
    }
    response = client.post("/", json=bundle)
    assert response.status_code == 200, response.text
    final = client.get(f"/Patient/{rid}").json()
    assert final["name"][0]["family"] == "Durand"
    assert final["gender"] == "male"
    assert final["meta"]["versionId"] == "3"


def test_batch_entries_are_independent(client: httpx.Client) -> None:
    rid = client.post("/Observation", json=glucose()).json()["id"]
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": glucose(2.2), "request": {"method": "POST", "url": "Observation"}},
            {
                "resource": glucose(status="nope"),
                "request": {"method": "POST", "url": "Observation"},
            },
            {"request": {"method": "GET", "url": f"Observation/{rid}"}},
            {"request": {"method": "GET", "url": "Observation/missing-one"}},
            {"request": {"method": "POST"}},
        ],
    }
    response = client.post("/", json=bundle)
    assert response.status_code == 200
    entries = response.json()["entry"]
    assert response.json()["type"] == "batch-response"
    assert entries[0]["response"]["status"] == "201 Created"
    assert entries[1]["response"]["status"].startswith("400")
    assert entries[1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert entries[2]["response"]["status"] == "200 OK"
    assert entries[2]["resource"]["id"] == rid
    assert entries[3]["response"]["status"].startswith("404")
    assert entries[4]["response"]["status"].startswith("400")


def test_bundle_errors(client: httpx.Client) -> None:
    assert_outcome(client.post("/", json={"resourceType": "Bundle", "type": "collection"}), 400)
    assert_outcome(client.post("/", json=glucose()), 400)
    dup = urn()
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": dup,
                "resource": glucose(),
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "fullUrl": dup,
                "resource": glucose(),
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    assert_outcome(client.post("/", json=bundle), 400)
    bad_method = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "FETCH", "url": "Patient"}}],
    }
    assert_outcome(client.post("/", json=bad_method), 400)


def test_example_patient_story_loads_twice_without_duplicates(client: httpx.Client) -> None:
    raw_bundle = (EXAMPLES / "patient-story.json").read_bytes()
    assert b'"value": 7.90' in raw_bundle  # the decimal precision under test
    headers = {"content-type": "application/fhir+json"}
    first = client.post("/", content=raw_bundle, headers=headers)
    assert first.status_code == 200, first.text
    assert all(e["response"]["status"] == "201 Created" for e in first.json()["entry"])
    second = client.post("/", content=raw_bundle, headers=headers)
    assert all(e["response"]["status"] == "200 OK" for e in second.json()["entry"])
    ins = "urn:oid:1.2.250.1.213.1.4.8|284057511234528"
    patients = client.get("/Patient", params={"identifier": ins}).json()
    assert patients["total"] == 1
    pid = patients["entry"][0]["resource"]["id"]
    assert patients["entry"][0]["resource"]["meta"]["versionId"] == "1"
    observations = client.get("/Observation", params={"subject": f"Patient/{pid}"}).json()
    assert observations["total"] == 5
    values = sorted(
        json.dumps(e["resource"]["valueQuantity"]["value"]) for e in observations["entry"]
    )
    assert "7.9" in values or "7.90" in values
    raw = client.get(
        "/Observation", params={"subject": f"Patient/{pid}", "code": "15074-8"}
    ).content
    assert b'"value":7.90' in raw


def test_many_conditional_creates_in_one_transaction(client: httpx.Client) -> None:
    """Conditional creates are resolved in batches: existing ones found, others created."""
    run = uuid.uuid4().hex[:8]
    system = f"urn:bulk:{run}"

    def entry(i: int) -> dict:
        obs = glucose(float(i), identifier=[{"system": system, "value": f"r{i}"}])
        return {
            "resource": obs,
            "request": {
                "method": "POST",
                "url": "Observation",
                "ifNoneExist": f"identifier={system}|r{i}",
            },
        }

    existing = {
        i: client.post("/Observation", json=entry(i)["resource"]).json()["id"] for i in (3, 120)
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [entry(i) for i in range(150)],
    }
    response = client.post("/", json=bundle)
    assert response.status_code == 200, response.text[:500]
    entries = response.json()["entry"]
    statuses = [e["response"]["status"] for e in entries]
    assert statuses.count("200 OK") == 2 and statuses.count("201 Created") == 148
    for i, rid in existing.items():
        assert statuses[i] == "200 OK"
        assert entries[i]["response"]["location"].startswith(f"Observation/{rid}/")
    again = client.post("/", json=bundle).json()["entry"]
    assert all(e["response"]["status"] == "200 OK" for e in again)
    total = client.get("/Observation", params={"identifier": f"{system}|r7", "_total": "accurate"})
    assert total.json()["total"] == 1
