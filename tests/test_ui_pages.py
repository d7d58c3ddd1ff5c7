"""The clinician's pages on a real server: the patient list (/ui/patients: figures from the
daily aggregates, flags, sorting, a Group, French) and a patient's AGP page, each
rendered once in a real headless Chromium (Debian's `chromium`, installed by .ci/run)
for a screenshot and a DOM check of every panel, and the AGP PDF turned into PNG pages by
`pdftoppm`. Access with real tokens: a patient-context token lists its patient only and
cannot open another patient's page or metrics.

Where the chromium or pdftoppm binaries are absent (a developer's machine), those checks
are skipped with a message saying how to install them.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_server.clinical.indexes import AGGREGATE_ZONE
from fhir_server.settings import Settings
from tests.auth_tokens import TestIssuer, bearer
from tests.conftest import RunningServer, database_url

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PDFTOPPM = shutil.which("pdftoppm")
NO_CHROMIUM = "no chromium binary: apt-get install chromium (as .ci/run does)"
NO_PDFTOPPM = "no pdftoppm binary: apt-get install poppler-utils (as .ci/run does)"


def reading(pid: str, when: datetime, value: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "99504-3"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when.isoformat(),
        "valueQuantity": {"value": value, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"},
        "device": {"reference": f"Device/sensor-{pid}"},
    }


def hba1c(pid: str, when: str, value: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "4548-4"}]},
        "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": "%", "system": UCUM, "code": "%"},
    }


def load_world(http: httpx.Client) -> dict[str, str]:
    """Three patients: Alice (CGM 14 days, many lows, recent HbA1c), Bruno (CGM in range,
    HbA1c two years old), Chloé (no CGM, no HbA1c); a Group of Alice and Bruno."""
    ids = {}
    for key, family, given in (("alice", "Martin", "Alice"), ("bruno", "Durand", "Bruno"),
                               ("chloe", "Petit", "Chloé")):
        made = http.post("/Patient", json={"resourceType": "Patient",
                                           "name": [{"family": family, "given": [given]}]})
        assert made.status_code == 201, made.text
        ids[key] = made.json()["id"]
    today = datetime.now(AGGREGATE_ZONE).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - timedelta(days=13)
    entries = []
    alice_values = []
    for i in range(14 * 96):  # every 15 minutes
        when = (start + timedelta(minutes=15 * i)).astimezone(UTC)
        if when > datetime.now(UTC):
            break
        hour = (i % 96) / 4
        alice = 60 if 2 <= hour < 4 else 150 + 40 * ((i % 7) - 3) / 3
        bruno = 120 + (i % 5) * 5
        alice_values.append(round(alice))
        for pid, value in ((ids["alice"], alice), (ids["bruno"], bruno)):
            entries.append({"resource": reading(pid, when, round(value)),
                            "request": {"method": "POST", "url": "Observation"}})
    recent = (today - timedelta(days=30)).date().isoformat()
    entries.append({"resource": hba1c(ids["alice"], recent, 7.4),
                    "request": {"method": "POST", "url": "Observation"}})
    entries.append({"resource": hba1c(ids["bruno"], "2020-01-10", 6.9),
                    "request": {"method": "POST", "url": "Observation"}})
    for i in range(0, len(entries), 500):
        batch = {"resourceType": "Bundle", "type": "batch", "entry": entries[i : i + 500]}
        assert http.post("/", json=batch).status_code == 200
    group = http.post("/Group", json={
        "resourceType": "Group", "type": "person", "actual": True,
        "member": [{"entity": {"reference": f"Patient/{ids['alice']}"}},
                   {"entity": {"reference": f"Patient/{ids['bruno']}"}}]})
    ids["group"] = group.json()["id"]
    # computed here from what was sent, not by the project's code
    ids["alice_tbr"] = f"{100 * sum(v < 70 for v in alice_values) / len(alice_values):.1f}"
    return ids


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    issuer = TestIssuer.create(tmp_path_factory.mktemp("issuer"))
    settings = issuer.settings(db_url=database_url(tmp_path_factory.mktemp("db")),
                               max_body_bytes=5_000_000)
    with RunningServer(settings) as server:
        admin = httpx.Client(base_url=server.url, timeout=120,
                             headers=bearer(issuer.token(server.url, "system/*.cruds")))
        ids = load_world(admin)
        yield {"server": server, "issuer": issuer, "admin": admin, **ids}
        admin.close()


@pytest.fixture(scope="module")
def open_server(world: dict[str, Any], tmp_path_factory) -> Iterator[RunningServer]:
    """The same database served with --insecure-dev, for the browser (which sends no
    token) on 127.0.0.1."""
    db = world["server"].app.state.settings.db_url
    with RunningServer(Settings(db_url=db, insecure_dev=True)) as server:
        yield server


def rows_of(html: str) -> dict[str, str]:
    return dict(re.findall(r'<tr data-patient="([^"]+)">(.*?)</tr>', html, re.S))


def cells(row: str) -> list[str]:
    return re.findall(r"<td>(.*?)</td>", row, re.S)


def test_the_patient_list(world: dict[str, Any]) -> None:
    admin = world["admin"]
    page = admin.get("/ui/patients")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    # the inlined stylesheet is the one the policy allows (it was HTML-escaped before, so
    # browsers refused it and drew the page unstyled)
    style = re.search(r"<style>(.*?)</style>", page.text, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in policy
    rows = rows_of(page.text)
    alice, bruno, chloe = rows[world["alice"]], rows[world["bruno"]], rows[world["chloe"]]
    # Alice is below 70 from 02:00 to 04:00 every day (8 of 96 readings a full day)
    assert cells(alice)[4] == world["alice_tbr"] and 'data-flag="tbr70-over-4"' in alice
    assert 'data-flag="tbr54-over-1"' not in alice and "7.4 %" in alice
    assert cells(bruno)[3] == "100.0" and 'data-flag="no-hba1c-12-months"' in bruno
    assert 'data-flag="no-hba1c-12-months"' in chloe and "0 / 14" in chloe
    by_tbr = admin.get("/ui/patients", params={"sort": "-tbr"}).text
    order = list(rows_of(by_tbr))
    assert order.index(world["alice"]) < order.index(world["bruno"])
    group = rows_of(admin.get("/ui/patients", params={"group": world["group"]}).text)
    assert set(group) == {world["alice"], world["bruno"]}
    french = admin.get("/ui/patients", headers={"Accept-Language": "fr"}).text
    assert "pas d&#39;HbA1c depuis 12 mois" in french or "pas d'HbA1c" in french
    assert admin.get("/ui/patients", params={"sort": "shoe size"}).status_code == 400


def test_a_patient_context_token_sees_its_patient_only(world: dict[str, Any]) -> None:
    server, issuer = world["server"], world["issuer"]
    token = issuer.token(server.url, "launch/patient patient/*.rs", patient=world["alice"])
    with httpx.Client(base_url=server.url, timeout=120, headers=bearer(token)) as mine:
        assert list(rows_of(mine.get("/ui/patients").text)) == [world["alice"]]
        assert mine.get(f"/ui/patients/{world['bruno']}").status_code == 404
        assert mine.get(f"/Patient/{world['bruno']}/$cgm-metrics").status_code == 404
        assert mine.get(f"/Patient/{world['alice']}/$cgm-metrics").status_code == 200
        stored = mine.get(f"/Patient/{world['alice']}/$cgm-metrics", params={"persist": "true"})
        assert stored.status_code == 403  # read-only scopes: nothing stored
    anonymous = httpx.get(f"{server.url}/ui/patients", timeout=60)
    assert anonymous.status_code == 401


def chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-dev-shm-usage", "--hide-scrollbars", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_the_pages_in_a_real_browser(
    world: dict[str, Any], open_server: RunningServer, tmp_path: Path
) -> None:
    pages = {
        "patients": f"{open_server.url}/ui/patients",
        "agp": f"{open_server.url}/ui/patients/{world['alice']}",
    }
    for name, url in pages.items():
        shot = tmp_path / f"{name}.png"
        done = chromium("--window-size=1200,1600", f"--screenshot={shot}", url, cwd=tmp_path)
        assert shot.exists() and shot.read_bytes().startswith(b"\x89PNG"), done.stderr[-2000:]
        dom = chromium("--dump-dom", url, cwd=tmp_path).stdout
        if name == "agp":
            for panel in ("agp-metrics", "agp-tir", "agp-modal-day", "agp-daily"):
                assert f'id="{panel}"' in dom, panel
            assert dom.count("data:image/svg+xml;base64,") == 3
        else:
            assert dom.count("<tr data-patient=") == 3


@pytest.mark.skipif(PDFTOPPM is None, reason=NO_PDFTOPPM)
def test_the_agp_pdf_as_png_pages(world: dict[str, Any], tmp_path: Path) -> None:
    pdf = world["admin"].get(f"/Patient/{world['alice']}/$agp",
                             headers={"Accept": "application/pdf"})
    assert pdf.status_code == 200
    (tmp_path / "agp.pdf").write_bytes(pdf.content)
    subprocess.run([PDFTOPPM, "-png", "-r", "50", "agp.pdf", "page"], cwd=tmp_path,
                   check=True, timeout=120)
    pages = sorted(tmp_path.glob("page*.png"))
    assert len(pages) == 1 and pages[0].read_bytes().startswith(b"\x89PNG")
