"""`GET /Patient/{id}/$cgm-metrics` on a real server: the summary Bundle checked against
the HL7 CGM IG 1.0.0 profiles' rules (tests/cgm_ig_rules.py), `persist=true` stored and
found again by the server's own search, a new version when recomputed for the same
period, and the errors (each an OperationOutcome)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest

from fhir_server.ingest.loader import Loader
from mappers.device_csv import to_bundle
from tests import cgm_ig_rules as rules

DEXCOM = Path(__file__).parent / "data/csv/dexcom-clarity/dexcom_clarity_g6_cgmquantify.csv"
LOINC = "http://loinc.org"
PERIOD = {"start": "2016-10-24", "end": "2016-11-06"}


@pytest.fixture(scope="module")
def patient(client: httpx.Client, server, tmp_path_factory: pytest.TempPathFactory) -> str:
    created = client.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Cgm"}]})
    assert created.status_code == 201
    pid = created.json()["id"]
    mapped = to_bundle(DEXCOM.read_bytes(), patient=f"Patient/{pid}", timezone="Europe/Paris")
    bundle = mapped.bundle
    # larger than the test server's body limit: loaded as `diatabase import` would
    path = tmp_path_factory.mktemp("dexcom") / "bundle.json"
    path.write_text(json.dumps(bundle))
    report = Loader(server.app.state.fhir).load_files([path])
    assert not report.failed
    return pid


def members_of(bundle: dict) -> tuple[dict, list[dict]]:
    resources = [e["resource"] for e in bundle["entry"]]
    summary = next(r for r in resources if rules.has_code(r.get("code"), rules.SUMMARY))
    urls = {e["fullUrl"]: e["resource"] for e in bundle["entry"]}
    members = []
    for member in summary["hasMember"]:
        ref = member["reference"]
        found = urls.get(ref) or next(
            (r for u, r in urls.items() if u.endswith("/" + ref)), None
        )
        assert found is not None, f"{ref} does not resolve in the Bundle"
        members.append(found)
    return summary, members


def test_the_summary_follows_the_cgm_ig_profiles(client: httpx.Client, patient: str) -> None:
    response = client.get(f"/Patient/{patient}/$cgm-metrics", params=PERIOD)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    summary, members = members_of(bundle)
    assert rules.summary_problems(summary, members) == []
    assert summary["subject"] == {"reference": f"Patient/{patient}"}
    assert summary["effectivePeriod"] == PERIOD
    tir = next(m for m in members if rules.has_code(m["code"], "106793-3"))
    shares = [c["valueQuantity"]["value"] for c in tir["component"]]
    assert sum(shares) == pytest.approx(100, abs=0.05)
    assert all(round(s, 2) == s for s in shares)  # two decimals
    # in mmol/L the mean is 105273-7
    molar = client.get(f"/Patient/{patient}/$cgm-metrics", params={**PERIOD, "unit": "mmol/L"})
    _, molar_members = members_of(molar.json())
    assert any(rules.has_code(m["code"], "105273-7") for m in molar_members)
    assert rules.summary_problems(*members_of(molar.json())) == []


def test_persist_stores_it_and_search_finds_it(client: httpx.Client, patient: str) -> None:
    stored = client.get(f"/Patient/{patient}/$cgm-metrics", params={**PERIOD, "persist": "true"})
    assert stored.status_code == 200, stored.text
    summary, members = members_of(stored.json())
    assert summary["meta"]["versionId"] == "1"
    # R4 `code` indexes Observation.code: the panel is 106793-3; 97510-2 (time in range) is
    # one of its components, found by component-code and combo-code.
    for params in (
        {"component-code": f"{LOINC}|97510-2"},
        {"combo-code": f"{LOINC}|97510-2"},
        {"code": f"{LOINC}|106793-3"},
    ):
        found = client.get("/Observation", params={**params, "subject": f"Patient/{patient}"})
        assert found.status_code == 200
        ids = [e["resource"]["id"] for e in found.json().get("entry", [])]
        tir = next(m for m in members if rules.has_code(m["code"], "106793-3"))
        assert ids == [tir["id"]], params
    read = client.get(f"/Observation/{summary['id']}")
    assert read.status_code == 200 and len(read.json()["hasMember"]) == 6
    for member in read.json()["hasMember"]:
        assert client.get(f"/{member['reference']}").status_code == 200

    # the same period again, unchanged: the same resources; changed: a new version
    again = client.get(f"/Patient/{patient}/$cgm-metrics", params={**PERIOD, "persist": "true"})
    assert members_of(again.json())[0]["meta"]["versionId"] == "1"
    extra = {
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "99504-3"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": "2016-11-03T03:02:00+01:00",  # after the export ends
        "valueQuantity": {"value": 45, "unit": "mg/dL", "system": "http://unitsofmeasure.org",
                          "code": "mg/dL"},
        "device": {"reference": "Device/other-sensor"},
    }
    assert client.post("/Observation", json=extra).status_code == 201
    changed = client.get(f"/Patient/{patient}/$cgm-metrics", params={**PERIOD, "persist": "true"})
    summary2, _ = members_of(changed.json())
    assert summary2["id"] == summary["id"]
    tir_history = client.get(f"/Observation/{summary['id']}-tir/_history").json()
    assert tir_history["total"] == 2


def test_an_empty_period_is_flagged_with_absent_values(client: httpx.Client, patient: str) -> None:
    bundle = client.get(
        f"/Patient/{patient}/$cgm-metrics", params={"start": "2020-01-01", "end": "2020-01-14"}
    ).json()
    summary, members = members_of(bundle)
    assert "no-cgm-data" in summary["note"][0]["text"]
    gmi = next(m for m in members if rules.has_code(m["code"], "97506-0"))
    assert "valueQuantity" not in gmi and gmi["dataAbsentReason"]


@pytest.mark.parametrize(
    "path, params, status",
    [
        ("/Patient/nobody-here/$cgm-metrics", {}, 404),
        ("/Patient/{pid}/$cgm-metrics", {"population": "athletes"}, 400),
        ("/Patient/{pid}/$cgm-metrics", {"start": "yesterday"}, 400),
        ("/Patient/{pid}/$cgm-metrics", {"start": "2024-02-01", "end": "2024-01-01"}, 400),
        ("/Patient/{pid}/$cgm-metrics", {"tz": "Mars/Olympus"}, 400),
        ("/Patient/{pid}/$cgm-metrics", {"persist": "maybe"}, 400),
        ("/Patient/{pid}/$cgm-metrics", {"unit": "g/L"}, 400),
    ],
)
def test_errors_are_operation_outcomes(
    client: httpx.Client, patient: str, path: str, params: dict, status: int
) -> None:
    response = client.get(path.format(pid=patient), params=params)
    assert response.status_code == status
    assert response.json()["resourceType"] == "OperationOutcome"


def test_persist_adds_the_pdf_diagnostic_report(client: httpx.Client, patient: str) -> None:
    bundle = client.get(
        f"/Patient/{patient}/$cgm-metrics", params={**PERIOD, "persist": "true", "lang": "fr"}
    ).json()
    reports = [e["resource"] for e in bundle["entry"]
               if e["resource"]["resourceType"] == "DiagnosticReport"]
    assert len(reports) == 1 and rules.pdf_report_problems(reports[0]) == []
    form = reports[0]["presentedForm"][0]
    assert base64.b64decode(form["data"]).startswith(b"%PDF-")
    assert form["language"] == "fr"
    summary, _ = members_of(bundle)
    assert reports[0]["result"] == [{"reference": f"Observation/{summary['id']}"}]
    found = client.get("/DiagnosticReport", params={
        "subject": f"Patient/{patient}", "code": f"{LOINC}|107931-8"}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [reports[0]["id"]]


@pytest.mark.parametrize(
    "headers, params, media, magic",
    [
        ({"Accept": "application/pdf"}, {}, "application/pdf", b"%PDF-"),
        ({}, {"_format": "png"}, "image/png", b"\x89PNG"),
    ],
)
def test_the_agp_as_pdf_and_png(
    client: httpx.Client, patient: str, headers: dict, params: dict, media: str, magic: bytes
) -> None:
    response = client.get(f"/Patient/{patient}/$agp", params={**PERIOD, **params},
                          headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == media
    assert response.content.startswith(magic)


def test_the_agp_page_in_french_and_english(client: httpx.Client, patient: str) -> None:
    french = client.get(f"/Patient/{patient}/$agp", params=PERIOD,
                        headers={"Accept": "text/html", "Accept-Language": "fr-FR,fr;q=0.9"})
    assert french.status_code == 200
    assert french.headers["content-type"].startswith("text/html")
    assert "Profil glycémique ambulatoire" in french.text and '<html lang="fr">' in french.text
    policy = french.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy
    assert french.headers["x-frame-options"] == "DENY"
    assert french.headers["x-content-type-options"] == "nosniff"
    english = client.get(f"/Patient/{patient}/$agp", params={**PERIOD, "lang": "en"})
    assert "Ambulatory Glucose Profile" in english.text
    refused = client.get(f"/Patient/{patient}/$agp", headers={"Accept": "application/fhir+json"})
    assert refused.status_code == 406
    assert refused.json()["resourceType"] == "OperationOutcome"
