"""The shipped diabetes indicators through `Measure/$evaluate-measure` on a real server,
against counts computed here, independently, on a synthetic population whose answers are
known by construction: populations, proportion scores, stratifiers (age band, sex,
département, source, period), subject lists; and for a research recipient the same
report over the facade with every cell of 1 to 10 patients withheld and said so."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fhir_server.analytics.indicators import shipped_indicators
from fhir_server.analytics.materialize import Materializer, StoreSource
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage import open_storage
from tests.auth_tokens import TestIssuer, bearer
from tests.conftest import RunningServer
from tests.deid_data import write_recipients

KEY = "measures-recipient-key-1"
PERIOD = {"periodStart": "2024-01-01", "periodEnd": "2024-12-31"}
AGES = (10, 30, 50, 65, 80)  # one per band at the period's end
BANDS = ("0-17", "18-39", "40-59", "60-74", "75+")
POSTAL = ("75011", "13001", "69003", "20090", "97400")
DEPARTEMENTS = ("75", "13", "69", "2A", "974")
N = 90


def _patient(i: int) -> dict[str, Any]:
    return {
        "resourceType": "Patient", "id": f"m-{i}",
        "meta": {"source": "urn:hospital:a" if i % 3 else "urn:practice:b"},
        "gender": "female" if i % 2 else "male",
        "birthDate": f"{2024 - AGES[i % 5]}-06-15",
        "address": [{"postalCode": POSTAL[(i // 5) % 5], "country": "FR"}],
    }  # fmt: skip


def _diabetic(i: int) -> bool:
    return i % 6 != 5


def _hba1c_count(i: int) -> int:
    return i % 4


def _last_percent(i: int) -> float:
    return 7.1 + (i % 7) * 0.5


def _cgm(i: int) -> bool:
    return i % 3 == 0


def _in_range_share(i: int) -> float:
    return 0.8 if i % 2 == 0 else 0.5


def _observation(i: int, rid: str, code: str, when: str, value: float, unit: str) -> dict:
    return {
        "resourceType": "Observation", "id": rid, "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/m-{i}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org",
                          "code": unit},
    }  # fmt: skip


def population() -> list[dict[str, Any]]:
    resources: list[dict[str, Any]] = []
    for i in range(N):
        resources.append(_patient(i))
        if _diabetic(i):
            resources.append({
                "resourceType": "Condition", "id": f"c-{i}",
                "clinicalStatus": {"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "active"}]},
                "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10",
                                     "code": "E11.9" if i % 2 else "E10.9"}]},
                "subject": {"reference": f"Patient/m-{i}"},
            })  # fmt: skip
        # one HbA1c the year before: outside the period
        resources.append(_observation(i, f"h-{i}-old", "4548-4", "2023-06-01T09:00:00+02:00",
                                      9.9, "%"))  # fmt: skip
        count = _hba1c_count(i)
        for k in range(count):
            month = (2, 5, 9)[k]
            percent = _last_percent(i) if k == count - 1 else 6.5
            if i % 10 == 0:  # IFCC units for some
                value, code, unit = round((percent - 2.15) * 10.929, 2), "59261-8", "mmol/mol"
            else:
                value, code, unit = percent, "4548-4", "%"
            when = f"2024-{month:02d}-10T09:00:00+01:00"
            resources.append(_observation(i, f"h-{i}-{k}", code, when, value, unit))
        if _cgm(i):
            in_range = round(20 * _in_range_share(i))
            for k in range(20):
                value = 120 if k < in_range else 250
                when = f"2024-03-01T{8 + k // 4:02d}:{(k % 4) * 15:02d}:00+01:00"
                resources.append(_observation(i, f"g-{i}-{k}", "99504-3", when, value, "mg/dL"))
    return resources


def _expected_sets() -> dict[str, dict[str, set[str]]]:
    """The populations by construction (no code under test)."""
    ids = [f"m-{i}" for i in range(N)]
    diabetic = {ids[i] for i in range(N) if _diabetic(i)}
    measured = {ids[i] for i in range(N) if _hba1c_count(i) >= 1}
    twice = {ids[i] for i in range(N) if _hba1c_count(i) >= 2}
    above = {ids[i] for i in range(N) if _hba1c_count(i) >= 1 and _last_percent(i) > 8}
    wearers = {ids[i] for i in range(N) if _cgm(i)}
    in_range = {ids[i] for i in range(N) if _cgm(i) and _in_range_share(i) > 0.7}
    return {
        "hba1c-twice": {"initial-population": diabetic, "denominator": diabetic,
                        "numerator": twice & diabetic},
        "hba1c-above-8": {"initial-population": measured, "denominator": measured,
                          "numerator": above},
        "tir-above-70": {"initial-population": wearers, "denominator": wearers,
                         "numerator": in_range},
        "no-hba1c": {"initial-population": diabetic, "denominator": diabetic,
                     "numerator": diabetic, "numerator-exclusion": diabetic & measured},
    }  # fmt: skip


def _index(i: str) -> int:
    return int(i.removeprefix("m-"))


STRATA = {
    "age-band": lambda pid: BANDS[_index(pid) % 5],
    "sex": lambda pid: "female" if _index(pid) % 2 else "male",
    "departement": lambda pid: DEPARTEMENTS[(_index(pid) // 5) % 5],
    "source": lambda pid: "urn:hospital:a" if _index(pid) % 3 else "urn:practice:b",
}


def _counts(report: dict) -> dict[str, int | None]:
    return {
        p["code"]["coding"][0]["code"]: p.get("count") for p in report["group"][0]["population"]
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("measures")
    url = f"sqlite:///{folder / 'clinical.db'}"
    service = FhirService(open_storage(url), Settings(db_url=url))
    for resource in population():
        service.resources.update(resource["resourceType"], resource["id"], resource)
    views = folder / "views"
    materializer = Materializer(views, StoreSource(service.storage))
    for resource in shipped_indicators():
        if resource["resourceType"] == "ViewDefinition":
            materializer.materialize(resource)
    materializer.close()
    service.storage.close()
    write_recipients(folder / "recipients.json", {"research": KEY})
    issuer = TestIssuer.create(folder)
    settings = issuer.settings(
        db_url=url, views_dir=str(views),
        deid_secret="measures-test-master-secret-0123456789",
        deid_recipients=str(folder / "recipients.json"),
    )  # fmt: skip
    with RunningServer(settings) as server:
        admin = issuer.token(server.url, "system/*.rs")
        with httpx.Client(base_url=server.url, timeout=120, headers=bearer(admin)) as http:
            yield {"http": http, "server": server, "issuer": issuer}


@pytest.mark.parametrize("measure", ["hba1c-twice", "hba1c-above-8", "tir-above-70", "no-hba1c"])
def test_indicator_counts_and_score(world: dict, measure: str) -> None:
    answer = world["http"].get(f"/Measure/{measure}/$evaluate-measure", params=PERIOD)
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["resourceType"] == "MeasureReport" and report["type"] == "summary"
    assert report["period"] == {"start": "2024-01-01", "end": "2024-12-31"}
    expected = _expected_sets()[measure]
    assert _counts(report) == {code: len(s) for code, s in expected.items()}
    numerator = len(expected["numerator"]) - len(expected.get("numerator-exclusion", ()))
    assert report["group"][0]["measureScore"]["value"] == pytest.approx(
        numerator / len(expected["denominator"]),
        abs=1e-6,  # scores have 6 decimals
    )


def test_stratifiers_split_every_population(world: dict) -> None:
    report = world["http"].get("/Measure/hba1c-twice/$evaluate-measure", params=PERIOD).json()
    expected = _expected_sets()["hba1c-twice"]
    stratifiers = {s["code"][0]["coding"][0]["code"]: s for s in report["group"][0]["stratifier"]}
    assert set(stratifiers) == {"age-band", "sex", "departement", "source", "period"}
    for code, classify in STRATA.items():
        got = {
            stratum["value"]["text"]: {p["code"]["coding"][0]["code"]: p["count"]
                                       for p in stratum["population"]}
            for stratum in stratifiers[code]["stratum"]
        }  # fmt: skip
        want: dict[str, dict[str, int]] = {}
        for population, members in expected.items():
            for value, count in Counter(classify(pid) for pid in members).items():
                want.setdefault(value, {c: 0 for c in expected})[population] = count
        assert got == want, code
    (year,) = stratifiers["period"]["stratum"]
    assert year["value"]["text"] == "2024"
    assert {p["code"]["coding"][0]["code"]: p["count"] for p in year["population"]} == {
        c: len(s) for c, s in expected.items()
    }


def test_subject_list_names_the_patients(world: dict) -> None:
    params = {**PERIOD, "reportType": "subject-list"}
    report = world["http"].get("/Measure/tir-above-70/$evaluate-measure", params=params).json()
    assert report["type"] == "subject-list"
    lists = {f"#{c['id']}": c for c in report["contained"]}
    numerator = next(p for p in report["group"][0]["population"]
                     if p["code"]["coding"][0]["code"] == "numerator")  # fmt: skip
    listed = {
        e["item"]["reference"] for e in lists[numerator["subjectResults"]["reference"]]["entry"]
    }
    assert listed == {f"Patient/{pid}" for pid in _expected_sets()["tir-above-70"]["numerator"]}


def test_type_level_by_url_and_errors(world: dict) -> None:
    http = world["http"]
    by_url = http.get("/Measure/$evaluate-measure", params={
        **PERIOD, "measure": "https://diatabase.org/fhir/Measure/no-hba1c"})  # fmt: skip
    assert by_url.status_code == 200
    assert _counts(by_url.json())["numerator-exclusion"] == len(
        _expected_sets()["no-hba1c"]["numerator-exclusion"]
    )
    assert http.get("/Measure/no-hba1c/$evaluate-measure").status_code == 400
    assert http.get("/Measure/nope/$evaluate-measure", params=PERIOD).status_code == 404


def test_a_patient_context_token_gets_no_population_counts(world: dict) -> None:
    server, issuer = world["server"], world["issuer"]
    token = issuer.token(server.url, "launch/patient patient/*.rs", patient="m-0")
    with httpx.Client(base_url=server.url, timeout=60, headers=bearer(token)) as http:
        answer = http.get("/Measure/hba1c-twice/$evaluate-measure", params=PERIOD)
    assert answer.status_code == 403


def test_research_report_suppresses_small_cells(world: dict) -> None:
    http = world["http"]
    auth = {"Authorization": f"Bearer {KEY}"}
    answer = http.get("/deid/Measure/hba1c-twice/$evaluate-measure", params=PERIOD, headers=auth)
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert "withheld" in report["extension"][0]["valueString"]
    expected = _expected_sets()["hba1c-twice"]
    assert _counts(report) == {c: len(s) for c, s in expected.items()}  # all >= 11
    released, withheld = 0, 0
    for stratifier in report["group"][0]["stratifier"]:
        for stratum in stratifier["stratum"]:
            for population in stratum["population"]:
                count = population.get("count")
                if count is None:
                    withheld += 1
                    assert population["extension"][0]["valueBoolean"] is True
                else:
                    released += 1
                    assert count == 0 or count >= 11
    assert withheld > 0 and released > 0
    # the clinical report of the same measure has those small cells
    clinical = http.get("/Measure/hba1c-twice/$evaluate-measure", params=PERIOD).json()
    small = [p["count"] for s in clinical["group"][0]["stratifier"] for st in s["stratum"]
             for p in st["population"] if 0 < p["count"] < 11]  # fmt: skip
    assert small
    assert http.get("/deid/Measure/hba1c-twice/$evaluate-measure", params={
        **PERIOD, "reportType": "subject-list"}, headers=auth).status_code == 403  # fmt: skip
    assert http.get("/deid/Measure/hba1c-twice/$evaluate-measure",
                    params=PERIOD).status_code == 401  # fmt: skip


def test_facade_run_on_a_closed_server_sees_what_the_facade_releases(world: dict) -> None:
    """A recipient's key is no SMART token: the facade's reads must not take the empty
    visibility of an unauthenticated request (they did: the table came back empty)."""
    answer = world["http"].get("/deid/ViewDefinition/hba1c/$run", params={"_format": "ndjson"},
                               headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    hba1c = [r for r in population() if r["resourceType"] == "Observation"
             and r["code"]["coding"][0]["code"] in ("4548-4", "59261-8")]  # fmt: skip
    assert len(answer.text.splitlines()) == len(hba1c)
