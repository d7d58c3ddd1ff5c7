"""`$everything` with R4's Patient-everything parameters (`_type`, `_since`, `start`,
`end`, `_count`, paged with next links), at instance level and at type level
(`GET /Patient/$everything`), over a real server (tests/conftest.py). This module's server
holds only the data made here, so the type-level answer can be checked exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.test_api_crud import assert_outcome, glucose


def observation(patient: str, when: str) -> dict:
    return glucose(6.0, patient=f"Patient/{patient}", effectiveDateTime=when)


@pytest.fixture(scope="module")
def story(client: httpx.Client) -> dict[str, str]:
    """Two patients; Anne has two glucose readings (January and June 2024), an Encounter
    in February 2024 and a Condition from 2019; Bruno one reading. An Organization is in
    no patient's compartment."""
    ids: dict[str, str] = {}

    def create(name: str, body: dict) -> None:
        response = client.post(f"/{body['resourceType']}", json=body)
        assert response.status_code == 201, response.text
        ids[name] = response.json()["id"]

    create("anne", {"resourceType": "Patient", "name": [{"family": "Anne"}]})
    create("bruno", {"resourceType": "Patient", "name": [{"family": "Bruno"}]})
    create("organization", {"resourceType": "Organization", "name": "CHU"})
    anne = ids["anne"]
    create("january", observation(anne, "2024-01-10T08:00:00+01:00"))
    create("june", observation(anne, "2024-06-10T08:00:00+02:00"))
    create("bruno_reading", observation(ids["bruno"], "2024-03-01T08:00:00+01:00"))
    create(
        "encounter",
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": f"Patient/{anne}"},
            "period": {"start": "2024-02-05T09:00:00+01:00", "end": "2024-02-05T10:00:00+01:00"},
        },
    )
    create(
        "condition",
        {
            "resourceType": "Condition",
            "subject": {"reference": f"Patient/{anne}"},
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11"}]},
            "onsetDateTime": "2019-04-01",
        },
    )
    return ids


def pages(client: httpx.Client, path: str, **params: str) -> Iterator[dict]:
    response = client.get(path, params=params)
    while True:
        assert response.status_code == 200, response.text
        bundle = response.json()
        yield bundle
        following = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not following:
            return
        response = client.get(following[0])


def matches(client: httpx.Client, path: str, **params: str) -> list[dict]:
    return [
        entry["resource"]
        for bundle in pages(client, path, **params)
        for entry in bundle["entry"]
        if entry["search"]["mode"] == "match"
    ]


def ids_of(resources: list[dict]) -> set[str]:
    return {resource["id"] for resource in resources}


def test_instance_everything_without_parameters(client: httpx.Client, story: dict) -> None:
    everything = ids_of(matches(client, f"/Patient/{story['anne']}/$everything"))
    assert everything == {story[k] for k in ("anne", "january", "june", "encounter", "condition")}


def test_start_and_end_bound_the_care_dates(client: httpx.Client, story: dict) -> None:
    """Failed before: start and end were dropped silently and everything came back."""
    found = ids_of(
        matches(
            client, f"/Patient/{story['anne']}/$everything", start="2024-02-01", end="2024-12-31"
        )
    )
    # the Patient has no care date: always in; January and the 2019 Condition are out
    assert found == {story["anne"], story["june"], story["encounter"]}
    before = ids_of(matches(client, f"/Patient/{story['anne']}/$everything", end="2024-01-31"))
    assert before == {story["anne"], story["january"], story["condition"]}


def test_since_keeps_what_changed_after_an_instant(client: httpx.Client, story: dict) -> None:
    """Failed before: _since was dropped silently."""
    anne = story["anne"]
    body = observation(anne, "2024-06-10T08:00:00+02:00")
    body["id"] = story["june"]
    body["status"] = "amended"
    updated = client.put(f"/Observation/{story['june']}", json=body)
    assert updated.status_code == 200, updated.text
    since = updated.json()["meta"]["lastUpdated"]
    everything = matches(client, f"/Patient/{anne}/$everything")
    expected = {r["id"] for r in everything if r["meta"]["lastUpdated"] >= since}
    found = ids_of(matches(client, f"/Patient/{anne}/$everything", _since=since))
    assert story["june"] in found
    assert found == expected
    assert len(found) < len(everything)


def test_type_and_count_page_with_next_links(client: httpx.Client, story: dict) -> None:
    path = f"/Patient/{story['anne']}/$everything"
    observations = ids_of(matches(client, path, _type="Observation"))
    assert observations == {story["january"], story["june"]}
    bundles = list(pages(client, path, _count="2"))
    assert len(bundles) == 3
    assert all(len(b["entry"]) <= 2 for b in bundles)
    first_next = next(x["url"] for x in bundles[0]["link"] if x["relation"] == "next")
    assert "_count=2" in first_next
    paged = [e["resource"]["id"] for b in bundles for e in b["entry"]]
    assert sorted(paged) == sorted(ids_of(matches(client, path)))


def test_parameters_everything_does_not_know_are_noted_or_refused(
    client: httpx.Client, story: dict
) -> None:
    """Failed before: `foo=bar` and `_type=Medication` were dropped without a word, and
    strict handling accepted them."""
    path = f"/Patient/{story['anne']}/$everything"
    bundle = client.get(path, params={"foo": "bar", "_type": "Observation,Medication"}).json()
    outcomes = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert len(outcomes) == 1
    text = " ".join(issue["diagnostics"] for issue in outcomes[0]["issue"])
    assert "foo" in text and "Medication" in text
    strict = client.get(path, params={"foo": "bar"}, headers={"Prefer": "handling=strict"})
    assert_outcome(strict, 400)


def test_type_level_everything_covers_every_patient(client: httpx.Client, story: dict) -> None:
    """Failed before: GET /Patient/$everything was read as Patient/$everything, a 404."""
    found = matches(client, "/Patient/$everything", _count="3")
    assert ids_of(found) == {story[k] for k in story if k != "organization"}
    assert len(found) == len(ids_of(found))  # no resource twice across pages
    observations = ids_of(matches(client, "/Patient/$everything", _type="Observation"))
    assert observations == {story["january"], story["june"], story["bruno_reading"]}
    bounded = ids_of(
        matches(client, "/Patient/$everything", start="2024-02-15", _type="Observation")
    )
    assert bounded == {story["june"], story["bruno_reading"]}


def test_type_level_everything_under_a_patient_context_token(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A patient-context token (real keys, a closed server) gets its own patient's
    compartment from `GET /Patient/$everything`, nothing of another patient's."""
    from tests.auth_tokens import TestIssuer, bearer
    from tests.conftest import RunningServer, database_url

    issuer = TestIssuer.create(tmp_path_factory.mktemp("issuer"))
    settings = issuer.settings(db_url=database_url(tmp_path_factory.mktemp("db")))
    with RunningServer(settings) as server:
        admin = bearer(issuer.token(server.url, "system/*.cruds"))
        with httpx.Client(base_url=server.url, headers=admin, timeout=60) as http:
            ids = {}
            for name in ("anne", "bruno"):
                body = {"resourceType": "Patient", "name": [{"family": name}]}
                ids[name] = http.post("/Patient", json=body).json()["id"]
                reading = observation(ids[name], "2024-05-01T08:00:00+02:00")
                ids[f"{name}_reading"] = http.post("/Observation", json=reading).json()["id"]
            everyone = ids_of(matches(http, "/Patient/$everything"))
            assert everyone == set(ids.values())
        token = issuer.token(server.url, "patient/*.rs", patient=ids["anne"])
        with httpx.Client(base_url=server.url, headers=bearer(token), timeout=60) as http:
            own = ids_of(matches(http, "/Patient/$everything"))
            assert own == {ids["anne"], ids["anne_reading"]}
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert http.get("/Patient/$everything").status_code == 401
