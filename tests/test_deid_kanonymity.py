"""k-anonymity enforcement on released quasi-identifiers, in extracts and in every answer
of the facade; l-diversity of diagnoses."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fhir_server.deid.engine import Deidentifier
from fhir_server.deid.kanonymity import enforce, l_diversity, quasi_identifiers
from fhir_server.deid.keys import RecipientKeys
from fhir_server.deid.rules import load_rules
from fhir_server.ingest.loader import Loader
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage import open_storage
from tests.conftest import RunningServer, database_url
from tests.deid_data import transaction, write_recipients

SECRET = "kanon-test-master-secret-000000"

QUASI = ("birthYear", "gender", "postalPrefix")


def patient(year: str, gender: str, postal: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "birthDate": year,
        "gender": gender,
        "address": [{"postalCode": postal, "country": "FR"}],
    }


def released_classes(patients: dict[str, dict[str, Any]], suppressed: list[str]) -> Counter:
    return Counter(
        tuple(quasi_identifiers(p)[q] for q in QUASI)
        for pid, p in patients.items()
        if pid not in suppressed
    )


def test_large_classes_are_left_alone() -> None:
    patients = {f"p{n}": patient("1970", "male", "75") for n in range(6)}
    report = enforce(patients, 5, QUASI)
    assert report.generalized == {} and report.suppressed == []
    assert report.smallest_class == 6
    assert all(p["address"][0]["postalCode"] == "75" for p in patients.values())


def test_rare_records_lose_postal_prefix_then_birth_year_then_are_suppressed() -> None:
    patients = {f"a{n}": patient("1970", "male", "75") for n in range(5)}
    # Five 1980 women spread over five départements: together once the prefix goes.
    patients |= {f"b{n}": patient("1980", "female", f"{10 + n}") for n in range(5)}
    # Two women of other years: only alike once the year goes too; still < 5 -> suppressed.
    patients |= {"c0": patient("1950", "female", "13"), "c1": patient("1990", "female", "69")}
    report = enforce(patients, 5, QUASI)
    assert report.generalized == {"postalPrefix": 7, "birthYear": 2}
    assert sorted(report.suppressed) == ["c0", "c1"]
    assert all(patients[f"b{n}"]["address"] == [{"country": "FR"}] for n in range(5))
    assert patients["b0"]["birthDate"] == "1980"
    assert "birthDate" not in patients["c0"]
    classes = released_classes(patients, report.suppressed)
    assert min(classes.values()) >= 5
    assert report.to_json()["released"] == 10


def test_configured_quasi_identifiers_only() -> None:
    patients = {f"p{n}": patient(str(1950 + n), "male", f"{n:02d}") for n in range(5)}
    report = enforce(patients, 5, ("gender",))
    assert report.suppressed == [] and report.generalized == {}


def test_l_diversity_counts_distinct_diagnoses_per_class() -> None:
    classes = {"a": ("1970",), "b": ("1970",), "c": ("1980",), "d": ("1980",)}
    report = l_diversity(classes, {"a": "E11", "b": "E10", "c": "E11", "d": "E11"})
    assert report == {"classes": 2, "smallestL": 1, "classesWithOneValue": 1}


# -- the facade: k-anonymity on every answer ------------------------------------------------

KEY = "kanon-key"


def population() -> list[dict[str, Any]]:
    """Ten women born in 1970 in the Rhône, each with a reading, and one man born in 1985
    in Marseille (a unique birth year, sex and postal prefix), with a reading and a
    condition."""
    resources: list[dict[str, Any]] = []

    def person(pid: str, year: str, gender: str, postal: str) -> None:
        resources.append(
            {
                "resourceType": "Patient",
                "id": pid,
                "gender": gender,
                "birthDate": f"{year}-06-15",
                "address": [{"postalCode": postal, "country": "FR"}],
            }
        )
        resources.append(
            {
                "resourceType": "Observation",
                "id": f"{pid}-glucose",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
                "subject": {"reference": f"Patient/{pid}"},
                "effectiveDateTime": "2024-03-05T08:00:00+01:00",
                "valueQuantity": {
                    "value": 120,
                    "unit": "mg/dL",
                    "system": "http://unitsofmeasure.org",
                    "code": "mg/dL",
                },
            }
        )

    for n in range(10):
        person(f"w{n}", "1970", "female", f"6900{n}")
    person("unique", "1985", "male", "13008")
    resources.append(
        {
            "resourceType": "Condition",
            "id": "unique-diabetes",
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E10.9"}]},
            "subject": {"reference": "Patient/unique"},
        }
    )
    return resources


@pytest.fixture(scope="module")
def facade(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, str]]:
    folder = tmp_path_factory.mktemp("kanon")
    url = database_url(folder)
    service = FhirService(open_storage(url), Settings(db_url=url))
    (folder / "bundle.json").write_text(json.dumps(transaction(population())))
    assert not Loader(service).load_files([folder / "bundle.json"]).failed
    service.storage.close()
    recipients = write_recipients(folder / "recipients.json", {"k5": KEY})
    settings = Settings(
        db_url=url, deid_secret=SECRET, deid_recipients=str(recipients), insecure_dev=True
    )
    unique = Deidentifier(RecipientKeys.derive(SECRET.encode(), "k5"), load_rules())
    pseudonym = unique.pseudonyms.pseudonym("Patient", "unique")
    with RunningServer(settings) as running, httpx.Client(base_url=running.url) as http:
        yield http, pseudonym


def test_the_facade_never_serves_a_unique_combination(
    facade: tuple[httpx.Client, str],
) -> None:
    http, unique = facade
    auth = {"Authorization": f"Bearer {KEY}"}
    for _ in range(3):  # the same answer on every request
        response = http.get("/deid/Patient?_count=50", headers=auth)
        assert response.status_code == 200
        assert response.headers["X-Diatabase-K-Anonymity"] == (
            "k=5; quasi-identifiers=birthYear,gender,postalPrefix; generalized=0; suppressed=1"
        )
        patients = [e["resource"] for e in response.json()["entry"]]
        assert len(patients) == 10 and unique not in {p["id"] for p in patients}
        combinations = {
            (p.get("birthDate"), p["gender"], str(p.get("address", ""))) for p in patients
        }
        assert all(gender == "female" for _, gender, _ in combinations)
        assert not [p for p in patients if "1985" in json.dumps(p)]
        # The ten women share 1970, female and "69": their class is left alone.
        assert {p["address"][0]["postalCode"] for p in patients} == {"69"}
        observations = all_of(http, "/deid/Observation?code=2339-0&_count=50", auth)
        assert len(observations) == 10
        assert unique not in json.dumps(observations)
    for url in (
        f"/deid/Patient/{unique}",
        f"/deid/Patient/{unique}/$everything",
    ):
        assert http.get(url, headers=auth).status_code == 404
    assert all_of(http, f"/deid/Observation?subject=Patient/{unique}", auth) == []
    assert all_of(http, "/deid/Condition", auth) == []
    assert all_of(http, "/deid/Patient?birthdate=1985", auth) == []
    assert all_of(http, "/deid/Patient?gender=male", auth) == []
    statement = http.get("/deid/metadata").json()
    assert "k-anonymous" in statement["rest"][0]["documentation"]


def all_of(http: httpx.Client, url: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    response = http.get(url, headers=headers)
    assert response.status_code == 200, response.text
    return [
        e["resource"]
        for e in response.json().get("entry", [])
        if e.get("search", {}).get("mode") == "match"
    ]
