"""Delivery from real server processes. It survives a kill -9 of the server: events are
committed with the writes that cause them (the outbox), and the delivered mark moves only
once the receiver took them.

The server runs as a real process (`diatabase serve`); the receiver refuses notifications
until the server has been killed, so every event is between its write and its delivery
when the SIGKILL comes. After a restart on the same database each event arrives once,
with its event number.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.served import ServedProcess
from tests.subscription_receiver import Receiver, wait_until
from tests.test_subscriptions_rest_hook import glucose, subscription

FAST_RETRIES = {
    "DIATABASE_SUBSCRIPTION_RETRY_BASE": "0.05",
    "DIATABASE_SUBSCRIPTION_RETRY_MAX": "0.2",
    "DIATABASE_SUBSCRIPTION_MAX_ATTEMPTS": "1000000",
    "DIATABASE_SUBSCRIPTION_POLL_SECONDS": "0.2",
}


def test_kill_9_between_writes_and_their_delivery_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "killed.db"
    with Receiver(always_fail=True) as receiver:
        server = ServedProcess(db, env=FAST_RETRIES).start()
        try:
            with httpx.Client(base_url=server.url, timeout=120) as client:
                patient = client.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
                sid = client.post("/Subscription", json=subscription(
                    f"Observation?patient=Patient/{patient}", receiver.url)).json()["id"]
                wait_until(lambda: client.get(f"/Subscription/{sid}").json()["status"]
                           == "active")
                for value in (90, 80, 70):
                    answer = client.post("/Observation", json=glucose(patient, value))
                    assert answer.status_code == 201
                refused = receiver.refused
                wait_until(lambda: receiver.refused > refused)  # a delivery was tried
            server.signal(signal.SIGKILL)
            server.proc.wait(timeout=60)
        finally:
            server.stop()
        assert receiver.received == []
        receiver.always_fail = False
        restarted = ServedProcess(db, env=FAST_RETRIES).start()
        try:
            got = receiver.wait_for(3)
            with httpx.Client(base_url=restarted.url, timeout=120) as client:
                status = client.get(f"/Subscription/{sid}/$status").json()
            # nothing more than the three events comes (each delivered once)
            assert [r.event_number for r in got] == [1, 2, 3]
            assert [r.json()["valueQuantity"]["value"] for r in got] == [90, 80, 70]
            parameters = {p["name"]: p for p in status["entry"][0]["resource"]["parameter"]}
            assert parameters["events-since-subscription-start"]["valueString"] == "3"
        finally:
            restarted.stop()
        assert [r.event_number for r in receiver.received] == [1, 2, 3]


def test_delivery_from_a_process_of_its_own(tmp_path: Path) -> None:
    """The server with DIATABASE_SUBSCRIPTION_DELIVERY=0 sends nothing; `diatabase
    subscriptions deliver` on the same database activates the subscription and delivers."""
    db = tmp_path / "apart.db"
    env = {**FAST_RETRIES, "DIATABASE_SUBSCRIPTION_DELIVERY": "0",
           "DIATABASE_SUBSCRIPTION_HTTP_LOOPBACK": "1"}
    with Receiver() as receiver:
        server = ServedProcess(db, env=env).start()
        deliverer = None
        try:
            with httpx.Client(base_url=server.url, timeout=120) as client:
                patient = client.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
                sid = client.post("/Subscription", json=subscription(
                    f"Observation?patient=Patient/{patient}", receiver.url)).json()["id"]
                written = client.post("/Observation", json=glucose(patient, 65)).json()
                assert client.get(f"/Subscription/{sid}").json()["status"] == "requested"
                deliverer = subprocess.Popen(
                    [sys.executable, "-m", "fhir_server.cli", "subscriptions", "deliver",
                     "--db", f"sqlite:///{db}"],
                    env={**server.env}, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                )
                got = receiver.wait_for(1)
                assert got[0].path == f"/hook/Observation/{written['id']}"
                assert got[0].event_number == 1
                wait_until(lambda: client.get(f"/Subscription/{sid}").json()["status"]
                           == "active")
        finally:
            if deliverer is not None:
                deliverer.send_signal(signal.SIGTERM)
                assert deliverer.wait(timeout=60) == 0
            server.stop()
