"""`_elements` and `_summary` keep what R4 says no subset may drop (search.html#summary,
#elements): the mandatory elements (min >= 1), so that strict parsers (fhir.resources,
fhirclient, FHIR.js) still read every resource, and the modifier elements; the result is
tagged SUBSETTED. Over a real server (tests/conftest.py).
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from fhir_server.service.search import kept_elements
from tests.test_api_crud import glucose

SUBSETTED = "SUBSETTED"


def only_match(client: httpx.Client, path: str, **params: str) -> dict:
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    matches = [e["resource"] for e in response.json()["entry"] if e["search"]["mode"] == "match"]
    assert len(matches) == 1, response.text
    return matches[0]


def subsetted(resource: dict) -> bool:
    return any(tag.get("code") == SUBSETTED for tag in resource["meta"].get("tag", []))


def test_the_vendored_rules_know_r4_mandatory_and_modifier_elements() -> None:
    assert {"status", "code"} <= set(kept_elements("Observation"))
    assert {"active", "deceased[x]", "link"} <= set(kept_elements("Patient"))
    assert {"status", "class"} <= set(kept_elements("Encounter"))
    assert {"status", "medication[x]", "subject"} <= set(kept_elements("MedicationStatement"))


@pytest.mark.parametrize(
    "params",
    [{"_elements": "subject"}, {"_summary": "text"}, {"_elements": "id"}],
)
def test_observation_subsets_keep_status_and_code(
    client: httpx.Client, params: dict[str, str]
) -> None:
    """Failed before: `_elements=subject` and `_summary=text` dropped Observation.code (and
    `_elements` dropped status), which strict R4 parsers reject."""
    rid = client.post("/Observation", json=glucose(7.1)).json()["id"]
    observation = only_match(client, "/Observation", _id=rid, **params)
    assert observation["status"] == "final"
    assert observation["code"]["coding"][0]["code"] == "15074-8"
    assert "valueQuantity" not in observation
    assert subsetted(observation)


def test_modifier_elements_survive_every_subset(client: httpx.Client) -> None:
    """Failed before: `_elements=name` and `_summary=text` dropped Patient.active and
    deceasedBoolean, modifiers that change what the rest means."""
    value = str(uuid.uuid4())
    rid = client.post(
        "/Patient",
        json={
            "resourceType": "Patient",
            "identifier": [{"system": "urn:example:mrn", "value": value}],
            "active": False,
            "deceasedBoolean": True,
            "name": [{"family": "Petit"}],
            "gender": "female",
        },
    ).json()["id"]
    for params in ({"_elements": "name"}, {"_summary": "text"}):
        patient = only_match(client, "/Patient", _id=rid, **params)
        assert patient["active"] is False, params
        assert patient["deceasedBoolean"] is True, params
        assert "gender" not in patient, params
        assert subsetted(patient)


def test_encounter_summary_keeps_its_mandatory_class_and_status(client: httpx.Client) -> None:
    """Failed before: `_elements=subject` dropped Encounter.status and class (both 1..1)."""
    body = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/x"},
        "serviceType": {"text": "diabetology"},
    }
    rid = client.post("/Encounter", json=body).json()["id"]
    encounter = only_match(client, "/Encounter", _id=rid, _elements="subject")
    assert encounter["status"] == "finished" and encounter["class"]["code"] == "AMB"
    assert "serviceType" not in encounter


def test_read_and_vread_apply_elements_and_summary(client: httpx.Client) -> None:
    """Failed before: GET Observation/{id}?_elements=subject ignored the parameter and
    returned the whole resource, untagged."""
    rid = client.post("/Observation", json=glucose(6.2)).json()["id"]
    for path in (f"/Observation/{rid}", f"/Observation/{rid}/_history/1"):
        response = client.get(path, params={"_elements": "subject"})
        assert response.status_code == 200
        observation = response.json()
        assert set(observation) == {"resourceType", "id", "meta", "status", "code", "subject"}
        assert subsetted(observation)
    assert client.get(f"/Observation/{rid}", params={"_summary": "bogus"}).status_code == 400
