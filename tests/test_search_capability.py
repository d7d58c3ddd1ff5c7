"""The CapabilityStatement lists every search parameter the server can answer, per type,
with its type and documentation, and nothing it cannot: each listed parameter is then
used in a real search over HTTP and must be understood (no 400, no ignored-parameter
outcome); parameters it cannot answer are absent and refused in strict mode."""

from __future__ import annotations

import httpx
import pytest

CORE_TYPES = [
    "Patient",
    "Observation",
    "Condition",
    "Encounter",
    "Practitioner",
    "Organization",
    "Device",
    "Medication",
    "MedicationStatement",
    "MedicationRequest",
    "ImagingStudy",
]
SAMPLE_VALUE = {
    "token": "x",
    "string": "x",
    "date": "ge2024",
    "number": "gt1",
    "quantity": "gt1",
    "reference": "1",
    "uri": "http://example.org/x",
}


@pytest.fixture(scope="module")
def capability(client: httpx.Client) -> dict[str, list[dict]]:
    statement = client.get("/metadata").json()
    rest = statement["rest"][0]
    assert {"code": "search-system"} in rest["interaction"]
    return {r["type"]: r["searchParam"] for r in rest["resource"]}


@pytest.mark.parametrize("rtype", CORE_TYPES)
def test_core_types_list_their_parameters_with_type_and_documentation(capability, rtype):
    params = capability[rtype]
    names = {p["name"] for p in params}
    assert {"_id", "_lastUpdated", "_tag", "_profile", "_security", "_source"} <= names
    assert "_text" in names and "_content" in names  # full text (search/fulltext.py)
    for param in params:
        assert param["type"] in SAMPLE_VALUE or param["type"] == "composite"
        assert param["documentation"].strip()


def test_observation_lists_its_r4_parameters(capability):
    names = {p["name"] for p in capability["Observation"]}
    assert {
        "code",
        "date",
        "patient",
        "subject",
        "value-quantity",
        "code-value-quantity",
        "combo-code-value-quantity",
        "component-code",
        "category",
        "status",
        "encounter",
    } <= names


def test_unsupported_parameters_are_not_listed(capability):
    assert "near" not in {p["name"] for p in capability["Location"]}
    assert "relationship" not in {p["name"] for p in capability["DocumentReference"]}
    assert "chromosome-variant-coordinate" not in {
        p["name"] for p in capability["MolecularSequence"]
    }


@pytest.mark.parametrize("rtype", CORE_TYPES)
def test_every_listed_parameter_is_understood(client, capability, rtype):
    for param in capability[rtype]:
        name, kind = param["name"], param["type"]
        queries = [(f"{name}:missing", "true")]
        if kind in SAMPLE_VALUE:
            queries.append((name, SAMPLE_VALUE[kind]))
        for key, value in queries:
            response = client.get(
                f"/{rtype}", params={key: value}, headers={"Prefer": "handling=strict"}
            )
            assert response.status_code == 200, (rtype, key, value, response.text)
            modes = {e["search"]["mode"] for e in response.json().get("entry", [])}
            assert "outcome" not in modes, (rtype, key)


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("Location", {"near": "42.2|-83.6|10|km"}),
        ("DocumentReference", {"relationship": "a$b"}),
    ],
)
def test_unlisted_parameters_are_refused_in_strict_mode(client, path, params):
    response = client.get(f"/{path}", params=params, headers={"Prefer": "handling=strict"})
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"
