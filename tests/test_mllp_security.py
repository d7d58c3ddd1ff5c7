"""Who may talk to the MLLP listener and what they may send: the peer allow-list, TLS and
mutual TLS (certificates made here with `cryptography`), registered sending application /
facility / message types (AR otherwise, and an event for the audit trail), and logs that
hold no patient name or identifier at info level. A real listener storing into the
database of a real server on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import logging
import socket
from pathlib import Path

import httpx
import pytest

from fhir_server.ingest.mllp_listener import record_event
from mappers.mllp import MllpClient, MllpEvent
from tests.conftest import RunningServer
from tests.mllp_certificates import Authority, Issued, client_context
from tests.test_ingest_mllp import Listener, oru, segment, total

LAB = {
    "name": "lab",
    "addresses": ["127.0.0.1"],
    "sending_applications": ["METER"],
    "sending_facilities": ["CLINIC"],
    "message_types": ["ORU^R01"],
}


@pytest.fixture
def events() -> list[MllpEvent]:
    return []


def listener(server: RunningServer, events: list[MllpEvent], **config) -> Listener:
    """The listener as `diatabase mllp` runs it, its events also kept in `events`."""

    def on_event(event: MllpEvent) -> None:
        events.append(event)
        record_event(event)

    return Listener(server.app.state.settings.db_url,
                    listener_options={"on_event": on_event}, **config)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Issued]:
    folder: Path = tmp_path_factory.mktemp("pki")
    ca = Authority(folder, "hospital-ca")
    rogue = Authority(folder, "rogue-ca")
    return {
        "ca": ca.issued,
        "server": ca.issue("mllp.diatabase.test", server=True),
        "lab": ca.issue("lab.chu.example"),
        "other": ca.issue("pharmacy.chu.example"),
        "rogue": rogue.issue("lab.chu.example"),
    }


def audit_records(running: Listener, mentioning: str) -> list[dict]:
    """The AuditEvents in the listener's audit store that mention `mentioning` (in their
    JSON or in an entity's query, which BALP has in base64)."""
    running.service.audit.flush()
    found = []
    for record in running.service.audit.store.records():
        event = json.loads(record.json)
        queries = [base64.b64decode(e["query"]).decode() for e in event.get("entity", [])
                   if "query" in e]
        if mentioning in record.json.decode() or any(mentioning in q for q in queries):
            found.append(event)
    return found


def refused_at_once(port: int, source: str = "127.0.0.1") -> bool:
    """True when the listener closes the connection without a word (no ACK, nothing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60,
                                  source_address=(source, 0)) as raw:
        try:
            return raw.recv(1024) == b""
        except ConnectionResetError:
            return True


def test_a_peer_not_on_the_allow_list_is_refused(
    server: RunningServer, events: list[MllpEvent]
) -> None:
    """Fails on the old listener: any TCP client could connect and write."""
    elsewhere = {**LAB, "name": "ward", "addresses": ["10.9.9.0/24"]}
    running = listener(server, events, peers=[elsewhere])
    try:
        assert refused_at_once(running.port)
        refusals = [e for e in events if e.kind == "connection"]
        assert refusals, "the refusal is reported before the connection closes"
        [audited] = audit_records(running, "connection refused")[-1:]
        assert audited["outcome"] == "4"
        assert audited["agent"][0]["network"]["address"] == "127.0.0.1"
    finally:
        running.close()
    [event] = events
    assert (event.kind, event.peer.address, event.reason) == (
        "connection", "127.0.0.1", "address not allowed")


def test_a_registered_peer_may_send_only_what_it_is_registered_for(
    server: RunningServer, client: httpx.Client, events: list[MllpEvent]
) -> None:
    """Fails on the old listener: an ADT^A08 from any sender rewrote a patient."""
    running = listener(server, events, peers=[LAB])
    try:
        with MllpClient("127.0.0.1", running.port) as sender:
            allowed = sender.send(oru("SEC-1", "MLLP-SEC"))
            assert segment(allowed, "MSA")[1:3] == ["AA", "SEC-1"]
            other_app = sender.send(oru("SEC-2", "MLLP-SEC2").replace("|METER|", "|HIS|"))
            assert segment(other_app, "MSA")[1:3] == ["AR", "SEC-2"]
            assert "sending application (MSH-3)" in segment(other_app, "ERR")[8]
            other_facility = sender.send(
                oru("SEC-3", "MLLP-SEC3").replace("|CLINIC|", "|OTHER-HOSP|"))
            assert segment(other_facility, "MSA")[1] == "AR"
            assert "sending facility (MSH-4)" in segment(other_facility, "ERR")[8]
            adt = oru("SEC-4", "MLLP-SEC4").replace("ORU^R01", "ADT^A08")
            wrong_type = sender.send(adt)
            assert segment(wrong_type, "MSA")[1] == "AR"
            assert "message type ADT\\S\\A08 is not allowed" in segment(wrong_type, "ERR")[8]
        # Each refusal is in the audit trail, naming the peer and what it claimed.
        for control in ("SEC-2", "SEC-3", "SEC-4"):
            [audited] = audit_records(running, f"control id {control}")
            assert audited["outcome"] == "4"
            assert audited["agent"][0]["network"]["address"] == "127.0.0.1"
    finally:
        running.close()
    # Nothing of the refused messages was stored.
    for refused in ("MLLP-SEC2", "MLLP-SEC3", "MLLP-SEC4"):
        assert total(client, "/Patient",
                     identifier=f"urn:oid:1.2.250.1.213.1.4.10|{refused}") == 0
    assert [(e.kind, e.code, e.claim.control_id if e.claim else None) for e in events] == [
        ("message", "AA", "SEC-1"), ("message", "AR", "SEC-2"), ("message", "AR", "SEC-3"),
        ("message", "AR", "SEC-4")]
    assert events[0].patients and events[0].patients[0].startswith("Patient/")
    assert all(e.peer.name == "lab" for e in events)


def test_tls_only_a_client_trusting_the_server_gets_through(
    server: RunningServer, events: list[MllpEvent], pki: dict[str, Issued]
) -> None:
    running = listener(server, events, certificate=str(pki["server"].certificate),
                       key=str(pki["server"].key))
    try:
        with MllpClient("127.0.0.1", running.port, timeout=60,
                        ssl_context=client_context(pki["ca"])) as sender:
            assert segment(sender.send(oru("TLS-1", "MLLP-TLS")), "MSA")[1] == "AA"
        with pytest.raises(OSError), MllpClient("127.0.0.1", running.port,
                                                timeout=60) as plain:
            plain.send(oru("TLS-2", "MLLP-TLS2"))  # cleartext to a TLS port: no ACK
    finally:
        running.close()


def test_mutual_tls_needs_a_certificate_from_the_operators_ca(
    server: RunningServer, events: list[MllpEvent], pki: dict[str, Issued]
) -> None:
    lab = {**LAB, "certificate_names": ["lab.chu.example"]}
    running = listener(server, events, certificate=str(pki["server"].certificate),
                       key=str(pki["server"].key), client_ca=str(pki["ca"].certificate),
                       peers=[lab])
    try:
        good = client_context(pki["ca"], pki["lab"])
        with MllpClient("127.0.0.1", running.port, timeout=60, ssl_context=good) as sender:
            assert segment(sender.send(oru("MTLS-1", "MLLP-MTLS")), "MSA")[1] == "AA"
        for context in (client_context(pki["ca"]), client_context(pki["ca"], pki["rogue"])):
            # No certificate, or one the operator's CA did not sign: the handshake fails.
            with pytest.raises(OSError), MllpClient(
                "127.0.0.1", running.port, timeout=60, ssl_context=context
            ) as sender:
                sender.send(oru("MTLS-2", "MLLP-MTLS2"))
        # A valid certificate of another sender: the address matches, the name does not.
        other = client_context(pki["ca"], pki["other"])
        with pytest.raises(OSError), MllpClient(
            "127.0.0.1", running.port, timeout=60, ssl_context=other
        ) as sender:
            sender.send(oru("MTLS-3", "MLLP-MTLS3"))
    finally:
        running.close()
    assert events[0].peer.certificate_names == ("lab.chu.example",)
    refused = [e for e in events if e.kind == "connection"]
    assert [e.peer.certificate_names for e in refused] == [("pharmacy.chu.example",)]


def test_no_name_or_identifier_in_the_log_at_info_level(
    server: RunningServer, events: list[MllpEvent], caplog: pytest.LogCaptureFixture
) -> None:
    running = listener(server, events, peers=[LAB])
    caplog.set_level(logging.INFO)
    try:
        with MllpClient("127.0.0.1", running.port) as sender:
            stored = oru("LOG-1", "LOGINS1234567").replace("DOE^JANE", "ZORGLUB^HILDEGARDE")
            assert segment(sender.send(stored), "MSA")[1] == "AA"
            refused = stored.replace("ORU^R01", "ADT^A08").replace("LOG-1", "LOG-2")
            assert segment(sender.send(refused), "MSA")[1] == "AR"
            broken = stored.replace("LOG-1", "LOG-3").replace("2339-0^Glucose^LN", "")
            assert segment(sender.send(broken), "MSA")[1] in ("AA", "AE")
    finally:
        running.close()
    text = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert "LOG-1" in text and "LOG-2" in text  # the lines are there...
    for secret in ("ZORGLUB", "HILDEGARDE", "LOGINS1234567"):
        assert secret not in text  # ...without the patient's name or identifier
