"""Preconditions on writes over HTTP: If-Match on DELETE, conditional create from the URL's
query string, and no write that silently drops a query string (a real server, tests/conftest.py).
"""

from __future__ import annotations

import uuid

import httpx
import pytest
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import MultipleResourcesFound

from tests.conftest import RunningServer
from tests.test_api_crud import assert_outcome, glucose

INS = "urn:oid:1.2.250.1.213.1.4.8"


def patient(value: str, **extra: object) -> dict:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": INS, "value": value}],
        "name": [{"family": "Martin"}],
        **extra,
    }


def count(client: httpx.Client, resource_type: str, **params: str) -> int:
    bundle = client.get(f"/{resource_type}", params={**params, "_total": "accurate"}).json()
    return bundle["total"]


def test_delete_with_a_stale_if_match_is_412_and_deletes_nothing(client: httpx.Client) -> None:
    """Failed before: DELETE ignored If-Match and deleted the resource (200)."""
    rid = client.post("/Observation", json=glucose(5.0)).json()["id"]
    client.put(f"/Observation/{rid}", json=glucose(5.5, id=rid))  # now version 2
    stale = client.delete(f"/Observation/{rid}", headers={"If-Match": 'W/"1"'})
    assert_outcome(stale, 412, "conflict")
    assert client.get(f"/Observation/{rid}").status_code == 200
    current = client.delete(f"/Observation/{rid}", headers={"If-Match": 'W/"2"'})
    assert current.status_code == 200, current.text
    assert client.get(f"/Observation/{rid}").status_code == 410


def test_delete_with_if_match_on_an_unknown_resource_is_412(client: httpx.Client) -> None:
    """Failed before: the precondition was ignored and the delete answered 200."""
    missing = client.delete(f"/Observation/{uuid.uuid4()}", headers={"If-Match": 'W/"1"'})
    assert_outcome(missing, 412)


def test_conditional_delete_honours_if_match(client: httpx.Client) -> None:
    """Failed before: a conditional delete ignored If-Match."""
    value = str(uuid.uuid4())
    client.post("/Patient", json=patient(value))
    stale = client.delete(
        "/Patient", params={"identifier": f"{INS}|{value}"}, headers={"If-Match": 'W/"7"'}
    )
    assert_outcome(stale, 412)
    assert count(client, "Patient", identifier=f"{INS}|{value}") == 1


def test_transaction_delete_entry_honours_if_match(client: httpx.Client) -> None:
    """Failed before: a transaction's DELETE ignored request.ifMatch, so the whole
    transaction committed and the resource was gone."""
    rid = client.post("/Observation", json=glucose(5.0)).json()["id"]
    client.put(f"/Observation/{rid}", json=glucose(5.2, id=rid))
    created_value = str(uuid.uuid4())
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "DELETE", "url": f"Observation/{rid}", "ifMatch": 'W/"1"'}},
            {"resource": patient(created_value), "request": {"method": "POST", "url": "Patient"}},
        ],
    }
    response = client.post("/", json=bundle)
    assert_outcome(response, 412)
    assert client.get(f"/Observation/{rid}").status_code == 200
    assert count(client, "Patient", identifier=f"{INS}|{created_value}") == 0
    bundle["entry"][0]["request"]["ifMatch"] = 'W/"2"'
    assert client.post("/", json=bundle).status_code == 200
    assert client.get(f"/Observation/{rid}").status_code == 410


def test_batch_delete_entry_with_stale_if_match_fails_alone(client: httpx.Client) -> None:
    """Failed before: the batch entry deleted the resource despite its stale ifMatch."""
    rid = client.post("/Observation", json=glucose(5.0)).json()["id"]
    client.put(f"/Observation/{rid}", json=glucose(5.3, id=rid))
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "DELETE", "url": f"Observation/{rid}", "ifMatch": 'W/"1"'}}
        ],
    }
    response = client.post("/", json=bundle)
    assert response.status_code == 200
    assert response.json()["entry"][0]["response"]["status"].startswith("412")
    assert client.get(f"/Observation/{rid}").status_code == 200


def test_post_with_search_in_the_url_is_a_conditional_create(client: httpx.Client) -> None:
    """Failed before: the query string was ignored and every POST created a duplicate."""
    value = str(uuid.uuid4())
    search = {"identifier": f"{INS}|{value}"}
    first = client.post("/Patient", params=search, json=patient(value))
    assert first.status_code == 201, first.text
    again = client.post("/Patient", params=search, json=patient(value))
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert count(client, "Patient", **search) == 1
    client.post("/Patient", json=patient(value))  # a plain create: now there are two
    several = client.post("/Patient", params=search, json=patient(value))
    assert_outcome(several, 412, "multiple-matches")
    assert count(client, "Patient", **search) == 2


def test_post_query_and_if_none_exist_must_agree(client: httpx.Client) -> None:
    """Failed before: the query string was dropped whatever the header said."""
    value = str(uuid.uuid4())
    response = client.post(
        "/Patient",
        params={"identifier": f"{INS}|{value}"},
        json=patient(value),
        headers={"If-None-Exist": f"identifier={INS}|other"},
    )
    assert_outcome(response, 400)
    assert count(client, "Patient", identifier=f"{INS}|{value}") == 0


@pytest.mark.parametrize(
    "query",
    [
        {"nonsense": "1"},  # not a search parameter of Patient
        {"_count": "1"},  # a result parameter selects nothing
        {"birthdate": "not-a-date"},  # malformed value
    ],
)
def test_post_with_an_unusable_query_is_400_and_creates_nothing(
    client: httpx.Client, query: dict[str, str]
) -> None:
    """Failed before: the query was dropped and the Patient created (201)."""
    value = str(uuid.uuid4())
    response = client.post("/Patient", params=query, json=patient(value))
    assert_outcome(response, 400)
    assert count(client, "Patient", identifier=f"{INS}|{value}") == 0


def test_instance_writes_refuse_a_query_string(client: httpx.Client) -> None:
    """Failed before: PUT, PATCH and DELETE on Type/id dropped their query string."""
    value = str(uuid.uuid4())
    rid = client.post("/Patient", json=patient(value)).json()["id"]
    params = {"identifier": f"{INS}|{value}"}
    put = client.put(f"/Patient/{rid}", params=params, json=patient(value, id=rid, active=True))
    assert_outcome(put, 400)
    patch = client.patch(
        f"/Patient/{rid}",
        params=params,
        json=[{"op": "add", "path": "/active", "value": True}],
        headers={"content-type": "application/json-patch+json"},
    )
    assert_outcome(patch, 400)
    assert_outcome(client.delete(f"/Patient/{rid}", params=params), 400)
    assert "active" not in client.get(f"/Patient/{rid}").json()
    assert_outcome(
        client.post("/", params=params, json={"resourceType": "Bundle", "type": "batch"}), 400
    )
    # _format and _pretty shape the response and stay allowed
    ok = client.put(
        f"/Patient/{rid}", params={"_pretty": "true"}, json=patient(value, id=rid, active=True)
    )
    assert ok.status_code == 200, ok.text


def test_fhirpy_get_or_create_and_create_with_search(server: RunningServer) -> None:
    """fhirpy sends the search in the POST's query string. Failed before: get_or_create
    created a second Patient each time (fhirpy reported created=True twice), and
    create(**search) made duplicates."""
    fhir = SyncFHIRClient(server.url)
    value = str(uuid.uuid4())
    search = fhir.resources("Patient").search(identifier=f"{INS}|{value}")
    first, created = search.get_or_create(fhir.resource("Patient", **patient(value)))
    assert created
    second, created_again = search.get_or_create(fhir.resource("Patient", **patient(value)))
    assert not created_again
    assert second.id == first.id
    again = fhir.resource("Patient", **patient(value))
    again.create(identifier=f"{INS}|{value}")
    assert again.id == first.id
    assert search.count() == 1
    fhir.resource("Patient", **patient(value)).save()  # a second one, unconditionally
    with pytest.raises(MultipleResourcesFound):
        search.get_or_create(fhir.resource("Patient", **patient(value)))
