"""The websocket channel with a real websocket client (the `websockets` library) against a
real server on 127.0.0.1: a binding token from `$get-ws-binding-token`, notification Bundles
in order for a topic subscription, `ping <id>` for an R4 one, forged tokens refused, and
events written while no socket was bound delivered once one binds."""

from __future__ import annotations

import json

from websockets.sync.client import connect

from tests.subscription_receiver import wait_until
from tests.test_subscriptions_rest_hook import new_patient, post
from tests.test_subscriptions_topics import reading, served, topic_subscription  # noqa: F401


def websocket_subscription(client, criteria_topic: str, filter_criteria: str) -> str:
    body = topic_subscription(criteria_topic, filter_criteria, "")
    body["channel"] = {"type": "websocket", "payload": "application/fhir+json",
                       "_payload": body["channel"]["_payload"]}
    answer = client.post("/Subscription", json=body)
    assert answer.status_code == 201, answer.text
    sid = answer.json()["id"]
    wait_until(lambda: client.get(f"/Subscription/{sid}").json()["status"] == "active")
    return sid


def test_websocket_notifications_in_order_after_binding_with_a_token(served):  # noqa: F811
    server, client = served
    patient, other = new_patient(client), new_patient(client)
    sid = websocket_subscription(client, "severe-hypoglycaemia",
                                 f"Observation?patient=Patient/{patient}")
    early = post(client, reading(patient, 40))  # before any socket: waits in the outbox
    token = client.get(f"/Subscription/{sid}/$get-ws-binding-token").json()
    parameters = {p["name"]: p for p in token["parameter"]}
    url = parameters["websocket-url"]["valueUrl"]
    assert url.startswith("ws://127.0.0.1:")
    with connect(url, open_timeout=60) as socket:
        socket.send("bind-with-token forged-token")
        assert socket.recv(timeout=60).startswith("error")
        socket.send(f"bind-with-token {parameters['token']['valueString']}")
        assert socket.recv(timeout=60) == f"bound {sid}"
        post(client, reading(other, 30))  # another patient's: never
        later = [post(client, reading(patient, value)) for value in (45, 100, 50)]
        bundles = [json.loads(socket.recv(timeout=90)) for _ in range(3)]
    ids = [b["entry"][1]["fullUrl"].rsplit("/", 1)[-1] for b in bundles]
    assert ids == [early["id"], later[0]["id"], later[2]["id"]]
    numbers = [p["part"][0]["valueString"] for b in bundles
               for p in b["entry"][0]["resource"]["parameter"] if p["name"] == "notification-event"]
    assert numbers == ["1", "2", "3"]


def test_r4_websocket_pings_after_bind(served):  # noqa: F811
    server, client = served
    patient = new_patient(client)
    answer = client.post("/Subscription", json={
        "resourceType": "Subscription", "status": "requested", "reason": "test",
        "criteria": f"Observation?patient=Patient/{patient}", "channel": {"type": "websocket"}})
    sid = answer.json()["id"]
    wait_until(lambda: client.get(f"/Subscription/{sid}").json()["status"] == "active")
    with connect(f"ws://127.0.0.1:{server.port}/subscriptions/websocket",
                 open_timeout=60) as socket:
        socket.send(f"bind {sid}")  # R4's message: only without access control
        assert socket.recv(timeout=60) == f"bound {sid}"
        post(client, reading(patient, 100))
        assert socket.recv(timeout=90) == f"ping {sid}"
