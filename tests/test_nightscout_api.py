"""The Nightscout API v1 on a real server: sites made by `diatabase nightscout add`, real
uploader payloads (tests/data/nightscout, from Nightscout's fixtures of AndroidAPS and the
Dexcom uploader) stored as FHIR and read back in Nightscout's shape; secrets checked, a
re-sent batch creating nothing, one site never seeing another patient's data."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fhir_server.cli import main
from fhir_server.limits import Limits
from fhir_server.settings import Settings
from tests.conftest import RunningServer

DATA = Path(__file__).parent / "data" / "nightscout"
AAPS = json.loads((DATA / "aaps-patterns.json").read_text(encoding="utf-8"))
DEXCOM = json.loads((DATA / "example-entries.json").read_text(encoding="utf-8"))
ATC = "http://www.whocc.no/atc"
UCUM = "http://unitsofmeasure.org"
SINCE_2000 = {"find[date][$gte]": "946684800000"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("nightscout")
    settings = Settings(db_url=f"sqlite:///{folder / 'db.sqlite'}", insecure_dev=True,
                        auth_store=str(folder / "auth.db"),
                        limits=Limits(search_seconds=300, total_count_seconds=60))
    with RunningServer(settings) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as http:
        yield http


def cli(server: RunningServer, capsys: pytest.CaptureFixture, *args: str) -> str:
    settings = server.app.state.settings
    code = main(["nightscout", *args, "--db", settings.db_url, "--store", settings.auth_store])
    assert code == 0
    return capsys.readouterr().out


def new_site(server: RunningServer, client: httpx.Client,
             capsys: pytest.CaptureFixture) -> tuple[str, str, str]:
    """(patient id, site, secret) of a new patient's site."""
    patient = client.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    output = cli(server, capsys, "add", "--patient", f"Patient/{patient}")
    made = json.loads(output.strip().splitlines()[-1])
    assert made["patient"] == f"Patient/{patient}"
    assert len(made["secret"]) >= 12
    return patient, made["site"], made["secret"]


def sha1(secret: str) -> str:
    return hashlib.sha1(secret.encode()).hexdigest()


def total(client: httpx.Client, path: str, **params: str) -> int:
    answer = client.get(path, params={**params, "_total": "accurate", "_count": "0"})
    assert answer.status_code == 200, answer.text
    return answer.json()["total"]


@pytest.fixture(scope="module")
def site(server: RunningServer, client: httpx.Client) -> dict:
    """A site made through the store (the CLI is tested above; capsys is per test)."""
    patient = client.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    settings = server.app.state.settings
    from fhir_server.ingest.nightscout_sites import NightscoutSites

    made, secret = NightscoutSites(Path(settings.auth_store)).add(patient)
    return {"patient": patient, "site": made.site, "secret": secret,
            "url": f"/nightscout/{made.site}/api/v1",
            "headers": {"api-secret": sha1(secret)}}


def test_add_list_revoke_and_secrets(server: RunningServer, client: httpx.Client,
                                     capsys: pytest.CaptureFixture) -> None:
    patient, site, secret = new_site(server, client, capsys)
    assert f"{site}  Patient/{patient}  active" in cli(server, capsys, "list")
    url = f"/nightscout/{site}/api/v1"
    entry = {"type": "sgv", "sgv": 123, "date": int(time.time() * 1000), "device": "xDrip"}
    for headers, params in [({"api-secret": sha1("not the secret")}, {}), ({}, {}),
                            ({"api-secret": secret}, {}),  # the secret itself, not a digest
                            ({}, {"secret": sha1(secret) + "0"})]:
        refused = client.post(f"{url}/entries", json=[entry], headers=headers, params=params)
        assert refused.status_code == 401, refused.text
        assert refused.json()["resourceType"] == "OperationOutcome"
    assert total(client, "/Observation", subject=f"Patient/{patient}") == 0
    sha512 = hashlib.sha512(secret.encode()).hexdigest()
    assert client.get(f"{url}/verifyauth", headers={"api-secret": sha512}).status_code == 200
    assert client.get(f"{url}/status.json", params={"secret": sha1(secret)}).json()[
        "status"] == "ok"
    stored = client.post(f"{url}/entries", json=[entry], headers={"api-secret": sha1(secret)})
    assert stored.status_code == 200, stored.text
    assert total(client, "/Observation", subject=f"Patient/{patient}") == 1
    assert "Revoked" in cli(server, capsys, "revoke", site)
    assert client.get(f"{url}/entries", headers={"api-secret": sha1(secret)}).status_code == 401
    assert f"{site}  Patient/{patient}  revoked" in cli(server, capsys, "list")


def test_aaps_entries_stored_resent_and_read_back(client: httpx.Client, site: dict) -> None:
    url, headers = site["url"], site["headers"]
    batch = AAPS["SGV_ENTRIES"]["HIGH_FREQUENCY_BATCH"]
    answer = client.post(f"{url}/entries", json=batch, headers=headers)
    assert answer.status_code == 200, answer.text
    stored = answer.json()
    assert [d["sgv"] for d in stored] == [120, 125, 130, 128, 122]
    assert all(len(d["_id"]) == 24 for d in stored)
    subject = f"Patient/{site['patient']}"
    assert total(client, "/Observation", subject=subject, code="http://loinc.org|99504-3") == 5
    again = client.post(f"{url}/entries", json=batch, headers=headers)
    assert again.status_code == 200
    assert [d["_id"] for d in again.json()] == [d["_id"] for d in stored]
    assert total(client, "/Observation", subject=subject, code="http://loinc.org|99504-3") == 5
    devices = client.get("/Device", params={"patient": subject}).json()["entry"]
    assert [d["resource"]["deviceName"][0]["name"] for d in devices] == ["AndroidAPS-DexcomG6"]

    found = client.get(f"{url}/entries.json", params={"count": 3, **SINCE_2000},
                       headers=headers).json()
    assert [d["sgv"] for d in found] == [122, 128, 130]  # the latest first
    first = found[0]
    assert first["type"] == "sgv" and first["direction"] == "FortyFiveDown"
    assert first["device"] == "AndroidAPS-DexcomG6"
    assert first["date"] == batch[-1]["date"]
    assert first["_id"] == stored[-1]["_id"]
    assert first["dateString"] == "2024-01-18T18:06:40.000Z"  # from `date`, the primary time
    # without a time condition Nightscout answers the last 4 days only: these are older
    assert client.get(f"{url}/entries", headers=headers).json() == []


def test_count_ten_latest_and_current(client: httpx.Client, site: dict) -> None:
    url, headers = site["url"], site["headers"]
    now = int(time.time() // 300 * 300 * 1000)
    batch = [{"type": "sgv", "sgv": 100 + i, "date": now - (14 - i) * 300_000,
              "direction": "Flat", "device": "xDrip-DexcomG6"} for i in range(15)]
    batch.append({"type": "mbg", "mbg": 140, "date": now - 60_000, "device": "xDrip-DexcomG6"})
    assert client.post(f"{url}/entries", json=batch, headers=headers).status_code == 200
    latest = client.get(f"{url}/entries.json", params={"count": 10}, headers=headers).json()
    assert len(latest) == 10
    assert [d.get("sgv", d.get("mbg")) for d in latest[:3]] == [114, 140, 113]
    assert set(latest[0]) >= {"_id", "type", "sgv", "date", "dateString", "sysTime",
                              "direction", "device", "utcOffset"}
    sgv_only = client.get(f"{url}/entries/sgv.json", params={"count": 2},
                          headers=headers).json()
    assert [d["sgv"] for d in sgv_only] == [114, 113]
    current = client.get(f"{url}/entries/current.json", headers=headers).json()
    assert [d["sgv"] for d in current] == [114]
    ranged = client.get(f"{url}/entries.json", headers=headers, params={
        "find[date][$gte]": str(now - 2 * 300_000), "find[type]": "sgv", "count": 100}).json()
    assert [d["sgv"] for d in ranged] == [114, 113, 112]


def test_dexcom_uploader_strings_and_error_codes(client: httpx.Client, site: dict) -> None:
    answer = client.post(f"{site['url']}/entries", json=DEXCOM, headers=site["headers"])
    assert answer.status_code == 200, answer.text
    stored = answer.json()
    errors = [d for d in DEXCOM if float(d["sgv"]) < 20]
    assert len(stored) == len(DEXCOM) - len(errors) and errors  # error codes not stored
    found = client.get(f"{site['url']}/entries", headers=site["headers"], params={
        "find[dateString][$lte]": "2014-07-19T10:00:00-07:00", "count": 1000}).json()
    assert len(found) == len(stored)
    assert all(isinstance(d["sgv"], int) for d in found)  # "169" was stored as 169


def test_treatments_as_medication_administrations_and_observations(
    client: httpx.Client, site: dict
) -> None:
    url, headers = site["url"], site["headers"]
    meal = AAPS["MEAL_SCENARIO"]
    uploads = [meal["CARB_ENTRY"], meal["MEAL_BOLUS"], meal["BOLUS_WIZARD"],
               AAPS["TEMP_BASAL"]["SAMPLE"], *AAPS["SMB_BURSTS"]["CORRECTION_SEQUENCE"],
               {"eventType": "Site Change", "created_at": "2024-01-18T18:00:00Z",
                "notes": "left arm", "enteredBy": "xDrip"},
               {"eventType": "BG Check", "created_at": "2024-01-18T18:05:00Z",
                "glucose": 6.2, "glucoseType": "Finger", "units": "mmol"}]
    answer = client.post(f"{url}/treatments", json=uploads, headers=headers)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()) == len(uploads)
    subject = f"Patient/{site['patient']}"
    doses = client.get("/MedicationAdministration", params={
        "subject": subject, "_count": "100"}).json()["entry"]
    resources = [e["resource"] for e in doses]
    boluses = [r for r in resources if "effectiveDateTime" in r]
    # meal bolus, bolus wizard and the SMB corrections
    smb = len(AAPS["SMB_BURSTS"]["CORRECTION_SEQUENCE"])
    assert len(boluses) == 2 + smb
    assert all(r["medicationCodeableConcept"]["coding"][0] == {
        "system": ATC, "code": "A10AB",
        "display": "Insulins and analogues for injection, fast-acting"} for r in resources)
    meal_bolus = next(r for r in boluses
                      if r["effectiveDateTime"].startswith("2021-07-13T11:25:12"))
    assert meal_bolus["dosage"]["dose"] == {"value": 8.1, "unit": "U", "system": UCUM,
                                            "code": "[IU]"}
    (basal,) = [r for r in resources if "effectivePeriod" in r]
    assert basal["dosage"]["rateQuantity"] == {"value": 1.2, "unit": "U/h", "system": UCUM,
                                               "code": "[IU]/h"}
    # a treatment's time is its created_at
    assert basal["effectivePeriod"] == {"start": "2024-01-18T16:00:00Z",
                                        "end": "2024-01-18T16:30:00Z"}
    carbs = client.get("/Observation", params={"subject": subject,
                                               "code": "http://loinc.org|9059-7"}).json()
    assert sorted(e["resource"]["valueQuantity"]["value"] for e in carbs["entry"]) == [45, 45]
    assert {e["resource"]["valueQuantity"]["code"] for e in carbs["entry"]} == {"g"}
    meter = client.get("/Observation", params={"subject": subject,
                                               "code": "http://loinc.org|14743-9"}).json()
    assert [e["resource"]["valueQuantity"]["value"] for e in meter["entry"]] == [6.2]
    again = client.post(f"{url}/treatments", json=uploads, headers=headers)
    assert again.status_code == 200
    assert total(client, "/MedicationAdministration", subject=subject) == len(resources)

    read = client.get(f"{url}/treatments.json", headers=headers, params={
        "find[created_at][$gte]": "2021-01-01", "count": 100}).json()
    by_type = {}
    for doc in read:
        by_type.setdefault(doc["eventType"], []).append(doc)
    assert by_type["Site Change"][0]["notes"] == "left arm"
    assert by_type["Temp Basal"][0]["absolute"] == 1.2
    assert by_type["Temp Basal"][0]["duration"] == 30
    assert by_type["Meal Bolus"][0]["insulin"] == 8.1
    assert by_type["Bolus Wizard"][0]["carbs"] == 45 and by_type["Bolus Wizard"][0][
        "insulin"] == 8.1
    assert by_type["BG Check"][0]["glucose"] == 6.2
    assert len(read) == len(uploads)
    only = client.get(f"{url}/treatments.json", headers=headers, params={
        "find[created_at][$gte]": "2021-01-01", "find[eventType]": "Temp Basal"}).json()
    assert [d["eventType"] for d in only] == ["Temp Basal"]


def test_malformed_upload_stores_nothing(client: httpx.Client, site: dict) -> None:
    subject = f"Patient/{site['patient']}"
    before = total(client, "/Observation", subject=subject)
    now = int(time.time() * 1000)
    answer = client.post(f"{site['url']}/entries", headers=site["headers"], json=[
        {"type": "sgv", "sgv": 140, "date": now},
        {"type": "sgv", "sgv": "abc", "date": now - 300_000}])
    assert answer.status_code == 400
    assert "document 1" in answer.json()["issue"][0]["diagnostics"]
    assert total(client, "/Observation", subject=subject) == before


def test_devicestatus_and_profile(client: httpx.Client, site: dict) -> None:
    url, headers = site["url"], site["headers"]
    status = dict(AAPS["DEVICESTATUS"]["SAMPLE"])
    status["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    assert client.post(f"{url}/devicestatus", json=status, headers=headers).status_code == 200
    (read,) = client.get(f"{url}/devicestatus.json", headers=headers).json()
    assert read["uploaderBattery"] == 85
    assert read["pump"] == {"reservoir": 120.5, "battery": {"percent": 75}}
    assert read["openaps"]["iob"]["iob"] == 2.5
    assert read["device"] == "AndroidAPS"
    profile = {"defaultProfile": "Default", "startDate": "2024-01-01T00:00:00.000Z",
               "store": {"Default": {"dia": 5, "carbratio": [{"time": "00:00", "value": 10}],
                                     "basal": [{"time": "00:00", "value": 0.8}],
                                     "units": "mg/dl"}}}
    assert client.post(f"{url}/profile", json=profile, headers=headers).status_code == 200
    (back,) = client.get(f"{url}/profile.json", headers=headers).json()
    assert back["store"] == profile["store"] and len(back["_id"]) == 24
    documents = client.get("/DocumentReference", params={
        "patient": f"Patient/{site['patient']}"}).json()["entry"]
    assert documents[0]["resource"]["content"][0]["attachment"]["contentType"] == \
        "application/json"


def test_a_site_sees_its_patient_only(server: RunningServer, client: httpx.Client,
                                      site: dict, capsys: pytest.CaptureFixture) -> None:
    other_patient, other_site, other_secret = new_site(server, client, capsys)
    headers = {"api-secret": sha1(other_secret)}
    url = f"/nightscout/{other_site}/api/v1"
    assert client.get(f"{url}/entries", params=SINCE_2000, headers=headers).json() == []
    assert client.get(f"{url}/treatments", params=SINCE_2000, headers=headers).json() == []
    # the first site's secret does not open the second site
    assert client.get(f"{url}/entries", headers=site["headers"]).status_code == 401
    now = int(time.time() * 1000)
    assert client.post(f"{url}/entries", headers=headers,
                       json=[{"type": "sgv", "sgv": 99, "date": now}]).status_code == 200
    mine = client.get(f"{site['url']}/entries", params={"count": 1000},
                      headers=site["headers"]).json()
    assert 99 not in [d.get("sgv") for d in mine]
    assert total(client, "/Observation", subject=f"Patient/{other_patient}") == 1


def test_a_batch_of_a_thousand(client: httpx.Client, site: dict) -> None:
    start = int(time.time() * 1000) - 3 * 86_400_000
    batch = [{"type": "sgv", "sgv": 80 + i % 200, "date": start + i * 60_000,
              "device": "xDrip-LibreReceiver"} for i in range(1000)]
    answer = client.post(f"{site['url']}/entries", json=batch, headers=site["headers"])
    assert answer.status_code == 200, answer.text
    assert len(answer.json()) == 1000
    found = client.get(f"{site['url']}/entries", headers=site["headers"],
                       params={"count": 1200, "find[date][$gte]": str(start)})
    assert found.status_code == 200
    assert len([d for d in found.json() if d.get("device") == "xDrip-LibreReceiver"]) == 1000


def test_uploads_reads_and_refusals_are_audited(server: RunningServer, client: httpx.Client,
                                                site: dict) -> None:
    now = int(time.time() * 1000)
    client.post(f"{site['url']}/entries", headers=site["headers"],
                json=[{"type": "sgv", "sgv": 111, "date": now - 7_000}])
    client.get(f"{site['url']}/entries", headers=site["headers"])
    client.get(f"{site['url']}/entries", headers={"api-secret": sha1("wrong secret!")})
    server.app.state.fhir.audit.flush()
    events = client.get("/AuditEvent", params={"_count": "1000"}).json()["entry"]
    mine = [json.dumps(e["resource"]) for e in events
            if f"nightscout-site/{site['site']}" in json.dumps(e["resource"])]
    # the upload is one transaction (as a Bundle would be), naming the patient
    assert any('"transaction"' in e and '"outcome": "0"' in e and f"Patient/{site['patient']}" in e
               for e in mine)
    assert any('"search-type"' in e and '"outcome": "0"' in e for e in mine)  # the read
    assert any(f"Patient/{site['patient']}" in e for e in mine)
    assert any("wrong or missing Nightscout API secret" in e for e in mine)
