"""R4 Subscriptions with rest-hook channels, end to end: a real server on 127.0.0.1 (uvicorn,
SQLite) and a real receiving HTTP server in the test.

Retries are made fast with a small back-off base (settings), never with sleeps: the tests
wait on what the receiver got, with generous deadlines.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_server.limits import Limits
from fhir_server.settings import Settings
from fhir_server.subscriptions.spec import SECRET_EXTENSION, endpoint_allowed
from tests.auth_tokens import TestIssuer, bearer
from tests.conftest import RunningServer
from tests.storage_backends import mongomock_url
from tests.subscription_receiver import Receiver, wait_until

GLUCOSE = "http://loinc.org|2339-0"


def settings(tmp_path: Path, **values: Any) -> Settings:
    defaults: dict[str, Any] = {
        "db_url": f"sqlite:///{tmp_path / 'subs.db'}",
        "insecure_dev": True,
        "limits": Limits(search_seconds=300, total_count_seconds=60),
        "subscription_retry_base": 0.02,
        "subscription_retry_max": 0.2,
        "subscription_poll_seconds": 0.2,
    }
    return Settings(**{**defaults, **values})


@pytest.fixture(params=["sqlite", "mongomock"])
def served(request: pytest.FixtureRequest,
           tmp_path: Path) -> Iterator[tuple[RunningServer, httpx.Client]]:
    """The server on SQLite, and on MongoDB as mongomock (no MongoDB server here): the
    outbox collections written with the write's session."""
    values = settings(tmp_path)
    if request.param == "mongomock":
        values = settings(tmp_path, db_url=mongomock_url())
    with RunningServer(values) as server, httpx.Client(
        base_url=server.url, timeout=120
    ) as client:
        yield server, client


def glucose(patient: str, value: float, unit: str = "mg/dL") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": "2024-05-01T08:00:00+02:00",
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org",
                          "code": unit},
    }


def subscription(criteria: str, endpoint: str, payload: str | None = "application/fhir+json",
                 headers: tuple[str, ...] = ()) -> dict[str, Any]:
    channel: dict[str, Any] = {"type": "rest-hook", "endpoint": endpoint}
    if payload:
        channel["payload"] = payload
    if headers:
        channel["header"] = list(headers)
    return {"resourceType": "Subscription", "status": "requested", "reason": "test",
            "criteria": criteria, "channel": channel}


def new_patient(client: httpx.Client, **auth: Any) -> str:
    answer = client.post("/Patient", json={"resourceType": "Patient"}, **auth)
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def subscribe(client: httpx.Client, body: dict[str, Any], **auth: Any) -> dict[str, Any]:
    answer = client.post("/Subscription", json=body, **auth)
    assert answer.status_code == 201, answer.text
    assert answer.json()["status"] == "requested"
    sid = answer.json()["id"]
    # the server activates it (requested -> active) and gives it a signing secret
    return wait_until(lambda: _active(client.get(f"/Subscription/{sid}", **auth).json()))


def _active(resource: dict[str, Any]) -> dict[str, Any] | None:
    return resource if resource.get("status") == "active" else None


def secret_of(resource: dict[str, Any]) -> str:
    return next(e["valueString"] for e in resource["extension"] if e["url"] == SECRET_EXTENSION)


def post(client: httpx.Client, resource: dict[str, Any], **auth: Any) -> dict[str, Any]:
    answer = client.post(f"/{resource['resourceType']}", json=resource, **auth)
    assert answer.status_code == 201, answer.text
    return answer.json()


def test_rest_hook_notifies_matching_writes_in_order_signed_with_headers(served, tmp_path):
    server, client = served
    mine, other = new_patient(client), new_patient(client)
    with Receiver() as receiver:
        sub = subscribe(client, subscription(
            f"Observation?patient=Patient/{mine}&code={GLUCOSE}", receiver.url,
            headers=("Authorization: Bearer receiver-token",),
        ))
        written = []
        for value in (120, 80, 60, 45):
            written.append(post(client, glucose(mine, value)))
            post(client, glucose(other, value))  # another patient's: never notified
        client.put(f"/Observation/{written[0]['id']}", json={**written[0], "status": "amended"})
        got = receiver.wait_for(5)
    assert [r.event_number for r in got] == [1, 2, 3, 4, 5]
    # R4 rest-hook with a payload: the resource PUT to [endpoint]/Observation/[id]
    assert [r.method for r in got] == ["PUT"] * 5
    assert [r.path for r in got] == [
        f"/hook/Observation/{w['id']}" for w in [*written, written[0]]
    ]
    assert [r.json()["valueQuantity"]["value"] for r in got] == [120, 80, 60, 45, 120]
    assert got[-1].json()["status"] == "amended"
    secret = secret_of(sub)
    for r in got:
        assert r.headers["authorization"] == "Bearer receiver-token"
        assert r.headers["x-diatabase-subscription"] == sub["id"]
        expected = "sha256=" + hmac.new(secret.encode(), r.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(r.headers["x-diatabase-signature"], expected)
        assert r.json()["subject"]["reference"] == f"Patient/{mine}"
    status = client.get(f"/Subscription/{sub['id']}/$status").json()
    parameters = {p["name"]: p for p in status["entry"][0]["resource"]["parameter"]}
    assert parameters["events-since-subscription-start"]["valueString"] == "5"
    assert parameters["status"]["valueCode"] == "active"


def test_empty_payload_is_a_post_without_body(served):
    _, client = served
    patient = new_patient(client)
    with Receiver() as receiver:
        subscribe(client, subscription(f"Observation?subject=Patient/{patient}", receiver.url,
                                       payload=None))
        post(client, glucose(patient, 100))
        got = receiver.wait_for(1)
    assert got[0].method == "POST" and got[0].path == "/hook" and got[0].body == b""
    assert got[0].event_number == 1


def test_a_receiver_failing_five_times_then_recovering_gets_everything_in_order(served):
    _, client = served
    patient = new_patient(client)
    with Receiver(failures=5) as receiver:
        subscribe(client, subscription(f"Observation?patient=Patient/{patient}", receiver.url))
        values = [100 + i for i in range(6)]
        for value in values:
            post(client, glucose(patient, value))
        got = receiver.wait_for(6)
        assert receiver.refused == 5
    assert [r.event_number for r in got] == [1, 2, 3, 4, 5, 6]
    assert [r.json()["valueQuantity"]["value"] for r in got] == values


def test_a_receiver_that_never_recovers_moves_the_subscription_to_error(tmp_path):
    with RunningServer(settings(tmp_path, subscription_max_attempts=3)) as server, \
            httpx.Client(base_url=server.url, timeout=120) as client, \
            Receiver(always_fail=True) as receiver:
        patient = new_patient(client)
        sub = subscribe(client, subscription(f"Observation?patient=Patient/{patient}",
                                             receiver.url))
        post(client, glucose(patient, 70))
        failed = wait_until(lambda: _status(client, sub["id"], "error"))
        assert receiver.refused == 3
        assert "HTTP 500" in failed["error"]
        # its owner turns it back on once the receiver works: the event is still delivered
        receiver.always_fail = False
        failed["status"] = "requested"
        assert client.put(f"/Subscription/{sub['id']}", json=failed).status_code == 200
        got = receiver.wait_for(1)
        assert got[0].event_number == 1


def _status(client: httpx.Client, sid: str, status: str) -> dict[str, Any] | None:
    resource = client.get(f"/Subscription/{sid}").json()
    return resource if resource.get("status") == status else None


def test_endpoints_must_be_https_or_loopback_http_in_development(served):
    _, client = served
    assert endpoint_allowed("https://hooks.example.org/x", http_loopback=False)
    assert not endpoint_allowed("http://127.0.0.1:8080/x", http_loopback=False)
    assert endpoint_allowed("http://127.0.0.1:8080/x", http_loopback=True)
    assert endpoint_allowed("http://[::1]:8080/x", http_loopback=True)
    assert not endpoint_allowed("http://hooks.example.org/x", http_loopback=True)
    assert not endpoint_allowed("ftp://127.0.0.1/x", http_loopback=True)
    answer = client.post("/Subscription", json=subscription(
        "Observation?code=x", "http://hooks.example.org/x"))
    assert answer.status_code == 400
    assert answer.json()["resourceType"] == "OperationOutcome"
    assert "https" in answer.text
    bad = client.post("/Subscription", json=subscription("Observation?nonsense=1",
                                                         "https://hooks.example.org/x"))
    assert bad.status_code == 400 and "nonsense" in bad.text


def test_a_patient_context_app_subscribes_only_to_its_patient(tmp_path):
    issuer = TestIssuer.create(tmp_path)
    values = settings(tmp_path, insecure_dev=False, subscription_http_loopback=True)
    closed = issuer.settings(**{k: getattr(values, k) for k in (
        "db_url", "limits", "subscription_retry_base", "subscription_retry_max",
        "subscription_poll_seconds", "subscription_http_loopback")})
    with RunningServer(closed) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        admin = bearer(issuer.token(server.url, "system/*.cruds"))
        mine, other = new_patient(client, headers=admin), new_patient(client, headers=admin)
        app = bearer(issuer.token(
            server.url, "patient/Observation.rs patient/Subscription.cruds", patient=mine))
        with Receiver() as receiver:
            refused = client.post("/Subscription", headers=app, json=subscription(
                f"Observation?patient=Patient/{other}", receiver.url))
            assert refused.status_code == 403, refused.text
            wide = client.post("/Subscription", headers=app, json=subscription(
                "Observation?code=http://loinc.org|2339-0", receiver.url))
            assert wide.status_code == 403
            subscribe(client, subscription(f"Observation?patient=Patient/{mine}",
                                           receiver.url), headers=app)
            post(client, glucose(other, 55), headers=admin)
            post(client, glucose(mine, 56), headers=admin)
            got = receiver.wait_for(1)
        assert [r.json()["subject"]["reference"] for r in got] == [f"Patient/{mine}"]


def test_a_subscription_whose_end_has_passed_is_switched_off(served):
    _, client = served
    body = subscription("Observation?code=http://loinc.org|2339-0",
                        "https://hooks.example.org/x")
    body["end"] = "2020-01-01T00:00:00Z"
    sid = client.post("/Subscription", json=body).json()["id"]
    switched = wait_until(lambda: _status(client, sid, "off"))
    assert "error" not in switched
