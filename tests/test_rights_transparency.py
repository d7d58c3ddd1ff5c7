"""The public transparency page and its JSON on a real server: figures checked against
counts computed here from what the test stored, small cells (1 to 10) suppressed, no token
needed; the page rendered in a real headless Chromium (Debian's `chromium`, installed by
.ci/run): a screenshot (committed as docs/transparency.png) and its text checked."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_server.rights.objections import objection_consent
from fhir_server.settings import Settings
from tests.auth_tokens import TestIssuer, bearer
from tests.bulk_client import export
from tests.conftest import RunningServer
from tests.deid_data import write_recipients

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HOSPITAL = "urn:diatabase:source:chu-nord"
PRACTICE = "urn:diatabase:source:cabinet-sud"
LABORATORY = "urn:diatabase:source:labo-est"
SECRET = "transparency-test-master-secret-0123456789"
KEYS = {"cohort-a": "key-cohort-a"}


def with_source(resource: dict[str, Any], source: str) -> dict[str, Any]:
    return {**resource, "meta": {"source": source}}


def patient(pid: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1960"}


def reading(oid: str, pid: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
            "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": "2026-03-05T08:00:00Z",
            "valueQuantity": {"value": 110, "unit": "mg/dL",
                              "system": "http://unitsofmeasure.org", "code": "mg/dL"}}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("transparency")
    issuer = TestIssuer.create(folder)
    write_recipients(folder / "recipients.json", KEYS, {"cohort-a": {"kAnonymity": {"k": 1}}})
    settings: Settings = issuer.settings(
        db_url=f"sqlite:///{folder / 'store.db'}", deid_secret=SECRET,
        deid_recipients=str(folder / "recipients.json"), jobs_dir=str(folder / "jobs"),
        deid_export_dir=str(folder / "exports"),
    )
    with RunningServer(settings) as server:
        admin = httpx.Client(base_url=server.url, timeout=120,
                             headers=bearer(issuer.token(server.url, "system/*.cruds")))
        stored: list[dict[str, Any]] = []
        for n in range(12):  # the hospital: 12 patients, 2 readings each
            stored.append(with_source(patient(f"h{n}"), HOSPITAL))
            stored += [with_source(reading(f"h{n}-{k}", f"h{n}"), HOSPITAL) for k in (1, 2)]
        for n in range(3):  # the practice: 3 patients, 2 readings each (small cells)
            stored.append(with_source(patient(f"p{n}"), PRACTICE))
            stored += [with_source(reading(f"p{n}-{k}", f"p{n}"), PRACTICE) for k in (1, 2)]
        stored += [with_source(patient(f"l{n}"), LABORATORY) for n in range(11)]
        for resource in stored:
            answer = admin.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
            assert answer.status_code == 201, answer.text
        consents = []
        for n in range(13):  # 13 objections, one of them withdrawn: 12 in force
            answer = admin.post("/Consent", json=objection_consent(f"h{n % 12}", "letter",
                                                                  "2026-12-01"))
            consents.append(answer.json())
        # h0 objects twice; one of its two objections withdrawn: still in force
        withdrawn = dict(consents[12], status="inactive")
        assert admin.put(f"/Consent/{withdrawn['id']}", json=withdrawn).status_code == 200
        manifest = export(httpx.Client(base_url=server.url, timeout=120), "/deid/$export",
                          {"Authorization": f"Bearer {KEYS['cohort-a']}"})
        total = admin.get("/", params={"_summary": "count"}).json()["total"]
        yield {"server": server, "stored": stored, "total": total, "manifest": manifest,
               "folder": folder}


def test_the_figures_against_what_was_stored(world: dict[str, Any]) -> None:
    server = world["server"]
    answer = httpx.get(f"{server.url}/transparency.json", timeout=120)  # no token: public
    assert answer.status_code == 200
    figures = answer.json()
    holdings = figures["holdings"]
    assert holdings["patients"] == 26
    assert holdings["resources"] == world["total"]
    sources = {s["source"]: s for s in holdings["bySource"]}
    hospital, practice = sources[HOSPITAL], sources[PRACTICE]
    assert hospital["patients"] == 12 and hospital["resources"] == 36
    assert practice["patients"] == "<11" and practice["resources"] == "<11"
    # the practice's small cells alone would be recovered from the totals: the next
    # smallest (the laboratory's 11 patients, 11 resources) is withheld with them
    assert sources[LABORATORY] == {"source": LABORATORY, "patients": "<11", "resources": "<11"}
    [month] = holdings["byMonth"]  # everything was stored this month
    assert month["patients"] == 26 and month["resources"] == world["total"]
    assert figures["objections"] == {"inForce": 12, "withdrawn": 0}
    assert figures["smallCellLimit"] == 11
    [recipient] = figures["recipients"]
    assert recipient["id"] == "cohort-a" and recipient["k"] == 1
    assert recipient["dateShiftDays"] == 365
    assert {"Patient", "Observation", "Consent"} <= set(recipient["resourceTypes"])
    [last] = figures["exports"]
    assert last["recipient"] == "cohort-a"
    assert last["bytes"] > 0
    [manifest_file] = list((Path(world["folder"]) / "exports").rglob("manifest.json"))
    assert last["manifestSha256"] == hashlib.sha256(manifest_file.read_bytes()).hexdigest()
    # the export left out the 12 objecting patients and their readings and Consents
    served = {o["type"]: o["count"] for o in world["manifest"]["output"]}
    assert served["Patient"] == 3 + 11 and served["Observation"] == 6
    assert "Consent" not in served


def test_the_page_in_french_and_english(world: dict[str, Any]) -> None:
    server = world["server"]
    french = httpx.get(f"{server.url}/transparency", params={"lang": "fr"}, timeout=120)
    assert french.status_code == 200 and french.headers["content-type"].startswith("text/html")
    assert "Oppositions en vigueur" in french.text and "&lt;11" in french.text
    english = httpx.get(f"{server.url}/transparency",
                        headers={"Accept-Language": "en-GB,en;q=0.8"}, timeout=120)
    assert "Objections in force" in english.text and HOSPITAL in english.text


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary: apt-get install chromium")
def test_the_page_in_a_real_browser(world: dict[str, Any], tmp_path: Path) -> None:
    url = f"{world['server'].url}/transparency?lang=fr"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-dev-shm-usage", "--hide-scrollbars"]
    shot = tmp_path / "transparency.png"
    done = subprocess.run([*command, "--window-size=1100,1500", f"--screenshot={shot}", url],
                          cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert shot.exists() and shot.read_bytes().startswith(b"\x89PNG"), done.stderr[-2000:]
    dom = subprocess.run([*command, "--dump-dom", url], cwd=tmp_path, capture_output=True,
                         text=True, timeout=180).stdout
    assert '<td class="value" data-figure="patients">26</td>' in dom
    assert '<td class="value" data-figure="objections">12</td>' in dom
    assert f'data-source="{PRACTICE}"' in dom and "&lt;11" in dom and "data-month=" in dom
    assert 'data-recipient="cohort-a"' in dom


@pytest.mark.parametrize("backend", ["sqlite", "mongomock"])
def test_holdings_by_source_month_and_type(backend: str, tmp_path: Path) -> None:
    """The grouped query of each backend (MongoDB through mongomock: no server here) gives
    the counts of what was stored, by source (fragment kept), month and type."""
    from datetime import UTC, datetime

    from fhir_server.rights.holdings import holdings
    from fhir_server.service.fhir import FhirService
    from fhir_server.storage import open_storage
    from tests.storage_backends import mongomock_url

    url = f"sqlite:///{tmp_path / 'h.db'}" if backend == "sqlite" else mongomock_url()
    service = FhirService(open_storage(url), Settings(db_url=url))
    before = holdings(service.indexed.backend)
    for n in range(3):
        service.resources.update("Patient", f"s{n}", with_source(patient(f"s{n}"), HOSPITAL))
        service.resources.update("Observation", f"s{n}-1",
                                 with_source(reading(f"s{n}-1", f"s{n}"), f"{PRACTICE}#r{n}"))
    service.resources.update("Patient", "none", patient("none"))
    found = holdings(service.indexed.backend)
    service.storage.close()
    month = datetime.now(UTC).strftime("%Y-%m")
    assert found.by_source[(HOSPITAL, "Patient")] == 3
    assert sum(n for (s, t), n in found.by_source.items()
               if s.startswith(PRACTICE) and t == "Observation") == 3
    assert found.by_source[("", "Patient")] == before.by_source.get(("", "Patient"), 0) + 1
    assert found.by_month[(month, "Patient")] == 4
    assert found.by_month[(month, "Observation")] == 3
