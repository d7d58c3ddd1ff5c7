"""Materialized view stores (deid/views.py): filled by `diatabase deid views`, served by
`serve --deid-views` (uvicorn + SQLite) with the same answers as the engine gives, never
stale, never made with other keys. (The keys-only storage search the facade uses with them
is in the storage contract.)

Data: the Synthea bundles of tests/data/fhir/synthea and synthetic French patients
(tests/deid_data.py). The engine's calls are counted by wrapping the running server's
engine (instrumentation, not a mock: the wrapped method still does the work).
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from fhir_server.deid.export import run_export
from fhir_server.deid.keys import signing_key
from fhir_server.deid.recipients import Recipients
from fhir_server.deid.views import ViewStore, fill, fingerprint, follow, view_path
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage import open_storage
from tests.conftest import RunningServer, database_url
from tests.deid_data import french_patients, synthea_bundles, transaction, write_recipients

SECRET = "views-test-master-secret-0123456789"
KEYS = {"alpha": "key-views-alpha", "beta": "key-views-beta"}
ROOT = Path(__file__).resolve().parent.parent
# The `deid views` command runs in a process of its own: an in-memory backend is not there.
pytestmark = pytest.mark.skipif(
    os.environ.get("DIATABASE_TEST_BACKEND") == "mongomock",
    reason="mongomock databases live in the test process only",
)


def auth(recipient: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[recipient]}"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("deid-views")
    # k = 1: the export compared below keeps every patient of this small data set.
    # beta: k = 2, so its patients are served generalized (gender classes only).
    write_recipients(
        folder / "recipients.json",
        KEYS,
        {"alpha": {"kAnonymity": {"k": 1}}, "beta": {"kAnonymity": {"k": 2}}},
    )
    settings = Settings(
        db_url=database_url(folder),
        max_body_bytes=20_000_000,
        deid_secret=SECRET,
        deid_recipients=str(folder / "recipients.json"),
        insecure_dev=True,
    )
    patients = french_patients(count=6, readings=20)
    patients.append(
        {
            "resourceType": "Observation",
            "id": "refuted-1",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
            "subject": {"reference": f"Patient/{patients[0]['id']}"},
            # Not on the allow-list: the rules suppress the whole resource.
            "modifierExtension": [{"url": "http://example.org/refuted", "valueBoolean": True}],
        }
    )
    with RunningServer(settings) as running, httpx.Client(base_url=running.url, timeout=60) as http:
        for bundle in synthea_bundles():
            assert http.post("/", json=bundle, timeout=60).status_code == 200
        response = http.post("/", json=transaction(patients), timeout=60)
        assert response.status_code == 200, response.text[:500]
    names = Recipients.load(folder / "recipients.json", SECRET.encode())
    return {
        "folder": folder,
        "settings": settings,
        "patients": [p for p in patients if p["resourceType"] == "Patient"],
        "recipients": names,
        "views": folder / "views",
    }


def probe_urls(setup: dict[str, Any], recipient: str) -> list[str]:
    engine = setup["recipients"].engine(recipient)
    urls = []
    for patient in setup["patients"][:3]:
        pseudonym = engine.pseudonyms.pseudonym("Patient", patient["id"])
        urls += [
            f"/deid/Patient/{pseudonym}",
            f"/deid/Observation?subject=Patient/{pseudonym}&_count=7",
            f"/deid/Observation?subject=Patient/{pseudonym}&_include=Observation:device",
            f"/deid/Patient/{pseudonym}/$everything",
        ]
    urls += [
        "/deid/Observation?code=http://loinc.org|99504-3&_count=40",
        "/deid/Observation?code=4548-4",  # holds the suppressed resource
        "/deid/Observation?date=ge2000-01-01&_count=25",  # checked on the view
        "/deid/Condition?_count=100",
        "/deid/Encounter?_count=30&_revinclude=Observation:encounter",
    ]
    return urls


def answers(http: httpx.Client, base: str, urls: list[str], recipient: str) -> list[Any]:
    out = []
    for url in urls:
        response = http.get(url, headers=auth(recipient), timeout=60)
        assert response.status_code == 200, (url, response.text[:300])
        # Links and fullUrls name the server's address: compare without it.
        out.append(orjson.loads(response.content.replace(base.encode(), b"BASE")))
    return out


def views_command(setup: dict[str, Any], *options: str) -> list[str]:
    """`diatabase deid views` on the module's database and store folder."""
    return [
        sys.executable,
        "-m",
        "fhir_server.cli",
        "deid",
        "views",
        "--recipients",
        str(setup["folder"] / "recipients.json"),
        "--views",
        str(setup["views"]),
        "--db",
        setup["settings"].db_url,
        "--quiet",
        *options,
    ]


# Without PYTHONUNBUFFERED, as on a clean CI machine: the command's stdout is a pipe,
# block-buffered, as under a supervisor that logs it.
CLI_ENV = {
    **{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
    "DIATABASE_DEID_SECRET": SECRET,
    "PYTHONPATH": str(ROOT),
}


def fill_with_cli(setup: dict[str, Any], *recipients: str) -> str:
    chosen = [arg for rid in recipients for arg in ("--recipient", rid)]
    result = subprocess.run(
        views_command(setup, *chosen), capture_output=True, text=True, env=CLI_ENV, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


class CountingEngine:
    """Counts the running server's engine calls for one recipient."""

    def __init__(self, running: RunningServer, recipient: str) -> None:
        self.engine = running.app.state.deid.recipients.engine(recipient)
        self.calls = 0
        original = self.engine.transform_bytes

        def counted(raw: bytes) -> bytes:
            self.calls += 1
            return original(raw)

        self.engine.transform_bytes = counted  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def baseline(setup: dict[str, Any]) -> dict[str, list[Any]]:
    """The facade's answers without view stores (the engine makes every one)."""
    with (
        RunningServer(setup["settings"]) as running,
        httpx.Client(base_url=running.url, timeout=60) as http,
    ):
        return {r: answers(http, running.url, probe_urls(setup, r), r) for r in KEYS}


@pytest.fixture(scope="module")
def filled(setup: dict[str, Any], baseline: dict[str, list[Any]]) -> str:
    return fill_with_cli(setup, "alpha")


@pytest.fixture()
def views_server(setup: dict[str, Any], filled: str) -> Iterator[RunningServer]:
    with RunningServer(views_settings(setup)) as running:
        yield running


def views_settings(setup: dict[str, Any]) -> Settings:
    return dataclasses.replace(setup["settings"], deid_views=str(setup["views"]))


def test_the_cli_fills_a_store_per_recipient(setup: dict[str, Any], filled: str) -> None:
    match = re.search(r"alpha: (\d+) resources checked, (\d+) pseudonymized", filled)
    assert match is not None, filled
    checked, made = map(int, match.groups())
    assert checked == made > 300
    assert view_path(setup["views"], "alpha").exists()
    assert not view_path(setup["views"], "beta").exists()  # only the one asked for
    again = fill_with_cli(setup, "alpha")
    assert f"alpha: {checked} resources checked, 0 pseudonymized, 0 removed" in again


def test_a_fill_removes_the_rows_of_resources_deleted_while_nothing_followed(
    setup: dict[str, Any], filled: str
) -> None:
    # An Immunization of a Synthea patient: in none of the answers compared above.
    with (
        RunningServer(setup["settings"]) as running,
        httpx.Client(base_url=running.url, timeout=60) as http,
    ):
        found = http.get("/Immunization?_count=1").json()
        rid = found["entry"][0]["resource"]["id"]
        assert http.delete(f"/Immunization/{rid}").status_code in (200, 204)
    store = ViewStore(
        view_path(setup["views"], "alpha"), fingerprint(setup["recipients"].engine("alpha"))
    )
    try:
        assert store.versions("Immunization", [rid])  # still there after the deletion
        out = fill_with_cli(setup, "alpha")
        assert re.search(r"alpha: \d+ resources checked, 0 pseudonymized, 1 removed", out), out
        assert not store.versions("Immunization", [rid])
    finally:
        store.close()


def test_views_give_the_engines_answers_without_the_engine(
    setup: dict[str, Any], baseline: dict[str, list[Any]], views_server: RunningServer
) -> None:
    alpha = CountingEngine(views_server, "alpha")
    beta = CountingEngine(views_server, "beta")
    with httpx.Client(base_url=views_server.url, timeout=60) as http:
        assert (
            answers(http, views_server.url, probe_urls(setup, "alpha"), "alpha")
            == baseline["alpha"]
        )
        # beta has no store: its engine serves it, with its own answers.
        assert (
            answers(http, views_server.url, probe_urls(setup, "beta"), "beta") == baseline["beta"]
        )
    assert alpha.calls == 0
    assert beta.calls > 300
    everything = baseline["alpha"][3]
    assert everything["total"] > 20
    suppressed = baseline["alpha"][-4]
    assert all(e["resource"]["id"] for e in suppressed.get("entry", []))
    assert not any("refuted" in json.dumps(e) for e in suppressed.get("entry", []))


def test_an_update_after_the_fill_is_served_current_and_follow_catches_up(
    setup: dict[str, Any], views_server: RunningServer
) -> None:
    engine = setup["recipients"].engine("alpha")
    patient = setup["patients"][4]
    pseudonym = engine.pseudonyms.pseudonym("Patient", patient["id"])
    counting = CountingEngine(views_server, "alpha")
    with httpx.Client(base_url=views_server.url, timeout=60) as http:
        stored = http.get(f"/Patient/{patient['id']}").json()
        stored["gender"] = "other" if stored.get("gender") != "other" else "unknown"
        assert http.put(f"/Patient/{patient['id']}", json=stored).status_code == 200
        served = http.get(f"/deid/Patient/{pseudonym}", headers=auth("alpha")).json()
        assert served["gender"] == stored["gender"]  # the stale row is not used
        assert "versionId" not in served["meta"]  # meta.versionId is not released
        assert counting.calls == 1

        found = http.get(
            f"/deid/Observation?subject=Patient/{pseudonym}&_count=3", headers=auth("alpha")
        ).json()
        reading = found["entry"][0]["resource"]
        real_id = engine.pseudonyms.real_id("Observation", reading["id"])
        assert http.delete(f"/Observation/{real_id}").status_code in (200, 204)
        assert (
            http.get(f"/deid/Observation/{reading['id']}", headers=auth("alpha")).status_code == 404
        )
        again = http.get(
            f"/deid/Observation?subject=Patient/{pseudonym}&_count=3", headers=auth("alpha")
        ).json()
        assert reading["id"] not in {e["resource"]["id"] for e in again["entry"]}

    service = FhirService(open_storage(setup["settings"].db_url), setup["settings"])
    store = ViewStore(view_path(setup["views"], "alpha"), fingerprint(engine))
    try:
        before = store.count()
        report = follow(
            service, setup["recipients"].fresh_engine("alpha"), store, ["Patient", "Observation"]
        )
        assert report.written == 1 and report.removed == 1
        assert store.count() == before - 1
    finally:
        store.close()
        service.storage.close()
    # A server started now serves both from the store.
    with (
        RunningServer(views_settings(setup)) as running,
        httpx.Client(base_url=running.url, timeout=60) as http,
    ):
        fresh = CountingEngine(running, "alpha")
        served = http.get(f"/deid/Patient/{pseudonym}", headers=auth("alpha")).json()
        assert served["gender"] == stored["gender"]
        page = http.get(
            f"/deid/Observation?subject=Patient/{pseudonym}&_count=3", headers=auth("alpha")
        ).json()
        assert reading["id"] not in {e["resource"]["id"] for e in page["entry"]}
    assert fresh.calls == 0


def test_a_store_made_with_other_keys_is_never_read(setup: dict[str, Any], tmp_path: Path) -> None:
    ours = setup["recipients"].engine("alpha")
    other_master = Recipients.load(
        setup["folder"] / "recipients.json", b"another-master-secret-000"
    )
    theirs = other_master.engine("alpha")
    assert fingerprint(theirs) != fingerprint(ours)
    service = FhirService(open_storage(setup["settings"].db_url), setup["settings"])
    path = tmp_path / "alpha.sqlite"
    try:
        foreign = ViewStore(path, fingerprint(theirs))
        fill(service, theirs, foreign, ["Condition"])
        assert foreign.count() > 0
        foreign.close()
        store = ViewStore(path, fingerprint(ours))
        assert not store.usable()
        assert store.reset_if_foreign()
        assert store.count() == 0 and store.usable()
        store.close()
    finally:
        service.storage.close()


def test_an_export_copies_the_store_and_writes_the_same_files(
    setup: dict[str, Any], filled: str, tmp_path: Path
) -> None:
    service = FhirService(open_storage(setup["settings"].db_url), setup["settings"])
    key = signing_key(SECRET.encode())
    recipients = setup["recipients"]
    store = ViewStore(view_path(setup["views"], "alpha"), fingerprint(recipients.engine("alpha")))
    try:
        plain = run_export(service, recipients.fresh_engine("alpha"), tmp_path / "plain", key)
        engine = recipients.fresh_engine("alpha")
        calls = []
        original = engine.transform_bytes
        engine.transform_bytes = lambda raw: calls.append(1) or original(raw)  # type: ignore[method-assign]
        copied = run_export(service, engine, tmp_path / "copied", key, views=store)
    finally:
        store.close()
        service.storage.close()
    assert copied["output"] == plain["output"]  # counts, sizes and sha256 of every file
    assert copied["kAnonymity"] == plain["kAnonymity"]
    assert copied["suppressedResources"] == plain["suppressedResources"]
    assert sum(item["count"] for item in plain["output"]) > 300
    # The refuted reading, and the server's own StructureDefinitions and SearchParameters
    # (their required url and name are text the rules remove: not released).
    assert plain["suppressedResources"]["byRules"] >= 1
    assert not calls


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_the_cli_follows_new_writes_until_interrupted(
    setup: dict[str, Any], filled: str, stop: signal.Signals
) -> None:
    """The fill's report reaches a piped stdout before any follow has news (it stayed in
    the buffer before, so this test failed on every clean clone without PYTHONUNBUFFERED),
    and SIGINT or SIGTERM (which killed it without closing its stores) ends it with 0."""
    command = views_command(setup, "--recipient", "alpha", "--follow", "0.2")
    # stderr to a file, and faulthandler on: if it ever hangs, SIGABRT shows where
    errors = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (removed when closed)
    # Started with SIGINT ignored, as a shell starts a background command (`cmd &`, and so
    # a test suite run from a background job): the follower must still stop on it.
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
        env={**CLI_ENV, "PYTHONFAULTHANDLER": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    lines: queue.Queue[str] = queue.Queue()
    # Read on a thread: a follow loop that never prints fails the test instead of hanging it.
    threading.Thread(
        target=lambda: [lines.put(line) for line in process.stdout], daemon=True
    ).start()
    try:
        assert "resources checked" in lines.get(timeout=120)  # the fill
        # A Basic: in none of the answers compared above.
        with (
            RunningServer(setup["settings"]) as running,
            httpx.Client(base_url=running.url, timeout=60) as http,
        ):
            created = http.post("/Basic", json={"resourceType": "Basic", "code": {"text": "x"}})
            assert created.status_code == 201
        assert lines.get(timeout=60).strip() == "alpha: 1 made, 0 removed"
    finally:
        process.send_signal(stop)
        try:
            code = process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            process.wait(timeout=60)
            errors.seek(0)
            raise AssertionError(f"still running after {stop.name}:\n{errors.read()}") from None
        assert code == 0
    store = ViewStore(
        view_path(setup["views"], "alpha"), fingerprint(setup["recipients"].engine("alpha"))
    )
    try:
        assert store.versions("Basic", [created.json()["id"]]) == {created.json()["id"]: 1}
    finally:
        store.close()
