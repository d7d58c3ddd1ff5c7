"""The MLLP listener under load: a large message is mapped off the event loop while other
senders are answered, a sender that floods is refused rather than buffered without bound,
idle connections are closed, connections are limited in total and per peer. No fixed
sleeps: every wait is for a condition, with a generous deadline (a loaded 2-core CI)."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from mappers.mllp import MllpClient, MllpEvent, MllpServer, Received, frame
from tests.conftest import RunningServer
from tests.test_hl7v2_mllp import Listener as LibraryListener
from tests.test_ingest_mllp import Listener, segment

DEADLINE = 120.0


def wait_for(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    """Wait until `condition()` holds (polling: it reads the listener's state)."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def message(control: str, extra: str = "") -> str:
    return "\r".join([
        f"MSH|^~\\&|METER|CLINIC|DIATABASE|DIA|20240601120000||ORU^R01|{control}|P|2.5",
        "PID|1||LOAD-1^^^&1.2.250.1.213.1.4.10&ISO^INS||DOE^JANE",
        "OBR|1||F-LOAD^CLINIC|2339-0^Glucose^LN",
        "OBX|1|NM|2339-0^Glucose^LN||95|mg/dL|70-110|N|||F|||20240601080000",
    ]) + extra


def big_oru(control: str, size: int) -> bytes:
    """An ORU^R01 of `size` bytes: one order, glucose readings every minute (a CGM dump)."""
    head = message(control).rsplit("\r", 1)[0] + "\r"
    lines = [head]
    length, n = len(head), 0
    while length < size:
        n += 1
        line = (f"OBX|{n}|NM|2339-0^Glucose^LN||{80 + n % 100}|mg/dL|70-110|N|||F|||"
                f"2024{(n // 44640) % 12 + 1:02d}{(n // 1440) % 28 + 1:02d}"
                f"{(n // 60) % 24:02d}{n % 60:02d}00\r")
        lines.append(line)
        length += len(line)
    return "".join(lines).encode()


def test_a_15_mb_message_does_not_hold_up_another_sender(server: RunningServer) -> None:
    """While a 15 MB ORU is mapped (about a minute on this machine), another sender's small
    message is stored and acknowledged, and the big one is still unanswered when that ACK
    arrives. The old listener mapped on its event loop: the small ACK waited for the whole
    big message (23-88 s measured). The big sender then hangs up, and its mapping stops."""
    events: list[MllpEvent] = []
    running = Listener(server.app.state.settings.db_url,
                       listener_options={"on_event": events.append})
    big = big_oru("BIG-1", 15 * 1024 * 1024)
    try:
        listener: MllpServer = running.server
        # A running listener is warm: its first message loads the profiles (seconds).
        assert segment(running.send(message("WARM-1")), "MSA")[1] == "AA"
        with socket.create_connection(("127.0.0.1", running.port), timeout=DEADLINE) as bulk:
            bulk.sendall(frame(big))
            wait_for(lambda: listener.in_flight == 1, "the big message to reach a worker")
            started = time.monotonic()
            with MllpClient("127.0.0.1", running.port, timeout=DEADLINE) as small:
                ack = small.send(message("SMALL-1"))
            latency = time.monotonic() - started
            assert segment(ack, "MSA")[1:3] == ["AA", "SMALL-1"], ack
            # The big message is still being worked on: no ACK has come back for it.
            readable, _, _ = select.select([bulk], [], [], 0)
            assert readable == [] and listener.in_flight == 1
            print(f"small ACK while a 15 MB message was in flight: {latency * 1000:.0f} ms")
            # A generous bound (the machine is shared): it only has to be far below the
            # big message's own time, which the ordering above already shows.
            assert latency < 30
        # The big sender hung up: its mapping stops instead of running for a minute more.
        wait_for(lambda: listener.in_flight == 0, "the abandoned mapping to stop")
        [abandoned] = [e for e in events if e.claim and e.claim.control_id == "BIG-1"]
        assert abandoned.code is None and "hung up" in (abandoned.reason or "")
    finally:
        running.close()


def accept(received: Received) -> tuple[str, str | None]:
    return "AA", None


@pytest.fixture
def limited() -> Iterator[LibraryListener]:
    running = LibraryListener(accept, idle_timeout=None, max_connections=3,
                              max_connections_per_peer=2, max_frame=200 * 1024,
                              max_buffered_bytes=300 * 1024)
    yield running
    running.close()


@pytest.fixture
def impatient() -> Iterator[LibraryListener]:
    running = LibraryListener(accept, idle_timeout=1.0)
    yield running
    running.close()


def closed_by_listener(connection: socket.socket) -> bool:
    try:
        return connection.recv(1024) == b""
    except ConnectionResetError:
        return True


def test_idle_connections_are_closed_after_the_timeout(impatient: LibraryListener) -> None:
    """Fails on the old listener's defaults: 5,300 idle connections stayed open."""
    connections = [socket.create_connection(("127.0.0.1", impatient.port), timeout=DEADLINE)
                   for _ in range(10)]
    try:
        for connection in connections:
            assert closed_by_listener(connection)  # blocks until the listener hangs up
        wait_for(lambda: impatient.server.connections == 0, "the connections to be released")
    finally:
        for connection in connections:
            connection.close()


def test_connections_are_limited_per_peer_and_in_total(limited: LibraryListener) -> None:
    def connect(source: str) -> MllpClient:
        return MllpClient("127.0.0.1", limited.port, timeout=DEADLINE, source_address=source)

    first, second = connect("127.0.0.1"), connect("127.0.0.1")
    try:
        for n, client in enumerate((first, second)):
            assert segment(client.send(message(f"P{n}")), "MSA")[1] == "AA"
        wait_for(lambda: limited.server.connections == 2, "two connections")
        with socket.create_connection(("127.0.0.1", limited.port), timeout=DEADLINE,
                                      source_address=("127.0.0.1", 0)) as third:
            assert closed_by_listener(third)  # a third from the same address
        other = connect("127.0.0.2")
        try:
            assert segment(other.send(message("P2")), "MSA")[1] == "AA"
            with socket.create_connection(("127.0.0.1", limited.port), timeout=DEADLINE,
                                          source_address=("127.0.0.3", 0)) as fourth:
                assert closed_by_listener(fourth)  # a fourth in all
        finally:
            other.close()
        # The connections that were admitted still work.
        assert segment(first.send(message("P3")), "MSA")[1] == "AA"
    finally:
        first.close()
        second.close()
    reasons = [e.reason for e in limited.events if e.kind == "connection"]
    assert reasons == ["too many connections from this peer (2)", "too many connections (3)"]


def test_a_flood_is_refused_not_buffered(limited: LibraryListener) -> None:
    """Past the bytes the listener may hold for messages in flight, the message that
    would exceed them is cut short and answered AR "receiver busy"; memory stays bounded."""
    held = frame(message("HELD", "\rNTE|1||" + "x" * (180 * 1024)))
    with MllpClient("127.0.0.1", limited.port, timeout=DEADLINE) as slow, MllpClient(
        "127.0.0.1", limited.port, timeout=DEADLINE
    ) as flood:
        slow.send_raw(held[:-2])  # all but its end: the listener holds it
        wait_for(lambda: limited.server.buffered_bytes >= 180 * 1024, "the held message")
        refused = flood.send(message("FLOOD", "\rNTE|1||" + "y" * (180 * 1024)))
        assert segment(refused, "MSA")[1:3] == ["AR", "FLOOD"]
        assert "receiver busy" in segment(refused, "ERR")[8]
        assert limited.server.buffered_bytes <= 300 * 1024
        slow.send_raw(held[-2:])
        assert segment(slow.receive(), "MSA")[1:3] == ["AA", "HELD"]
        assert segment(flood.send(message("AFTER")), "MSA")[1] == "AA"
    wait_for(lambda: limited.server.buffered_bytes == 0, "the budget to be released")
