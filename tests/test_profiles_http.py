"""Profiles over HTTP against a real server (uvicorn + SQLite): enforcement on create, update
and transactions (422, nothing stored), an operator rule, $validate at type and instance
level, the published StructureDefinitions and the INS search parameter."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from fhir_server.settings import Settings
from profiles import BLOOD_GLUCOSE, HBA1C
from tests.conftest import RunningServer, database_url
from tests.profile_examples import (
    INS_SYSTEM,
    VALID_INS,
    f001_glucose,
    french_patient,
    glucose,
    hba1c,
)

GLUCOSE_RULE = (
    "Observation?code:in=https://diatabase.org/fhir/ValueSet/glucose-codes",
    BLOOD_GLUCOSE,
)
VALIDATE_URL = "http://hl7.org/fhir/OperationDefinition/Resource-validate"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    settings = Settings(
        db_url=database_url(tmp_path_factory.mktemp("db")),
        require_profiles=(GLUCOSE_RULE,),
        insecure_dev=True,
    )
    with RunningServer(settings) as running, httpx.Client(base_url=running.url,
                                                          timeout=30) as http:
        yield http


def tagged(resource: dict) -> tuple[dict, str]:
    """The resource with a unique identifier, to find it (or not) afterwards."""
    value = str(uuid.uuid4())
    resource["identifier"] = [{"system": "urn:test:profiles", "value": value}]
    return resource, value


def stored_count(client: httpx.Client, resource_type: str, value: str) -> int:
    response = client.get(f"/{resource_type}", params={"identifier": f"urn:test:profiles|{value}"})
    assert response.status_code == 200
    return len(response.json().get("entry", []))


def issue_pairs(body: dict) -> set[tuple[str, str, str]]:
    return {(i["severity"], i["code"], (i.get("expression") or [""])[0]) for i in body["issue"]}


def test_conforming_resource_is_stored(client: httpx.Client) -> None:
    resource, value = tagged(f001_glucose())
    response = client.post("/Observation", json=resource)
    assert response.status_code == 201, response.text
    assert response.json()["meta"]["profile"] == [BLOOD_GLUCOSE]
    assert stored_count(client, "Observation", value) == 1


def test_unit_consistency_over_http(client: httpx.Client) -> None:
    assert client.post("/Observation", json=glucose(10, "mmol/L")).status_code == 201
    assert client.post("/Observation", json=glucose(180, "mg/dL", "2339-0")).status_code == 201
    resource, value = tagged(glucose(1800, "mg/dL", "2339-0"))
    refused = client.post("/Observation", json=resource)
    assert refused.status_code == 422
    body = refused.json()
    assert body["resourceType"] == "OperationOutcome"
    assert issue_pairs(body) == {
        ("error", "processing", "Observation"),
        ("error", "business-rule", "Observation.valueQuantity.value"),
    }
    assert body["issue"][0]["diagnostics"].startswith(
        "The Observation does not conform to BloodGlucose: 1 problem"
    )
    assert any("1800 mg/dL" in i["diagnostics"] for i in body["issue"])
    assert stored_count(client, "Observation", value) == 0


def test_update_that_breaks_a_claimed_profile_is_refused(client: httpx.Client) -> None:
    resource, value = tagged(hba1c())
    created = client.post("/Observation", json=resource).json()
    changed = dict(created, valueQuantity={**created["valueQuantity"], "value": 42})
    response = client.put(f"/Observation/{created['id']}", json=changed)
    assert response.status_code == 422
    assert ("error", "business-rule", "Observation.valueQuantity.value") in issue_pairs(
        response.json()
    )
    current = client.get(f"/Observation/{created['id']}").json()
    assert current["meta"]["versionId"] == "1"
    assert current["valueQuantity"]["value"] == 7.1


def test_transaction_fails_as_a_whole(client: httpx.Client) -> None:
    patient, patient_value = tagged(french_patient())
    good, good_value = tagged(glucose())
    bad, bad_value = tagged(glucose(0.1))
    for observation in (good, bad):
        observation["subject"] = {"reference": "urn:uuid:7d0f5c8e-1111-4c3b-9a55-0a1b2c3d4e5f"}
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:7d0f5c8e-1111-4c3b-9a55-0a1b2c3d4e5f", "resource": patient,
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": good, "request": {"method": "POST", "url": "Observation"}},
            {"resource": bad, "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    response = client.post("/", json=bundle)
    assert response.status_code == 422
    assert any(
        i["code"] == "business-rule" and i["diagnostics"].startswith("Bundle.entry[2]")
        for i in response.json()["issue"]
    )
    assert stored_count(client, "Patient", patient_value) == 0
    assert stored_count(client, "Observation", good_value) == 0
    assert stored_count(client, "Observation", bad_value) == 0
    bundle["entry"].pop()
    committed = client.post("/", json=bundle)
    assert committed.status_code == 200, committed.text
    assert stored_count(client, "Observation", good_value) == 1


def test_operator_rule_requires_blood_glucose(client: httpx.Client) -> None:
    """No meta.profile, but a glucose code: the rule applies BloodGlucose."""
    unclaimed, value = tagged(glucose())
    del unclaimed["meta"]
    del unclaimed["subject"]
    refused = client.post("/Observation", json=unclaimed)
    assert refused.status_code == 422
    assert ("error", "required", "Observation.subject") in issue_pairs(refused.json())
    assert stored_count(client, "Observation", value) == 0
    heart_rate = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org",
                          "code": "/min"},
    }
    assert client.post("/Observation", json=heart_rate).status_code == 201


def test_unknown_profiles(client: httpx.Client) -> None:
    foreign = glucose()
    foreign["meta"]["profile"].append("http://hl7.org/fhir/StructureDefinition/vitalsigns")
    assert client.post("/Observation", json=foreign).status_code == 201
    ours = glucose()
    ours["meta"]["profile"] = ["https://diatabase.org/fhir/StructureDefinition/BloodGlucos"]
    response = client.post("/Observation", json=ours)
    assert response.status_code == 422
    assert ("error", "structure", "Observation.meta.profile") in issue_pairs(response.json())


def test_validate_type_level(client: httpx.Client) -> None:
    ok = client.post("/Observation/$validate", json=glucose())
    assert ok.status_code == 200
    assert ok.json()["issue"] == [
        {"severity": "information", "code": "informational", "diagnostics": "No problems found"}
    ]
    bad = client.post("/Observation/$validate", json=glucose(1800, "mg/dL", "2339-0"))
    assert bad.status_code == 200
    assert ("error", "business-rule", "Observation.valueQuantity.value") in issue_pairs(bad.json())
    structure = client.post("/Observation/$validate", json={"resourceType": "Observation",
                                                            "status": "nonsense"})
    assert structure.status_code == 200
    assert any(i["severity"] == "error" for i in structure.json()["issue"])


def test_validate_with_parameters_and_profile(client: httpx.Client) -> None:
    resource = glucose()
    del resource["meta"]
    parameters = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "resource", "resource": resource},
            {"name": "profile", "valueUri": HBA1C},
            {"name": "mode", "valueCode": "create"},
        ],
    }
    response = client.post("/Observation/$validate", json=parameters)
    assert response.status_code == 200
    assert ("error", "code-invalid", "Observation.code.coding[0]") in issue_pairs(response.json())
    as_query = client.post("/Observation/$validate", params={"profile": HBA1C}, json=resource)
    assert issue_pairs(as_query.json()) == issue_pairs(response.json())
    bad_mode = client.post("/Observation/$validate", params={"mode": "merge"}, json=resource)
    assert bad_mode.status_code == 400
    wrong_type = client.post("/Patient/$validate", json=resource)
    assert wrong_type.status_code == 400


def test_validate_instance_level(client: httpx.Client) -> None:
    heart_rate = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
    }
    rid = client.post("/Observation", json=heart_rate).json()["id"]
    stored = client.post(f"/Observation/{rid}/$validate", params={"profile": BLOOD_GLUCOSE})
    assert stored.status_code == 200
    found = issue_pairs(stored.json())
    assert ("error", "code-invalid", "Observation.code.coding[0]") in found
    assert ("error", "required", "Observation.subject") in found
    as_get = client.get(f"/Observation/{rid}/$validate", params={"profile": BLOOD_GLUCOSE})
    assert as_get.status_code == 200
    assert issue_pairs(as_get.json()) == found
    assert client.get(f"/Observation/{rid}/$validate").json()["issue"][0]["diagnostics"] == (
        "No problems found"
    )
    deletable = client.post(f"/Observation/{rid}/$validate", params={"mode": "delete"})
    assert deletable.json()["issue"][0]["severity"] == "information"
    wrong_id = dict(glucose(), id="someone-else")
    update = client.post(f"/Observation/{rid}/$validate", params={"mode": "update"},
                         json=wrong_id)
    assert ("error", "invalid", "Observation.id") in issue_pairs(update.json())
    same_id = dict(glucose(), id=rid)
    fine = client.post(f"/Observation/{rid}/$validate", params={"mode": "update"}, json=same_id)
    assert fine.json()["issue"][0]["diagnostics"] == "No problems found"
    missing = client.post("/Observation/does-not-exist/$validate", params={"mode": "delete"})
    assert missing.status_code == 404


def test_structure_definitions_are_published(client: httpx.Client) -> None:
    read = client.get("/StructureDefinition/BloodGlucose")
    assert read.status_code == 200
    definition = read.json()
    assert definition["url"] == BLOOD_GLUCOSE
    assert definition["derivation"] == "constraint"
    found = client.get("/StructureDefinition", params={"url": HBA1C}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == ["HbA1c"]
    all_profiles = client.get("/StructureDefinition", params={"_count": 50}).json()
    assert len(all_profiles["entry"]) == 6
    parameter = client.get("/SearchParameter/Patient-ins")
    assert parameter.status_code == 200 and parameter.json()["code"] == "ins"


def test_ins_search_parameter(client: httpx.Client) -> None:
    patient, _ = tagged(french_patient())
    patient["identifier"].append({"system": INS_SYSTEM, "value": VALID_INS})
    rid = client.post("/Patient", json=patient).json()["id"]
    found = client.get("/Patient", params={"ins": VALID_INS}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [rid]
    assert client.get("/Patient", params={"ins": "184127512345699"}).json().get("entry", []) == []


def test_capability_statement_lists_validate(client: httpx.Client) -> None:
    statement = client.get("/metadata").json()
    by_type = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert {"name": "validate", "definition": VALIDATE_URL} in by_type["Observation"]["operation"]
    assert "ins" in {p["name"] for p in by_type["Patient"]["searchParam"]}
