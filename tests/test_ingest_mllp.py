"""HL7 v2 over MLLP into real storage: a listener on 127.0.0.1 storing into the database of a
running server (its own storage, as `diatabase mllp` has), the data searched over HTTP."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from fhir_server.ingest.mllp_config import MllpConfig
from fhir_server.ingest.mllp_listener import start_listener
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage import open_storage
from mappers.mllp import MllpClient, send_mllp
from tests.conftest import RunningServer, free_port
from tests.test_ingest_convert import GLUCOSE_ORU

INS_TEST = "urn:oid:1.2.250.1.213.1.4.10"
LOINC = "http://loinc.org"
ROOT = Path(__file__).parent.parent


def oru(control_id: str, ins: str, value: str = "95", status: str = "F",
        when: str = "20240601080000", order: str | None = None) -> str:
    return "\r".join([
        f"MSH|^~\\&|METER|CLINIC|DIATABASE|DIA|20240601120000||ORU^R01|{control_id}|P|2.5",
        f"PID|1||{ins}^^^&1.2.250.1.213.1.4.10&ISO^INS||DOE^JANE",
        f"OBR|1||{order or 'F-' + control_id}^CLINIC|2339-0^Glucose^LN",
        f"OBX|1|NM|2339-0^Glucose^LN||{value}|mg/dL|70-110|N|||{status}|||{when}",
    ])


def segment(ack: str, name: str) -> list[str]:
    return next(s for s in ack.split("\r") if s.startswith(name)).split("|")


def total(client: httpx.Client, path: str, **params: str) -> int:
    response = client.get(path, params={**params, "_total": "accurate", "_count": "0"})
    assert response.status_code == 200, response.text
    return response.json()["total"]


def patient_id(client: httpx.Client, ins: str) -> str:
    [entry] = client.get("/Patient", params={"identifier": f"{INS_TEST}|{ins}"}).json()["entry"]
    return entry["resource"]["id"]


class Listener:
    """`start_listener` on its own event loop thread, with its own storage on the database."""

    def __init__(self, db_url: str, timezone: str | None = None, listener_options=None,
                 **config_options) -> None:
        listener_options = listener_options or {}
        settings = Settings(db_url=db_url)
        self.service = FhirService(open_storage(db_url), settings)
        self.loop = asyncio.new_event_loop()
        config = MllpConfig(host="127.0.0.1", port=0, timezone=timezone, **config_options)
        self.server = self.loop.run_until_complete(
            start_listener(self.service, config, **listener_options)
        )
        self.port = self.server.sockets[0].getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def send(self, message: str | bytes) -> str:
        return send_mllp("127.0.0.1", self.port, message)

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=60)
        self.loop.close()
        self.service.storage.close()


@pytest.fixture(scope="module")
def listener(server: RunningServer) -> Iterator[Listener]:
    running = Listener(server.app.state.settings.db_url, timezone="Europe/Paris")
    yield running
    running.close()


def test_stored_message_is_acknowledged_and_searchable(
    listener: Listener, client: httpx.Client
) -> None:
    ack = listener.send(GLUCOSE_ORU)
    assert segment(ack, "MSA")[1:3] == ["AA", "MSG-GLU-0001"]
    assert segment(ack, "MSH")[2:6] == ["DIATABASE", "DIATABASE", "LABO",
                                    "CHU-DIAB^1.2.250.1.999.1.1^ISO"]
    assert "\rERR" not in ack
    subject = f"Patient/{patient_id(client, '1234567890123')}"
    [glucose] = client.get("/Observation", params={
        "subject": subject, "code": f"{LOINC}|2345-7"}).json()["entry"]
    assert glucose["resource"]["valueQuantity"]["value"] == 126
    assert total(client, "/Observation", subject=subject) == 4
    assert total(client, "/DiagnosticReport", subject=subject) == 1

    # The same message again: AA, and nothing new (not even a new version).
    before = {t: total(client, f"/{t}") for t in ("Patient", "Observation", "DiagnosticReport",
                                                 "Specimen", "Encounter")}
    with MllpClient("127.0.0.1", listener.port) as sender:
        assert segment(sender.send(GLUCOSE_ORU), "MSA")[1] == "AA"
        assert segment(sender.send(GLUCOSE_ORU), "MSA")[1] == "AA"
    assert {t: total(client, f"/{t}") for t in before} == before
    again = client.get(f"/Observation/{glucose['resource']['id']}").json()
    assert again["meta"]["versionId"] == glucose["resource"]["meta"]["versionId"]


def test_corrected_result_updates_the_same_observation(
    listener: Listener, client: httpx.Client
) -> None:
    preliminary = oru("C-1", "MLLP-CORR", "95", "P", order="ORD-9")
    assert segment(listener.send(preliminary), "MSA")[1] == "AA"
    subject = f"Patient/{patient_id(client, 'MLLP-CORR')}"
    [first] = client.get("/Observation", params={"subject": subject}).json()["entry"]
    assert first["resource"]["status"] == "preliminary"
    # Times without an offset are read in the listener's zone (Europe/Paris, summer time).
    assert first["resource"]["effectiveDateTime"] == "2024-06-01T08:00:00+02:00"
    corrected = oru("C-2", "MLLP-CORR", "97", "C", order="ORD-9")
    assert segment(listener.send(corrected), "MSA")[1] == "AA"
    [second] = client.get("/Observation", params={"subject": subject}).json()["entry"]
    assert second["resource"]["id"] == first["resource"]["id"]
    assert second["resource"]["valueQuantity"]["value"] == 97
    assert second["resource"]["status"] == "corrected"
    assert second["resource"]["meta"]["versionId"] == "2"


def test_server_refusal_gives_ae_with_the_outcome_text(
    listener: Listener, client: httpx.Client
) -> None:
    # Two registrations with one INS: the message's conditional create cannot pick one.
    for _ in range(2):
        response = client.post("/Patient", json={
            "resourceType": "Patient", "identifier": [{"system": INS_TEST, "value": "MLLP-DUP"}]})
        assert response.status_code == 201
    ack = listener.send(oru("DUP-1", "MLLP-DUP"))
    assert segment(ack, "MSA")[1:3] == ["AE", "DUP-1"]
    err = segment(ack, "ERR")
    assert err[3].startswith("207^")  # application error
    assert "rejected by the server" in err[8] and "matched several" in err[8]
    # All or nothing: neither the report nor the result of that message was stored...
    assert total(client, "/DiagnosticReport", identifier="urn:id:CLINIC|F-DUP-1") == 0
    assert total(client, "/Observation", identifier="urn:id:CLINIC|F-DUP-1-1") == 0
    # ...while the same message for a patient the server can match is.
    assert segment(listener.send(oru("DUP-1", "MLLP-SINGLE")), "MSA")[1] == "AA"
    assert total(client, "/DiagnosticReport", identifier="urn:id:CLINIC|F-DUP-1") == 1
    assert total(client, "/Observation", identifier="urn:id:CLINIC|F-DUP-1-1") == 1


def test_unmappable_messages_get_ar_or_ae_and_the_connection_lives(
    listener: Listener,
) -> None:
    with MllpClient("127.0.0.1", listener.port) as sender:
        unsupported = sender.send(oru("U-1", "MLLP-U").replace("ORU^R01", "MFN^M02"))
        assert segment(unsupported, "MSA")[1:3] == ["AR", "U-1"]
        assert segment(unsupported, "ERR")[3].startswith("200^")
        no_pid = "\r".join([
            "MSH|^~\\&|ADT|CLINIC|DIATABASE|DIA|20240601120000||ADT^A01|NOPID|P|2.5",
            "PV1|1|I",
        ])
        ack = sender.send(no_pid)
        assert segment(ack, "MSA")[1:3] == ["AE", "NOPID"]
        assert segment(ack, "ERR")[2] == "PID^1"
        assert segment(sender.send(oru("OK-1", "MLLP-OK")), "MSA")[1] == "AA"


def test_concurrent_senders_are_all_stored(listener: Listener, client: httpx.Client) -> None:
    def sender(worker: int) -> list[str]:
        with MllpClient("127.0.0.1", listener.port) as connection:
            return [
                segment(connection.send(oru(f"W{worker}-{n}", f"MLLP-W{worker}", str(90 + n))),
                        "MSA")[1]
                for n in range(4)
            ]

    with ThreadPoolExecutor(max_workers=4) as pool:
        acks = list(pool.map(sender, range(4)))
    assert acks == [["AA"] * 4] * 4
    for worker in range(4):
        subject = f"Patient/{patient_id(client, f'MLLP-W{worker}')}"
        assert total(client, "/Observation", subject=subject) == 4


def test_the_mllp_command_stores_what_it_receives(
    server: RunningServer, client: httpx.Client
) -> None:
    port = free_port()
    command = [sys.executable, "-m", "fhir_server.cli", "mllp", "--port", str(port),
               "--db", server.app.state.settings.db_url, "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline(), process.stdout.readline()]
        assert f"MLLP listener on 127.0.0.1:{port}" in lines[1], lines
        ack = send_mllp("127.0.0.1", port, oru("CLI-1", "MLLP-CLI", "133"))
        assert segment(ack, "MSA")[1:3] == ["AA", "CLI-1"]
    finally:
        process.terminate()
        process.wait(timeout=60)
    subject = f"Patient/{patient_id(client, 'MLLP-CLI')}"
    [reading] = client.get("/Observation", params={"subject": subject}).json()["entry"]
    assert reading["resource"]["valueQuantity"]["value"] == 133
