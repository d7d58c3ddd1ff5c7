"""The /deid/ facade over HTTP (uvicorn + SQLite): leaks, utility, auth, audit, export.

Data: the Synthea bundles of tests/data/fhir/synthea and synthetic French patients with
INS, NIR, IPP, phones, addresses, CGM readings and notes (tests/deid_data.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_server.api.deid import SIGNED_EXTENSION
from fhir_server.deid.keys import signing_key
from fhir_server.deid.signing import verify_export
from fhir_server.settings import Settings
from tests.conftest import RunningServer, database_url
from tests.deid_data import (
    french_patients,
    secrets_of,
    synthea_bundles,
    transaction,
    write_recipients,
)

SECRET = "facade-test-master-secret-0123456789"
KEYS = {"alpha": "key-alpha-123", "beta": "key-beta-456", "open": "key-open-789"}
TYPES = (
    "Patient",
    "Observation",
    "Condition",
    "MedicationStatement",
    "Device",
    "Encounter",
    "Practitioner",
    "Organization",
    "Claim",
    "ExplanationOfBenefit",
    "Immunization",
    "DiagnosticReport",
    "CarePlan",
    "Goal",
    "MedicationRequest",
    "AllergyIntolerance",
)
_REF = re.compile(r'"reference":"([A-Z][A-Za-z]+)/([^"/]+)"')


def auth(recipient: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[recipient]}"}


@pytest.fixture(scope="module")
def deid_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("deid")
    write_recipients(folder / "recipients.json", KEYS, {"open": {"kAnonymity": {"k": 1}}})
    settings = Settings(
        db_url=database_url(folder),
        max_body_bytes=20_000_000,
        deid_secret=SECRET,
        deid_recipients=str(folder / "recipients.json"),
        deid_export_dir=str(folder / "exports"),
        insecure_dev=True,
    )
    with RunningServer(settings) as running:
        with httpx.Client(base_url=running.url, timeout=60) as http:
            for bundle in synthea_bundles():
                assert http.post("/", json=bundle).status_code == 200
            response = http.post("/", json=transaction(french_patients(count=12, readings=30)))
            assert response.status_code == 200, response.text[:500]
        yield running


@pytest.fixture(scope="module")
def http(deid_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=deid_server.url, timeout=60) as client:
        yield client


def all_pages(http: httpx.Client, url: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    resources = []
    while url:
        response = http.get(url, headers=headers)
        assert response.status_code == 200, response.text[:300]
        bundle = response.json()
        resources += [
            e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] != "outcome"
        ]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), "")
    return resources


@pytest.fixture(scope="module")
def originals(http: httpx.Client) -> list[dict[str, Any]]:
    stored = []
    for rtype in TYPES:
        stored += all_pages(http, f"/{rtype}?_count=500", {})
    return stored


@pytest.fixture(scope="module")
def secrets(originals: list[dict[str, Any]]) -> set[str]:
    found: set[str] = set()
    for resource in originals:
        found |= secrets_of(resource)
    for bundle in synthea_bundles():
        for entry in bundle["entry"]:
            found |= secrets_of(entry["resource"])
    for resource in french_patients(count=12, readings=30):
        found |= secrets_of(resource)
    return found


_ID_VALUE = re.compile(r'"(?:id|value)": ?"([A-Za-z0-9\-.]{24,64})"')
_REFERENCE_VALUE = re.compile(r'"reference": ?"[A-Z][A-Za-z]+/([A-Za-z0-9\-.]{24,64})"')
_URL_PSEUDONYM = re.compile(r"/deid/[A-Z][A-Za-z]+/([A-Za-z0-9\-.]{24,64})|_cursor=([^&\"]+)")


def leaks(text: str, secrets: set[str]) -> list[str]:
    """Secrets found in `text`, once the pseudonyms it carries are blanked out: a random
    43-character pseudonym contains a given 4-letter name now and then (~1e-4 per
    pseudonym), which is chance, not a leak. Only exact pseudonym positions are blanked
    (ids, references, fullUrls, cursors): an original id elsewhere is still found."""
    tokens = {m.group(1) for m in _ID_VALUE.finditer(text)}
    tokens |= {m.group(1) for m in _REFERENCE_VALUE.finditer(text)}
    tokens |= {g for m in _URL_PSEUDONYM.finditer(text) for g in m.groups() if g}
    tokens -= secrets  # an original id in an id field is a leak, not a pseudonym
    for token in sorted(tokens, key=len, reverse=True):
        text = text.replace(token, " ")
    return sorted(s for s in secrets if s in text)


def test_no_key_or_a_wrong_key_gets_401_and_nothing_else(http: httpx.Client) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEYS["alpha"]}):
        for path in ("/deid/Patient", "/deid/Patient/x", "/deid/$export", "/deid/Observation"):
            response = http.get(path, headers=headers)
            assert response.status_code == 401
            assert response.headers["www-authenticate"].startswith("Bearer")
            body = response.json()
            assert body["resourceType"] == "OperationOutcome" and "entry" not in body


def test_leak_scan_of_everything_the_facade_serves(
    http: httpx.Client, secrets: set[str], originals: list[dict[str, Any]]
) -> None:
    """Through `open` (k = 1): every resource is served, so every one is scanned."""
    served: list[dict[str, Any]] = []
    for rtype in TYPES:
        served += all_pages(http, f"/deid/{rtype}?_count=200&_include=*", auth("open"))
    assert len({(r["resourceType"], r["id"]) for r in served}) == len(originals)
    # Distinct documents only: the same resource served twice is scanned once.
    documents = {json.dumps(r, ensure_ascii=False, sort_keys=True) for r in served}
    patients = [r for r in served if r["resourceType"] == "Patient"]
    for patient in patients:
        everything = http.get(f"/deid/Patient/{patient['id']}/$everything", headers=auth("open"))
        assert everything.status_code == 200
        bundle = everything.json()
        documents |= {
            json.dumps(e["resource"], ensure_ascii=False, sort_keys=True) for e in bundle["entry"]
        }
        documents.add(json.dumps(bundle["link"]))
        documents.add(http.get(f"/deid/Patient/{patient['id']}", headers=auth("open")).text)
    text = "\n".join(sorted(documents))
    assert len(secrets) > 500
    assert leaks(text, secrets) == []
    assert all(len(p["birthDate"]) == 4 for p in patients if "birthDate" in p)
    assert all(
        {"name", "telecom", "address"}.isdisjoint(p) or "line" not in str(p) for p in patients
    )


def test_every_reference_resolves_inside_the_facade(http: httpx.Client) -> None:
    served = all_pages(http, "/deid/Observation?_count=500", auth("alpha"))
    served += all_pages(http, "/deid/Encounter?_count=500", auth("alpha"))
    targets = {m.groups() for m in _REF.finditer(json.dumps(served, separators=(",", ":")))}
    assert len(targets) > 20
    for rtype, pseudonym in sorted(targets):
        response = http.get(f"/deid/{rtype}/{pseudonym}", headers=auth("alpha"))
        assert response.status_code == 200, (rtype, response.text[:200])
        assert response.json()["id"] == pseudonym


def test_search_by_pseudonymous_reference_matches_the_clinical_search(
    http: httpx.Client,
) -> None:
    patients = all_pages(http, "/deid/Patient?_count=100", auth("alpha"))
    clinical = {p["id"] for p in all_pages(http, "/Patient?_count=100", {})}
    checked = 0
    for patient in patients:
        everything = http.get(f"/deid/Patient/{patient['id']}/$everything", headers=auth("alpha"))
        expected = sum(
            1 for e in everything.json()["entry"] if e["resource"]["resourceType"] == "Observation"
        )
        for query in (
            f"subject=Patient/{patient['id']}",
            f"patient={patient['id']}",
            f"subject={base_of(http)}/deid/Patient/{patient['id']}",
        ):
            found = all_pages(http, f"/deid/Observation?{query}&_count=50", auth("alpha"))
            assert len(found) == expected, query
        checked += expected > 0
        by_id = http.get(f"/deid/Patient?_id={patient['id']}", headers=auth("alpha")).json()
        assert [e["resource"]["id"] for e in by_id["entry"]] == [patient["id"]]
    assert checked >= 12
    assert not clinical & {p["id"] for p in patients}
    unknown = http.get("/deid/Observation?subject=Patient/notapseudonym", headers=auth("alpha"))
    assert unknown.status_code == 200 and "entry" not in unknown.json()


def base_of(http: httpx.Client) -> str:
    return str(http.base_url).rstrip("/")


def _minutes(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(second=0, microsecond=0)


def test_intervals_codes_and_values_survive(http: httpx.Client) -> None:
    clinical = all_pages(http, "/Observation?code=99504-3&_count=500", {})
    facade = all_pages(http, "/deid/Observation?code=99504-3&_count=500", auth("alpha"))
    assert len(clinical) == len(facade) == 12 * 30

    def series(resources: list[dict[str, Any]]) -> list[list[float]]:
        by_patient: dict[str, list[datetime]] = {}
        for r in resources:
            by_patient.setdefault(r["subject"]["reference"], []).append(
                _minutes(r["effectiveDateTime"])
            )
        result = []
        for times in by_patient.values():
            times.sort()
            result.append([(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)])
        return sorted(result)

    assert series(clinical) == series(facade)
    assert all(i == 300 for s in series(facade) for i in s)

    def clinical_content(r: dict[str, Any]) -> str:
        quantity = {k: v for k, v in r["valueQuantity"].items() if k != "value"}
        return json.dumps([r["code"], quantity, r["status"]], sort_keys=True)

    assert Counter(map(clinical_content, clinical)) == Counter(map(clinical_content, facade))
    # Values move by at most one unit of their last decimal (the value watermark).
    values = sorted(r["valueQuantity"]["value"] for r in clinical)
    marked = sorted(r["valueQuantity"]["value"] for r in facade)
    assert max(abs(a - b) for a, b in zip(values, marked, strict=True)) <= 0.1 + 1e-9
    # Time of day kept to the minute, the date shifted.
    real_minutes = {r["effectiveDateTime"][11:16] for r in clinical}
    assert {r["effectiveDateTime"][11:16] for r in facade} == real_minutes
    assert not {r["effectiveDateTime"][:10] for r in facade} & {"2024-03-05"}


def test_two_recipients_cannot_link_their_pseudonyms(http: httpx.Client) -> None:
    alpha = all_pages(http, "/deid/Patient?_count=100", auth("alpha"))
    beta = all_pages(http, "/deid/Patient?_count=100", auth("beta"))
    assert len(alpha) == len(beta) > 10
    assert not {p["id"] for p in alpha} & {p["id"] for p in beta}
    alpha_text, beta_text = json.dumps(alpha), json.dumps(beta)
    assert not set(re.findall(r"[A-Za-z0-9\-.]{43}", alpha_text)) & set(
        re.findall(r"[A-Za-z0-9\-.]{43}", beta_text)
    )
    for patient in alpha[:3]:
        assert http.get(f"/deid/Patient/{patient['id']}", headers=auth("beta")).status_code == 404


@pytest.mark.parametrize(
    "query",
    [
        "Patient?name=Louis",
        "Patient?family=Garnier0",
        "Patient?identifier=urn:oid:1.2.250.1.213.1.4.8|123",
        "Patient?address-city=Lyon",
        "Patient?phone=0612",
        "Observation?_lastUpdated=gt2020-01-01",
        "Observation?subject:identifier=urn:oid:1.2.250.1.213.1.4.8|1",
        "Observation?subject:Patient.name=Louis",
    ],
)
def test_identifying_searches_answer_on_the_view_that_has_none(
    http: httpx.Client, query: str
) -> None:
    """Once refused, now answered as over the de-identified view: which holds no name,
    no original identifier, no phone, no city, no lastUpdated (tests/test_deid_search_view.py
    covers what the view does hold)."""
    response = http.get(f"/deid/{query}&_total=accurate", headers=auth("alpha"))
    assert response.status_code == 200, response.text[:200]
    assert response.json()["total"] == 0 and "entry" not in response.json()


@pytest.mark.parametrize(
    "query",
    [
        "Observation?_sort=date",
        "Observation?_content=Dubois",
        "Observation?subject:Patient._text=Dubois",
        "Patient?_sort=name",
    ],
)
def test_sorting_on_view_data_and_full_text_are_refused(http: httpx.Client, query: str) -> None:
    response = http.get(f"/deid/{query}", headers=auth("alpha"))
    assert response.status_code == 400, response.text[:200]
    assert response.json()["issue"][0]["code"] == "not-supported"


def test_paging_links_carry_no_real_id(http: httpx.Client, originals: list[dict]) -> None:
    real_ids = {r["id"] for r in originals}
    url = "/deid/Observation?_count=7&_include=Observation:subject"
    pages, seen = 0, []
    while url and pages < 5:
        bundle = http.get(url, headers=auth("alpha")).json()
        links = json.dumps(bundle["link"])
        assert not [i for i in real_ids if i in links]
        assert all("/deid/" in e["fullUrl"] for e in bundle["entry"])
        seen += [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
        url = next((x["url"] for x in bundle["link"] if x["relation"] == "next"), "")
        pages += 1
    assert pages == 5 and len(seen) == len(set(seen)) == 35
    forged = http.get("/deid/Observation?_cursor=AAAA", headers=auth("alpha"))
    assert forged.status_code == 400
    # A cursor made for alpha means nothing to beta.
    first = http.get("/deid/Observation?_count=7", headers=auth("alpha")).json()
    next_url = next(x["url"] for x in first["link"] if x["relation"] == "next")
    assert http.get(next_url, headers=auth("beta")).status_code == 400


def test_every_access_is_audited(http: httpx.Client) -> None:
    marker = f"audit-{time.time_ns()}"
    http.get(f"/deid/Observation?code=99504-3&_count=3&_tag={marker}", headers=auth("beta"))
    http.get("/deid/Patient", headers={"Authorization": "Bearer nobody"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        events = all_pages(http, "/AuditEvent?site=deid&_count=500", {})
        ours = [e for e in events if marker in query_of(e)]
        refused = [e for e in events if e["outcome"] == "4" and "who" in e["agent"][0]]
        if ours and refused:
            break
        time.sleep(0.1)
    assert len(ours) == 1
    event = ours[0]
    assert event["agent"][0]["who"]["identifier"]["value"] == "beta"
    assert event["entity"][0]["detail"][0] == {"type": "resources-returned", "valueString": "0"}
    assert event["subtype"][0]["code"] == "search-type" and event["recorded"]
    assert any(e["agent"][0]["who"].get("display") == "unauthenticated client" for e in refused)
    counted = [e for e in events if e["entity"][0]["detail"][0]["valueString"] not in ("0",)]
    assert counted  # the earlier reads and searches, with how many resources they returned
    assert http.get("/deid/AuditEvent", headers=auth("alpha")).status_code == 404


def query_of(event: dict) -> str:
    """The request an AuditEvent records (BALP: base64 in the query entity)."""
    for entity in event.get("entity", []):
        if "query" in entity:
            return base64.b64decode(entity["query"]).decode()
    return ""


def test_async_export_is_signed_and_leak_free(http: httpx.Client, secrets: set[str]) -> None:
    kicked = http.get("/deid/$export", headers=auth("open"))
    assert kicked.status_code == 202
    status_url = kicked.headers["content-location"]
    assert "/deid/$export-status/" in status_url
    assert http.get(status_url, headers=auth("alpha")).status_code == 404  # not alpha's job
    deadline = time.monotonic() + 300  # a job: on a loaded machine it can take minutes
    while (status := http.get(status_url, headers=auth("open"))).status_code == 202:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert status.status_code == 200, status.text[:300]
    body = status.json()
    assert body["requiresAccessToken"] is True and body["output"]
    manifest = body["extension"][SIGNED_EXTENSION]
    assert manifest["recipient"] == "open" and manifest["kAnonymity"]["k"] == 1
    text = ""
    for item in body["output"]:
        data = http.get(item["url"], headers=auth("open"))
        assert data.status_code == 200
        assert hashlib.sha256(data.content).hexdigest() == next(
            o["sha256"] for o in manifest["output"] if o["type"] == item["type"]
        )
        assert len(data.text.splitlines()) == item["count"]
        text += data.text
        assert http.get(item["url"], headers=auth("alpha")).status_code == 404
    assert "Patient" in {o["type"] for o in body["output"]}
    assert leaks(text, secrets) == []
    signature = manifest["signature"]
    public = signing_key(SECRET.encode()).public_key()
    from fhir_server.deid.keys import public_key_text

    assert signature["publicKey"] == public_key_text(public)
    assert base64.b64decode(signature["value"])


def test_export_files_verify_on_disk(http: httpx.Client, deid_server: RunningServer) -> None:
    kicked = http.get("/deid/$export?_type=Patient,Observation", headers=auth("open"))
    status_url = kicked.headers["content-location"]
    while http.get(status_url, headers=auth("open")).status_code == 202:
        time.sleep(0.1)
    job_id = status_url.rsplit("/", 1)[1]
    folder = Path(deid_server.app.state.settings.deid_export_dir) / job_id
    report = verify_export(folder, signing_key(SECRET.encode()).public_key())
    assert report.ok and report.files == 2, report.problems
    assert http.delete(status_url, headers=auth("open")).status_code == 202
    assert not folder.exists()


def test_k_anonymity_generalizes_and_suppresses_in_exports(http: httpx.Client) -> None:
    kicked = http.get("/deid/$export?_type=Patient", headers=auth("alpha"))
    status_url = kicked.headers["content-location"]
    while (status := http.get(status_url, headers=auth("alpha"))).status_code == 202:
        time.sleep(0.1)
    report = status.json()["extension"][SIGNED_EXTENSION]["kAnonymity"]
    assert report["k"] == 5 and report["patients"] == 14
    assert report["generalized"]["postalPrefix"] > 0
    assert report["released"] + report["suppressed"] == 14
    assert report["released"] == 0 or report["smallestReleasedClass"] >= 5


def test_facade_metadata_lists_only_what_it_serves(http: httpx.Client) -> None:
    statement = http.get("/deid/metadata").json()
    rest = statement["rest"][0]
    types = {r["type"] for r in rest["resource"]}
    assert "AuditEvent" not in types and "Observation" in types
    for resource in rest["resource"]:
        assert {i["code"] for i in resource["interaction"]} == {"read", "search-type"}
        names = {p["name"] for p in resource["searchParam"]}
        assert not names & {"_text", "_content"}
        if resource["type"] == "Observation":
            documented = {p["name"] for p in resource["searchParam"] if "documentation" in p}
            assert {"date", "identifier", "_lastUpdated"} <= documented
            assert "code" in names - documented


def test_post_search_works_like_get(http: httpx.Client) -> None:
    patient = all_pages(http, "/deid/Patient?_count=1", auth("alpha"))[0]
    get = all_pages(
        http, f"/deid/Observation?subject=Patient/{patient['id']}&_count=500", auth("alpha")
    )
    posted = http.post(
        "/deid/Observation/_search",
        data={"subject": f"Patient/{patient['id']}", "_count": "500"},
        headers=auth("alpha"),
    )
    assert posted.status_code == 200
    assert sorted(e["resource"]["id"] for e in posted.json()["entry"]) == sorted(
        r["id"] for r in get
    )


@pytest.mark.parametrize(
    "query",
    [
        "Patient?_revinclude=AuditEvent:entity",
        "Patient?_has:AuditEvent:entity:outcome=0",
        "Observation?_include=Observation:subject:Bundle",
    ],
)
def test_hidden_types_cannot_be_reached_sideways(http: httpx.Client, query: str) -> None:
    response = http.get(f"/deid/{query}", headers=auth("alpha"))
    assert response.status_code in (400,), response.text[:300]
    assert "AuditEvent" not in {
        e.get("resource", {}).get("resourceType") for e in response.json().get("entry", [])
    }


def test_a_resource_with_an_unknown_modifier_extension_is_never_served(
    http: httpx.Client,
) -> None:
    body = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://example.org/codes", "code": "modext"}]},
        "modifierExtension": [{"url": "http://example.org/refuted", "valueBoolean": True}],
    }
    created = http.post("/Observation", json=body)
    assert created.status_code == 201, created.text[:300]
    real = created.json()["id"]
    pseudonym = next(
        e["resource"]["id"]
        for e in http.get("/deid/Observation?code=99504-3&_count=1", headers=auth("alpha")).json()[
            "entry"
        ]
    )
    assert pseudonym  # the facade works for the others
    assert len(all_pages(http, "/Observation?code=modext", {})) == 1
    assert all_pages(http, "/deid/Observation?code=modext", auth("alpha")) == []
    from fhir_server.deid.keys import RecipientKeys
    from fhir_server.deid.pseudonyms import Pseudonymizer

    keys = RecipientKeys.derive(SECRET.encode(), "alpha")
    its_pseudonym = Pseudonymizer(keys.pseudonym, keys.hashed_pseudonym).pseudonym(
        "Observation", real
    )
    response = http.get(f"/deid/Observation/{its_pseudonym}", headers=auth("alpha"))
    assert response.status_code == 404


def test_concurrent_recipients_get_consistent_answers(http: httpx.Client) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def ids(recipient: str) -> list[str]:
        with httpx.Client(base_url=str(http.base_url), timeout=60) as own:
            found = all_pages(own, "/deid/Observation?code=99504-3&_count=40", auth(recipient))
        return sorted(r["id"] for r in found)

    expected = {r: ids(r) for r in ("alpha", "beta")}
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(ids, ["alpha", "beta"] * 3))
    assert results == [expected["alpha"], expected["beta"]] * 3
    assert not set(expected["alpha"]) & set(expected["beta"])
