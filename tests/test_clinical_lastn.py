"""`Observation/$lastn` over HTTP (each test failed before: the server had no $lastn and
answered 404 "Observation/$lastn is not known")."""

from __future__ import annotations

import uuid

import httpx

LOINC = "http://loinc.org"
LAB = {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}


def observation(patient: str, code: str, when: str, value: float) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [LAB]}],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": "%"},
    }


def new_patient(client: httpx.Client) -> str:
    response = client.post(
        "/Patient", json={"resourceType": "Patient", "name": [{"family": "Lastn"}]}
    )
    assert response.status_code == 201
    return response.json()["id"]


def test_the_newest_per_code_for_a_patient(client: httpx.Client) -> None:
    pid, other = new_patient(client), new_patient(client)
    for code, when, value in [
        ("4548-4", "2024-01-10", 7.9),
        ("4548-4", "2024-04-10", 7.1),
        ("4548-4", "2024-07-10", 6.8),
        ("2339-0", "2024-05-01T08:00:00Z", 126),
        ("2339-0", "2024-05-02T08:00:00Z", 131),
    ]:
        assert (
            client.post("/Observation", json=observation(pid, code, when, value)).status_code == 201
        )
    client.post("/Observation", json=observation(other, "4548-4", "2025-01-01", 9.9))

    bundle = client.get(
        "/Observation/$lastn", params={"patient": f"Patient/{pid}", "category": "laboratory"}
    ).json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    values = sorted(e["resource"]["valueQuantity"]["value"] for e in bundle["entry"])
    assert values == [6.8, 131] and bundle["total"] == 2

    two = client.get(
        "/Observation/$lastn",
        params={"subject": f"Patient/{pid}", "code": f"{LOINC}|4548-4", "max": "2"},
    ).json()
    assert [e["resource"]["effectiveDateTime"] for e in two["entry"]] == [
        "2024-07-10",
        "2024-04-10",
    ]

    compartment = client.get(
        f"/Patient/{pid}/Observation/$lastn", params={"category": "laboratory"}
    )
    assert compartment.status_code == 200
    assert compartment.json()["total"] == 2


def test_lastn_refuses_what_r4_requires_and_a_bad_max(client: httpx.Client) -> None:
    pid = new_patient(client)
    for params in [
        {"category": "laboratory"},  # no subject: would run over every patient
        {"patient": f"Patient/{pid}"},  # neither category nor code
        {"patient": f"Patient/{pid}", "category": "laboratory", "max": "0"},
        {"patient": f"Patient/{pid}", "category": "laboratory", "max": "two"},
    ]:
        response = client.get("/Observation/$lastn", params=params)
        assert response.status_code == 400, params
        assert response.json()["resourceType"] == "OperationOutcome"


def test_lastn_is_in_the_capability_statement(client: httpx.Client) -> None:
    statement = client.get("/metadata").json()
    observation_entry = next(
        r for r in statement["rest"][0]["resource"] if r["type"] == "Observation"
    )
    assert {
        "name": "lastn",
        "definition": "http://hl7.org/fhir/OperationDefinition/Observation-lastn",
    } in observation_entry["operation"]


def test_conditional_delete_without_a_match_is_204(client: httpx.Client) -> None:
    """R4: no match is an ordinary delete of nothing (was: 200 with an OperationOutcome,
    which fhirpy's upstream suite does not accept)."""
    response = client.delete("/Patient", params={"identifier": f"urn:none|{uuid.uuid4().hex}"})
    assert response.status_code == 204 and response.content == b""


def test_a_body_without_resource_type_is_named_so(client: httpx.Client) -> None:
    """The message said "resourceType 'None'" before: a Python None in a user's error."""
    response = client.post("/Patient", json={"name": [{"family": "X"}]})
    assert response.status_code == 400
    text = response.json()["issue"][0]["diagnostics"]
    assert "None" not in text and "no resourceType" in text
