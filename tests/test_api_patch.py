"""PATCH as clients send it, over a real server: JSON Patch, FHIRPath Patch (a Parameters
body), JSON Merge Patch (as application/merge-patch+json and as plain application/json, which
is what fhirpy sends), conditional PATCH, and PATCH entries in transactions and batches.

Before these tests, only JSON Patch on Type/id was accepted: every test below except the
JSON Patch baseline failed (415 for the other media types, 405 for PATCH on a type, 400 for
a Parameters or merge-patch entry in a Bundle).
"""

from __future__ import annotations

import base64
import json
import uuid

import httpx
import pytest
from fhirpy import SyncFHIRClient

from tests.conftest import RunningServer
from tests.test_api_crud import assert_outcome
from tests.test_api_write_conditions import INS, patient

MERGE = "application/merge-patch+json"
FHIR_JSON = "application/fhir+json"


def operation(kind: str, path: str, **parts: dict) -> dict:
    return {
        "name": "operation",
        "part": [
            {"name": "type", "valueCode": kind},
            {"name": "path", "valueString": path},
            *({"name": name, **value} for name, value in parts.items()),
        ],
    }


def parameters(*operations: dict) -> dict:
    return {"resourceType": "Parameters", "parameter": list(operations)}


def new_patient(client: httpx.Client, **extra: object) -> tuple[str, str]:
    value = str(uuid.uuid4())
    body = patient(value, **extra)
    body["name"] = [{"family": "Martin", "given": ["Anne", "Marie"]}]
    response = client.post("/Patient", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"], value


def fhir_patch(client: httpx.Client, path: str, body: dict, **headers: str) -> httpx.Response:
    return client.patch(
        path, content=json.dumps(body), headers={"content-type": FHIR_JSON, **headers}
    )


def test_fhirpath_patch_add_insert_delete_replace_move(client: httpx.Client) -> None:
    rid, _ = new_patient(client, birthDate="1970-01-01")
    body = parameters(
        operation("add", "Patient", name={"valueString": "gender"}, value={"valueCode": "female"}),
        operation(
            "add",
            "Patient",
            name={"valueString": "identifier"},
            value={"valueIdentifier": {"system": "urn:example:mrn", "value": "M-1"}},
        ),
        operation(  # an anonymous type is given as parts, one per child element
            "add",
            "Patient",
            name={"valueString": "contact"},
            value={
                "part": [
                    {"name": "gender", "valueCode": "male"},
                    {"name": "telecom", "valueContactPoint": {"system": "phone", "value": "1"}},
                ]
            },
        ),
        operation("replace", "Patient.birthDate", value={"valueDate": "1971-02-03"}),
        operation(
            "insert",
            "Patient.name[0].given",
            index={"valueInteger": 0},
            value={"valueString": "Zoé"},
        ),
        operation("delete", "Patient.name[0].given.where($this = 'Marie')"),
        operation(
            "move",
            "Patient.identifier",
            source={"valueInteger": 1},
            destination={"valueInteger": 0},
        ),
        operation("delete", "Patient.telecom"),  # nothing there: not an error
    )
    response = fhir_patch(client, f"/Patient/{rid}", body)
    assert response.status_code == 200, response.text
    patched = client.get(f"/Patient/{rid}").json()
    assert patched["gender"] == "female"
    assert patched["birthDate"] == "1971-02-03"
    assert patched["name"][0]["given"] == ["Zoé", "Anne"]
    assert patched["identifier"][0] == {"system": "urn:example:mrn", "value": "M-1"}
    assert patched["contact"] == [
        {"gender": "male", "telecom": [{"system": "phone", "value": "1"}]}
    ]
    assert patched["meta"]["versionId"] == "2"


def test_fhirpath_patch_errors_change_nothing(client: httpx.Client) -> None:
    rid, _ = new_patient(client, gender="male")
    cases = [
        # add on an element that does not repeat and already has a value
        parameters(
            operation(
                "add", "Patient", name={"valueString": "gender"}, value={"valueCode": "female"}
            )
        ),
        # replace selecting two elements
        parameters(operation("replace", "Patient.name.given", value={"valueString": "X"})),
        # the result is not valid R4 (gender has a required binding)
        parameters(operation("replace", "Patient.gender", value={"valueCode": "robot"})),
        # insert past the end of the list
        parameters(
            operation(
                "insert",
                "Patient.identifier",
                index={"valueInteger": 5},
                value={"valueIdentifier": {"value": "x"}},
            )
        ),
        # an operation type FHIRPath Patch does not have
        parameters(operation("rename", "Patient.gender")),
    ]
    for body in cases:
        response = fhir_patch(client, f"/Patient/{rid}", body)
        assert response.status_code in (400, 422), response.text
        assert_outcome(response, response.status_code)
    after = client.get(f"/Patient/{rid}").json()
    assert after["meta"]["versionId"] == "1"
    assert after["gender"] == "male"


def test_merge_patch_sets_and_removes(client: httpx.Client) -> None:
    rid, _ = new_patient(client, gender="male", birthDate="1980-05-05")
    response = client.patch(
        f"/Patient/{rid}",
        content=json.dumps({"gender": "female", "birthDate": None, "active": True}),
        headers={"content-type": MERGE},
    )
    assert response.status_code == 200, response.text
    patched = response.json()
    assert patched["gender"] == "female" and patched["active"] is True
    assert "birthDate" not in patched
    invalid = client.patch(
        f"/Patient/{rid}", content=json.dumps({"gender": 7}), headers={"content-type": MERGE}
    )
    assert_outcome(invalid, 400)
    moved = client.patch(
        f"/Patient/{rid}", content=json.dumps({"id": "other"}), headers={"content-type": MERGE}
    )
    assert_outcome(moved, 422)
    assert client.get(f"/Patient/{rid}").json()["meta"]["versionId"] == "2"


def test_fhirpy_patch_sends_a_json_object_and_it_is_merged(server: RunningServer) -> None:
    """fhirpy's client.patch(), resource.patch() and search.patch() (a conditional PATCH)
    send a JSON object as application/json."""
    fhir = SyncFHIRClient(server.url)
    value = str(uuid.uuid4())
    created = fhir.resource("Patient", **patient(value, gender="male"))
    created.save()
    fhir.patch("Patient", created.id, active=True)
    assert fhir.reference("Patient", created.id).to_resource()["active"] is True
    created.patch(gender="female")
    assert fhir.reference("Patient", created.id).to_resource()["gender"] == "female"
    search = fhir.resources("Patient").search(identifier=f"{INS}|{value}")
    patched = search.patch(birthDate="1999-09-09")
    assert patched.id == created.id
    assert fhir.reference("Patient", created.id).to_resource()["birthDate"] == "1999-09-09"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json-patch+json", [{"op": "add", "path": "/active", "value": True}]),
        (
            FHIR_JSON,
            parameters(
                operation(
                    "add", "Patient", name={"valueString": "active"}, value={"valueBoolean": True}
                )
            ),
        ),
        (MERGE, {"active": True}),
        ("application/json", {"active": True}),
    ],
)
def test_if_match_is_honoured_in_every_patch_format(
    client: httpx.Client, content_type: str, body: object
) -> None:
    rid, _ = new_patient(client)
    headers = {"content-type": content_type}
    stale = client.patch(
        f"/Patient/{rid}", content=json.dumps(body), headers={**headers, "If-Match": 'W/"9"'}
    )
    assert_outcome(stale, 412)
    assert "active" not in client.get(f"/Patient/{rid}").json()
    fresh = client.patch(
        f"/Patient/{rid}", content=json.dumps(body), headers={**headers, "If-Match": 'W/"1"'}
    )
    assert fresh.status_code == 200, fresh.text
    assert fresh.json()["active"] is True


def test_conditional_patch(client: httpx.Client) -> None:
    rid, value = new_patient(client)
    search = {"identifier": f"{INS}|{value}"}
    body = json.dumps({"active": False})
    headers = {"content-type": MERGE}
    response = client.patch("/Patient", params=search, content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == rid and response.json()["active"] is False
    none = client.patch(
        "/Patient", params={"identifier": f"{INS}|nobody-{value}"}, content=body, headers=headers
    )
    assert_outcome(none, 404)
    client.post("/Patient", json=patient(value))
    several = client.patch("/Patient", params=search, content=body, headers=headers)
    assert_outcome(several, 412, "multiple-matches")
    assert_outcome(client.patch("/Patient", content=body, headers=headers), 400)


def test_patch_entries_in_a_transaction_in_all_three_formats(client: httpx.Client) -> None:
    rid, value = new_patient(client, gender="male")
    json_patch = [{"op": "add", "path": "/active", "value": True}]
    merge = {"birthDate": "1960-06-06"}
    fhirpath = parameters(operation("replace", "Patient.gender", value={"valueCode": "female"}))

    def binary(document: object, content_type: str) -> dict:
        data = base64.b64encode(json.dumps(document).encode()).decode()
        return {"resourceType": "Binary", "contentType": content_type, "data": data}

    entries = [
        {
            "resource": binary(json_patch, "application/json-patch+json"),
            "request": {"method": "PATCH", "url": f"Patient/{rid}"},
        },
        {"resource": fhirpath, "request": {"method": "PATCH", "url": f"Patient/{rid}"}},
        {
            "resource": binary(merge, MERGE),
            "request": {"method": "PATCH", "url": f"Patient?identifier={INS}|{value}"},
        },
    ]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    response = client.post("/", json=bundle)
    assert response.status_code == 200, response.text
    statuses = [e["response"]["status"] for e in response.json()["entry"]]
    assert all(s.startswith("200") for s in statuses), statuses
    patched = client.get(f"/Patient/{rid}").json()
    assert patched["active"] is True
    assert patched["gender"] == "female"
    assert patched["birthDate"] == "1960-06-06"
    version = patched["meta"]["versionId"]
    # a stale ifMatch on one PATCH entry rolls the whole transaction back
    entries[1]["request"]["ifMatch"] = 'W/"1"'
    entries[1]["resource"] = parameters(
        operation("replace", "Patient.gender", value={"valueCode": "male"})
    )
    response = client.post("/", json=bundle)
    assert_outcome(response, 412)
    assert client.get(f"/Patient/{rid}").json()["meta"]["versionId"] == version


def test_patch_entries_in_a_batch_fail_alone(client: httpx.Client) -> None:
    rid, _ = new_patient(client)
    entries = [
        {
            "resource": parameters(
                operation(
                    "add", "Patient", name={"valueString": "active"}, value={"valueBoolean": True}
                )
            ),
            "request": {"method": "PATCH", "url": f"Patient/{rid}"},
        },
        {
            "resource": parameters(
                operation("replace", "Patient.gender", value={"valueCode": "robot"})
            ),
            "request": {"method": "PATCH", "url": f"Patient/{rid}"},
        },
    ]
    response = client.post("/", json={"resourceType": "Bundle", "type": "batch", "entry": entries})
    assert response.status_code == 200, response.text
    statuses = [e["response"]["status"] for e in response.json()["entry"]]
    assert statuses[0].startswith("200") and statuses[1][:3] in ("400", "422"), statuses
    assert client.get(f"/Patient/{rid}").json()["active"] is True
