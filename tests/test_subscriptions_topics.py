"""Topic-based subscriptions (the Subscriptions backport IG on R4) and the diabetes topics,
end to end: a real server on 127.0.0.1 and a real receiving HTTP server.

Each topic fires exactly when it should: threshold boundaries in mg/dL and mmol/L, a Group
member, never another patient, in order; the timer topic (CGM data missing) runs on a
clock the test moves (`ManualClock`), so nothing waits for hours or sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_server.subscriptions.manager import ManualClock
from fhir_server.subscriptions.notify import STATUS_PROFILE
from fhir_server.subscriptions.spec import (
    FILTER_CRITERIA,
    HEARTBEAT_PERIOD,
    PAYLOAD_CONTENT,
)
from fhir_server.subscriptions.topics import BASE
from tests.conftest import RunningServer
from tests.subscription_receiver import Received, Receiver, wait_until
from tests.test_subscriptions_rest_hook import new_patient, post, settings

CGM = "99504-3"
METER = "2339-0"
HBA1C = "4548-4"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[RunningServer, httpx.Client]]:
    with RunningServer(settings(tmp_path)) as server, httpx.Client(
        base_url=server.url, timeout=120
    ) as client:
        yield server, client


def reading(patient: str, value: float, unit: str = "mg/dL", code: str = METER,
            at: str = "2024-05-01T08:00:00+02:00") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": at,
        "valueQuantity": {"value": value, "unit": unit,
                          "system": "http://unitsofmeasure.org", "code": unit},
    }


def topic_subscription(topic: str, filter_criteria: str, endpoint: str,
                       content: str = "id-only", heartbeat: int | None = None) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json",
        "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": content}]},
    }
    if heartbeat is not None:
        channel["extension"] = [{"url": HEARTBEAT_PERIOD, "valueUnsignedInt": heartbeat}]
    return {
        "resourceType": "Subscription",
        "meta": {"profile": ["http://hl7.org/fhir/uv/subscriptions-backport/"
                             "StructureDefinition/backport-subscription"]},
        "status": "requested",
        "reason": "test",
        "criteria": f"{BASE}/{topic}",
        "_criteria": {"extension": [{"url": FILTER_CRITERIA, "valueString": filter_criteria}]},
        "channel": channel,
    }


def subscribe(client: httpx.Client, body: dict[str, Any]) -> str:
    answer = client.post("/Subscription", json=body)
    assert answer.status_code == 201, answer.text
    sid = answer.json()["id"]
    wait_until(lambda: client.get(f"/Subscription/{sid}").json()["status"] == "active")
    return sid


def status_of(notification: Received) -> dict[str, Any]:
    bundle = notification.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "history"
    status = bundle["entry"][0]["resource"]
    assert status["resourceType"] == "Parameters"
    assert status["meta"]["profile"] == [STATUS_PROFILE]
    return {p["name"]: p for p in status["parameter"]}


def focus_values(notifications: list[Received]) -> list[Any]:
    values = []
    for notification in notifications:
        for entry in notification.json()["entry"][1:]:
            values.append(entry["resource"]["valueQuantity"]["value"])
    return values


def test_severe_hypoglycaemia_fires_below_the_threshold_in_both_units(served):
    _, client = served
    mine, other = new_patient(client), new_patient(client)
    with Receiver() as default, Receiver() as mmol:
        sid = subscribe(client, topic_subscription(
            "severe-hypoglycaemia", f"Observation?patient=Patient/{mine}", default.url,
            content="full-resource"))
        subscribe(client, topic_subscription(
            "severe-hypoglycaemia",
            f"Observation?patient=Patient/{mine}&threshold=3.0|http://unitsofmeasure.org|mmol/L",
            mmol.url, content="full-resource"))
        post(client, reading(other, 40))  # another patient: never
        for value, unit in ((54, "mg/dL"), (53.9, "mg/dL"), (3.0, "mmol/L"), (2.99, "mmol/L"),
                            (54.1, "mg/dL"), (2.9, "mmol/L"), (120, "mg/dL")):
            post(client, reading(mine, value, unit, code=CGM if unit == "mg/dL" else "15074-8"))
        got = default.wait_for(3)
        got_mmol = mmol.wait_for(3)
        # a marker write after which nothing more may come for either
        post(client, reading(mine, 20))
        default.wait_for(4)
        mmol.wait_for(4)
    # below 54 mg/dL: 53.9 mg/dL, 2.99 mmol/L (53.87 mg/dL), 2.9 mmol/L; not 54, not
    # 3.0 mmol/L (54.05 mg/dL), not 54.1
    assert focus_values(got[:3]) == [53.9, 2.99, 2.9]
    # below 3.0 mmol/L: 53.9 mg/dL (2.992), 2.99 and 2.9 mmol/L; not 3.0 mmol/L, not 54.1
    # mg/dL (3.003 mmol/L) — but 54 mg/dL (2.997 mmol/L) is below 3.0 mmol/L
    assert focus_values(got_mmol[:3]) == [54, 53.9, 2.99]
    assert focus_values(mmol.received[3:4]) == [2.9]
    assert [status_of(n)["notification-event"]["part"][0]["valueString"]
            for n in default.received] == ["1", "2", "3", "4"]
    # activation kept what the client wrote (the backport profile claimed in meta)
    stored = client.get(f"/Subscription/{sid}").json()
    assert stored["meta"]["profile"] == [
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription"]
    first = status_of(got[0])
    assert first["topic"]["valueCanonical"] == f"{BASE}/severe-hypoglycaemia"
    assert first["type"]["valueCode"] == "event-notification"
    assert first["subscription"]["valueReference"]["reference"].endswith(f"Subscription/{sid}")
    for notification in default.received:
        for entry in notification.json()["entry"][1:]:
            assert entry["resource"]["subject"]["reference"] == f"Patient/{mine}"
            assert entry["fullUrl"].endswith(f"Observation/{entry['resource']['id']}")


def test_a_group_members_readings_fire_and_others_do_not(served):
    _, client = served
    member, outsider = new_patient(client), new_patient(client)
    group = post(client, {"resourceType": "Group", "type": "person", "actual": True,
                          "member": [{"entity": {"reference": f"Patient/{member}"}}]})
    with Receiver() as receiver:
        subscribe(client, topic_subscription(
            "severe-hypoglycaemia", f"Observation?group=Group/{group['id']}", receiver.url))
        post(client, reading(outsider, 40))
        low = post(client, reading(member, 41))
        post(client, reading(outsider, 42))
        got = receiver.wait_for(1)
        marker = post(client, reading(member, 43))
        got = receiver.wait_for(2)
    focus = [n.json()["entry"][1]["fullUrl"].rsplit("/", 1)[-1] for n in got]
    assert focus == [low["id"], marker["id"]]
    assert "resource" not in got[0].json()["entry"][1]  # id-only


def test_new_hba1c_and_new_resource_feeds(served):
    _, client = served
    patient = new_patient(client)
    with Receiver() as hba1c, Receiver() as feed:
        subscribe(client, topic_subscription("new-hba1c", f"Observation?patient=Patient/{patient}",
                                             hba1c.url))
        subscribe(client, topic_subscription("new-resource", "Condition?", feed.url,
                                             content="full-resource"))
        post(client, reading(patient, 100))  # glucose: not an HbA1c
        a1c = reading(patient, 7.1, unit="%", code=HBA1C)
        created = post(client, a1c)
        client.put(f"/Observation/{created['id']}", json={**created, "status": "amended"})
        condition = post(client, {
            "resourceType": "Condition", "subject": {"reference": f"Patient/{patient}"},
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E10"}]}})
        client.put(f"/Condition/{condition['id']}", json=condition)  # an update: not new
        marker = post(client, {"resourceType": "Condition",
                               "subject": {"reference": f"Patient/{patient}"}})
        got = hba1c.wait_for(1)
        fed = feed.wait_for(2)
    assert [n.json()["entry"][1]["fullUrl"].rsplit("/", 1)[-1] for n in got] == [created["id"]]
    assert [n.json()["entry"][1]["resource"]["id"] for n in fed] == [
        condition["id"], marker["id"]]
    assert len(hba1c.received) == 1


def test_prolonged_hyperglycaemia_fires_once_per_episode(served):
    _, client = served
    patient = new_patient(client)

    def at(minute: int) -> str:
        return f"2024-05-01T{8 + minute // 60:02d}:{minute % 60:02d}:00Z"

    with Receiver() as receiver:
        subscribe(client, topic_subscription(
            "prolonged-hyperglycaemia",
            f"Observation?patient=Patient/{patient}&duration=30", receiver.url,
            content="full-resource"))
        for minute, value in ((0, 260), (10, 270), (20, 200), (30, 300), (50, 300),
                              (59, 251), (60, 280), (70, 290), (80, 250), (90, 260)):
            post(client, reading(patient, value, code=CGM, at=at(minute)))
        # 200 at 20 ends the first episode; the second starts at 30 and lasts 30 minutes
        # at 60; 250 at 80 is not above 250 and ends it
        for minute, value in ((100, 262), (121, 263)):
            post(client, reading(patient, value, code=CGM, at=at(minute)))
        got = receiver.wait_for(2)
    assert focus_values(got) == [280, 263]


def test_cgm_data_missing_fires_on_the_timer_once_per_gap(served):
    server, client = served
    clock = ManualClock(1_800_000_000.0)
    subscriptions = server.app.state.fhir.subscriptions
    subscriptions.clock = clock
    worker = server.app.state.subscription_worker
    watched, other = new_patient(client), new_patient(client)

    def a_full_round() -> None:
        rounds = worker.rounds
        worker.wake()
        wait_until(lambda: worker.rounds >= rounds + 2)

    with Receiver() as receiver:
        subscribe(client, topic_subscription(
            "cgm-data-missing", f"Observation?patient=Patient/{watched}&period=60",
            receiver.url))
        clock.advance(59 * 60)
        a_full_round()
        assert receiver.received == []
        post(client, reading(other, 100, code=CGM))  # another patient's data re-arms nothing
        clock.advance(2 * 60)
        first = receiver.wait_for(1)
        clock.advance(120 * 60)
        a_full_round()
        assert len(receiver.received) == 1  # once per gap
        post(client, reading(watched, 100, code=CGM))  # data again: re-armed
        clock.advance(30 * 60)
        a_full_round()
        assert len(receiver.received) == 1
        clock.advance(31 * 60)
        second = receiver.wait_for(2)
    for notification in (first[0], second[1]):
        assert notification.json()["entry"][1]["fullUrl"].endswith(f"Patient/{watched}")
    assert [status_of(n)["notification-event"]["part"][0]["valueString"]
            for n in second] == ["1", "2"]


def test_heartbeats_status_and_events(served):
    _, client = served
    patient = new_patient(client)
    with Receiver() as receiver:
        sid = subscribe(client, topic_subscription(
            "new-resource", f"Observation?patient=Patient/{patient}", receiver.url,
            heartbeat=1))
        # heartbeats: no event, the count of events so far
        beat = wait_until(lambda: [r for r in receiver.received
                                   if status_of(r)["type"]["valueCode"] == "heartbeat"])
        assert status_of(beat[0])["events-since-subscription-start"]["valueString"] == "0"
        first = post(client, reading(patient, 100))
        second = post(client, reading(patient, 101))
        wait_until(lambda: len(receiver.events()) >= 2)
    status = client.get(f"/Subscription/{sid}/$status").json()
    parameters = {p["name"]: p for p in status["entry"][0]["resource"]["parameter"]}
    assert parameters["type"]["valueCode"] == "query-status"
    assert parameters["events-since-subscription-start"]["valueString"] == "2"
    events = client.get(f"/Subscription/{sid}/$events",
                        params={"eventsSinceNumber": "2", "content": "full-resource"}).json()
    assert events["type"] == "history"
    assert [e["resource"]["id"] for e in events["entry"][1:]] == [second["id"]]
    everything = client.get(f"/Subscription/{sid}/$events").json()
    assert [e["fullUrl"].rsplit("/", 1)[-1] for e in everything["entry"][1:]] == [
        first["id"], second["id"]]
    numbers = [p["part"][0]["valueString"] for p in everything["entry"][0]["resource"]["parameter"]
               if p["name"] == "notification-event"]
    assert numbers == ["1", "2"]


def test_topic_filters_are_checked_when_subscribing(served):
    _, client = served
    statement = client.get("/metadata").json()
    entry = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Subscription")
    listed = {e["valueCanonical"] for e in entry["extension"]}
    assert f"{BASE}/severe-hypoglycaemia" in listed and f"{BASE}/cgm-data-missing" in listed
    assert {o["name"] for o in entry["operation"]} >= {"status", "events"}
    bad = [
        ("severe-hypoglycaemia", "Condition?", "is about Observation"),
        ("severe-hypoglycaemia", "Observation?threshold=54|http://unitsofmeasure.org|kg",
         "mg/dL or mmol/L"),
        ("cgm-data-missing", "Observation?", "patient=Patient/x or group=Group/x"),
        ("prolonged-hyperglycaemia", "Observation?duration=-1", "more than 0"),
    ]
    for topic, criteria, message in bad:
        answer = client.post("/Subscription", json=topic_subscription(
            topic, criteria, "https://hooks.example.org/x"))
        assert answer.status_code == 400, answer.text
        assert message in answer.text
    unknown = topic_subscription("severe-hypoglycaemia", "Observation?",
                                 "https://hooks.example.org/x")
    unknown["criteria"] = f"{BASE}/no-such-topic"
    assert client.post("/Subscription", json=unknown).status_code == 400
