"""Searches on the /deid/ facade answer on the de-identified view, over HTTP (uvicorn +
SQLite): the recipient's pseudonymous identifier is searchable and original identifiers
find nothing, names find nothing, dates match their shifted values, paging through a
post-filter neither skips nor repeats, `_total` counts the view, `_sort` on shifted data
is refused.

Data: synthetic French patients (tests/deid_data.py: INS, NIR, IPP, names, addresses,
CGM readings on 2024-03-05), no Synthea bundle: the view rules are what is under test.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from fhir_server.deid.engine import PSEUDONYM_SYSTEM, Deidentifier
from fhir_server.deid.keys import RecipientKeys
from fhir_server.deid.rules import load_rules
from fhir_server.settings import Settings
from tests.conftest import RunningServer, database_url
from tests.deid_data import french_patients, transaction

SECRET = "view-search-test-master-secret-0123"
KEY = "key-view-alpha"
AUTH = {"Authorization": f"Bearer {KEY}"}
PATIENTS, READINGS = 8, 12
CGM = "99504-3"
SYSTEM = PSEUDONYM_SYSTEM + "alpha"


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    folder = tmp_path_factory.mktemp("deid-view")
    # k = 1: these tests are about search semantics, not k-anonymity (test_deid_kanonymity).
    recipients = [
        {
            "id": "alpha",
            "api_key_sha256": hashlib.sha256(KEY.encode()).hexdigest(),
            "parameters": {"kAnonymity": {"k": 1}},
        }
    ]
    (folder / "recipients.json").write_text(json.dumps(recipients))
    settings = Settings(
        db_url=database_url(folder),
        deid_secret=SECRET,
        deid_recipients=str(folder / "recipients.json"),
        deid_export_dir=str(folder / "exports"),
        insecure_dev=True,
    )
    with (
        RunningServer(settings) as running,
        httpx.Client(base_url=running.url, timeout=60) as client,
    ):
        bundle = transaction(french_patients(count=PATIENTS, readings=READINGS))
        assert client.post("/", json=bundle).status_code == 200
        yield client


@pytest.fixture(scope="module")
def engine() -> Deidentifier:
    """The recipient's engine, rebuilt here to know each patient's shift (the test plays
    the data owner, who holds the secret)."""
    return Deidentifier(RecipientKeys.derive(SECRET.encode(), "alpha"), load_rules())


def pages(http: httpx.Client, url: str, headers: dict[str, str] = AUTH) -> list[dict[str, Any]]:
    """Every page of a search (the Bundles), following next links."""
    bundles = []
    while url:
        response = http.get(url, headers=headers)
        assert response.status_code == 200, response.text[:300]
        bundles.append(response.json())
        url = next((x["url"] for x in bundles[-1]["link"] if x["relation"] == "next"), "")
        assert len(bundles) < 500
    return bundles


def matches(bundles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["resource"] for b in bundles for e in b.get("entry", [])
            if e["search"]["mode"] == "match"]


def found(http: httpx.Client, url: str) -> list[dict[str, Any]]:
    return matches(pages(http, url))


def ids(resources: list[dict[str, Any]]) -> list[str]:
    return sorted(r["id"] for r in resources)


@pytest.fixture(scope="module")
def real_patients(http: httpx.Client) -> list[dict[str, Any]]:
    return found_clinical(http, "/Patient?_count=100")


def found_clinical(http: httpx.Client, url: str) -> list[dict[str, Any]]:
    return matches(pages(http, url, {}))


@pytest.fixture(scope="module")
def view_readings(http: httpx.Client) -> list[dict[str, Any]]:
    readings = found(http, f"/deid/Observation?code={CGM}&_count=500")
    assert len(readings) == PATIENTS * READINGS
    return readings


def pseudonym_of(engine: Deidentifier, rtype: str, real_id: str) -> str:
    return engine.pseudonyms.pseudonym(rtype, real_id)


# -- identifiers ----------------------------------------------------------------------------


def test_the_pseudonymous_identifier_finds_its_patient(http: httpx.Client) -> None:
    patients = found(http, "/deid/Patient?_count=100")
    assert len(patients) == PATIENTS
    for patient in patients:
        (identifier,) = patient["identifier"]
        assert identifier == {"system": SYSTEM, "value": patient["id"]}
        for value in (f"{SYSTEM}|{patient['id']}", patient["id"]):
            hits = found(http, f"/deid/Patient?identifier={quote(value, safe='')}")
            assert ids(hits) == [patient["id"]]
    assert found(http, f"/deid/Patient?identifier={quote(SYSTEM + '|', safe='')}&_count=100")
    assert len(found(http, f"/deid/Patient?identifier={quote(SYSTEM, safe='')}|")) == PATIENTS


def test_original_identifiers_find_nothing(
    http: httpx.Client, real_patients: list[dict[str, Any]]
) -> None:
    """The oracle that must stay closed: INS, NIR, IPP that exist in the stored data answer
    exactly like identifiers that exist nowhere."""
    originals = [(i["system"], i["value"]) for p in real_patients for i in p["identifier"]]
    assert len(originals) == 3 * PATIENTS
    assert any(system == "urn:oid:1.2.250.1.213.1.4.8" for system, _ in originals)
    made_up = [("urn:oid:1.2.250.1.213.1.4.8", "1840675123456"), ("urn:oid:1.2.3", "IPP999")]
    answers = set()
    for system, value in originals[:9] + made_up:
        for query in (
            f"/deid/Patient?identifier={quote(system + '|' + value, safe='')}&_total=accurate",
            f"/deid/Patient?identifier={quote(value, safe='')}&_total=accurate",
            f"/deid/Observation?patient.identifier={quote(value, safe='')}&_total=accurate",
            f"/deid/Observation?subject:identifier={quote(system + '|' + value, safe='')}"
            "&_total=accurate",
        ):
            (bundle,) = pages(http, query)
            links = sorted(link["relation"] for link in bundle["link"])
            answers.add((bundle["total"], len(bundle.get("entry", [])), tuple(links)))
    assert answers == {(0, 0, ("first", "self"))}
    # The clinical API (same server, same data) does find them: the facade is what hides.
    system, value = originals[0]
    assert found_clinical(http, f"/Patient?identifier={quote(system + '|' + value, safe='')}")


# -- strings --------------------------------------------------------------------------------


def test_name_searches_do_not_depend_on_real_names(
    http: httpx.Client, real_patients: list[dict[str, Any]]
) -> None:
    family = real_patients[0]["name"][0]["family"]
    given = real_patients[0]["name"][0]["given"][0]
    assert found_clinical(http, f"/Patient?family={quote(family)}")
    answers = []
    for query in (
        f"family={quote(family)}",
        "family=Zyxwvut",
        f"name={quote(given)}",
        f"name:exact={quote(given)}",
        f"name:contains={quote(family[2:5])}",
        "address-city=Lyon",
        "address=Lilas",
        f"phone={quote(real_patients[0]['telecom'][0]['value'])}",
        "email=exemple.fr",
    ):
        (bundle,) = pages(http, f"/deid/Patient?{query}&_total=accurate")
        answers.append((bundle["total"], bundle.get("entry", [])))
    assert answers == [(0, [])] * len(answers)
    # The view has no name: :missing=true is every patient, :missing=false none.
    assert len(found(http, "/deid/Patient?name:missing=true&_count=100")) == PATIENTS
    assert found(http, "/deid/Patient?family:missing=false") == []


def test_strings_kept_or_generalized_by_the_view_are_searched_as_seen(
    http: httpx.Client, real_patients: list[dict[str, Any]]
) -> None:
    lyon = [p for p in real_patients if p["address"][0]["postalCode"] == "69003"]
    assert lyon
    # The view keeps the country and the first two digits of the postal code.
    assert len(found(http, "/deid/Patient?address-country=fr&_count=100")) == PATIENTS
    by_prefix = found(http, "/deid/Patient?address-postalcode=69&_count=100")
    assert len(by_prefix) == len(lyon)
    assert all(p["address"][0]["postalCode"] == "69" for p in by_prefix)
    assert found(http, "/deid/Patient?address-postalcode=69003") == []
    assert found(http, "/deid/Patient?address-postalcode:exact=69&_count=100") == by_prefix


# -- dates ----------------------------------------------------------------------------------


def shifted_day(engine: Deidentifier, real_patient_id: str) -> date:
    return date(2024, 3, 5) + timedelta(days=engine.shift_days(real_patient_id))


def test_date_searches_match_shifted_dates(
    http: httpx.Client,
    engine: Deidentifier,
    real_patients: list[dict[str, Any]],
    view_readings: list[dict[str, Any]],
) -> None:
    patient = real_patients[0]
    pseudonym = pseudonym_of(engine, "Patient", patient["id"])
    day = shifted_day(engine, patient["id"])
    assert day != date(2024, 3, 5)
    subject = f"subject=Patient/{pseudonym}&code={CGM}"
    on_day = found(http, f"/deid/Observation?{subject}&date={day}&_count=100")
    assert len(on_day) == READINGS
    assert all(r["effectiveDateTime"].startswith(day.isoformat()) for r in on_day)
    # The real date finds none of them: the stored dates are not what is searched.
    assert found(http, f"/deid/Observation?{subject}&date=2024-03-05") == []
    assert found(http, f"/deid/Observation?{subject}&date=ne{day}") == []
    assert len(found(http, f"/deid/Observation?{subject}&date=sa{day - timedelta(1)}")) == (
        READINGS
    )
    assert found(http, f"/deid/Observation?{subject}&date=eb{day}") == []

    # Across patients: `ge` on a shifted day finds the readings whose SHIFTED date is on
    # or after it. Every real date is 2024-03-05, so on real dates the answer would be all
    # or nothing; on the view it is the patients shifted late enough.
    cut = sorted(shifted_day(engine, p["id"]) for p in real_patients)[PATIENTS // 2]
    expected = ids([r for r in view_readings if r["effectiveDateTime"][:10] >= cut.isoformat()])
    assert 0 < len(expected) < len(view_readings)
    got = ids(found(http, f"/deid/Observation?code={CGM}&date=ge{cut}&_count=500"))
    assert got == expected
    before = ids(found(http, f"/deid/Observation?code={CGM}&date=lt{cut}&_count=500"))
    assert sorted(before + got) == ids(view_readings)


def test_birthdate_is_searched_as_the_year_the_view_shows(
    http: httpx.Client, engine: Deidentifier, real_patients: list[dict[str, Any]]
) -> None:
    patient = real_patients[0]
    year = patient["birthDate"][:4]
    pseudonym = pseudonym_of(engine, "Patient", patient["id"])
    assert pseudonym in ids(found(http, f"/deid/Patient?birthdate={year}&_count=100"))
    assert found(http, f"/deid/Patient?birthdate={patient['birthDate']}") == []
    same_year = [p for p in real_patients if p["birthDate"][:4] == year]
    assert len(found(http, f"/deid/Patient?birthdate={year}&_count=100")) == len(same_year)


def test_last_updated_is_not_in_the_view(http: httpx.Client) -> None:
    assert found(http, "/deid/Observation?_lastUpdated=gt2000-01-01") == []
    assert len(found(http, "/deid/Patient?_lastUpdated:missing=true&_count=100")) == PATIENTS


# -- paging, total, includes ----------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 4, 7])
def test_paging_through_a_post_filter_skips_and_repeats_nothing(
    http: httpx.Client,
    engine: Deidentifier,
    real_patients: list[dict[str, Any]],
    view_readings: list[dict[str, Any]],
    count: int,
) -> None:
    # The readings of the patients whose shifted day is late: blocks of readings spread
    # through the stored order, with non-matching candidates between them.
    days = sorted(shifted_day(engine, p["id"]) for p in real_patients)
    cut = days[len(days) // 2]
    expected = ids([r for r in view_readings if r["effectiveDateTime"][:10] >= cut.isoformat()])
    assert 0 < len(expected) < len(view_readings)
    bundles = pages(http, f"/deid/Observation?code={CGM}&date=ge{cut}&_count={count}")
    got = [r["id"] for r in matches(bundles)]
    assert len(got) == len(set(got))
    assert sorted(got) == expected
    assert all(len(matches([b])) <= count for b in bundles)
    assert all("previous" not in {x["relation"] for x in b["link"]} for b in bundles)
    if count == 1:
        # 10 underlying reads of one row each per request: the non-matching stretches
        # (READINGS rows per patient) give empty pages that still link on.
        assert any(not b.get("entry") for b in bundles[:-1])


def test_total_counts_the_view(
    http: httpx.Client, engine: Deidentifier, real_patients: list[dict[str, Any]]
) -> None:
    day = shifted_day(engine, real_patients[0]["id"])
    same_day = sum(1 for p in real_patients if shifted_day(engine, p["id"]) == day)
    url = f"/deid/Observation?code={CGM}&date={day}&_count=3&_total=accurate"
    (first, *_) = pages(http, url)
    assert first["total"] == same_day * READINGS
    counted = http.get(f"/deid/Observation?date={day}&_summary=count", headers=AUTH).json()
    assert counted["total"] == same_day * READINGS and "entry" not in counted
    # Without _total: given when the whole answer is on the first page.
    small = http.get(f"/deid/Observation?date={day}&_count=500", headers=AUTH).json()
    assert small["total"] == same_day * READINGS


def test_includes_follow_only_the_kept_matches(
    http: httpx.Client, engine: Deidentifier, real_patients: list[dict[str, Any]]
) -> None:
    patient = real_patients[0]
    day = shifted_day(engine, patient["id"])
    others = {p["id"] for p in real_patients if shifted_day(engine, p["id"]) == day}
    bundle = http.get(
        f"/deid/Observation?date={day}&_include=Observation:subject&_count=500", headers=AUTH
    ).json()
    included = [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "include"]
    assert ids(included) == sorted(pseudonym_of(engine, "Patient", i) for i in others)


def test_includes_of_a_full_page_of_view_matches(
    http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fhir_server.deid import facade

    # Includes are looked up by id in batches (SQLite caps an OR chain near 1000 terms):
    # small batches here, so that a page spans several of them.
    monkeypatch.setattr(facade, "INCLUDE_BATCH", 7)
    bundle = http.get(
        f"/deid/Observation?code={CGM}&date=ge2000&_include=Observation:subject&_count=1000",
        headers=AUTH,
    ).json()
    assert len(matches([bundle])) == PATIENTS * READINGS
    included = [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "include"]
    assert len({r["id"] for r in included}) == len(included) == PATIENTS


# -- chains and _has --------------------------------------------------------------------------


def test_chains_and_has_on_view_parameters(
    http: httpx.Client, engine: Deidentifier, real_patients: list[dict[str, Any]]
) -> None:
    patient = real_patients[1]
    pseudonym = pseudonym_of(engine, "Patient", patient["id"])
    identifier = quote(f"{SYSTEM}|{pseudonym}", safe="")
    chained = found(http, f"/deid/Observation?code={CGM}&patient.identifier={identifier}")
    assert len(chained) == READINGS
    assert {r["subject"]["reference"] for r in chained} == {f"Patient/{pseudonym}"}
    family = quote(patient["name"][0]["family"])
    assert found(http, f"/deid/Observation?subject:Patient.family={family}") == []
    day = shifted_day(engine, patient["id"])
    same_day = sorted(
        pseudonym_of(engine, "Patient", p["id"])
        for p in real_patients
        if shifted_day(engine, p["id"]) == day
    )
    has = found(http, f"/deid/Patient?_has:Observation:patient:date={day}&_count=100")
    assert ids(has) == same_day
    assert found(http, "/deid/Patient?_has:Observation:patient:date=2024-03-05") == []


# -- what stays refused, and what the CapabilityStatement says --------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "Observation?_sort=date",
        "Observation?_sort=-_lastUpdated",
        "Patient?_sort=birthdate",
        "Patient?_sort=family",
        "Patient?_sort=_id",
        "Observation?_sort=subject",
        "Observation?_content=Dubois",
        "Observation?_text=Dubois",
    ],
)
def test_sorting_on_view_data_and_full_text_are_refused(http: httpx.Client, query: str) -> None:
    response = http.get(f"/deid/{query}", headers=AUTH)
    assert response.status_code == 400, response.text[:200]
    issue = response.json()["issue"][0]
    assert issue["code"] == "not-supported"
    if "_sort" in query:
        assert "reveal" in issue["diagnostics"]


def test_security_label_added_by_the_view_is_searchable(http: httpx.Client) -> None:
    label = quote("http://terminology.hl7.org/CodeSystem/v3-ObservationValue|PSEUDED", safe="")
    assert len(found(http, f"/deid/Patient?_security={label}&_count=100")) == PATIENTS
    assert found_clinical(http, f"/Patient?_security={label}") == []


def test_capability_statement_lists_view_parameters(http: httpx.Client) -> None:
    statement = http.get("/deid/metadata").json()
    patient = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    params = {p["name"]: p for p in patient["searchParam"]}
    for name in ("name", "identifier", "birthdate", "_lastUpdated", "telecom"):
        assert "de-identified" in params[name]["documentation"], name
    assert "documentation" not in params["gender"]
    assert not {"_text", "_content"} & set(params)


def test_full_text_is_answered_by_the_clinical_api_and_refused_by_the_facade(
    http: httpx.Client,
) -> None:
    clinical = http.get("/Observation?_content=Dubois&_count=1").json()
    assert all(e["search"]["mode"] != "outcome" for e in clinical.get("entry", []))
    # the full-text index holds the stored, identifying text: not for research
    assert http.get("/deid/Observation?_content=Dubois", headers=AUTH).status_code == 400


def test_an_accurate_total_too_costly_on_the_view_is_left_out_and_said_so(
    http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fhir_server.deid import facade

    # The server runs in this process: a lower scan bound stands for a large database.
    monkeypatch.setattr(facade, "VIEW_TOTAL_SCAN", 10)
    bundle = http.get(
        f"/deid/Observation?code={CGM}&date=ge2000&_total=accurate&_count=5", headers=AUTH
    ).json()
    assert "total" not in bundle
    outcome = bundle["entry"][-1]["resource"]
    assert "_total" in outcome["issue"][0]["diagnostics"]
    assert len(matches([bundle])) == 5
