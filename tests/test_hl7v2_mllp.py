"""The MLLP listener over a real socket on 127.0.0.1, and the deframer."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mappers.hl7v2 import MappedMessage
from mappers.mllp import (
    Deframer,
    ListenerLimits,
    MllpClient,
    MllpEvent,
    Received,
    bundle_handler,
    frame,
    send_mllp,
    serve_mllp,
)

DATA = Path(__file__).parent / "data" / "hl7v2"
GLUCOSE = (DATA / "diatabase" / "glucose_hba1c_oru_r01_v251.hl7").read_bytes()


def message(control_id: str, message_type: str = "ORU^R01") -> str:
    return "\r".join([
        f"MSH|^~\\&|METER|CLINIC|DIATABASE|DIA|20240101120000||{message_type}|{control_id}|P|2.5",
        "PID|1||P-1^^^CLINIC^MR||DOE^JANE",
        "OBR|1||F-1^CLINIC|2339-0^Glucose^LN",
        "OBX|1|NM|2339-0^Glucose^LN||95|mg/dL|70-110|N|||F",
    ])


def msa(ack: str) -> list[str]:
    line = next(s for s in ack.split("\r") if s.startswith("MSA"))
    return line.split("|")


class Listener:
    """A listener on its own event loop thread, as `diatabase mllp` would run it; `options`
    are its ListenerLimits, and what it reports is kept in `events`."""

    def __init__(self, handler, **options) -> None:
        self.events: list[MllpEvent] = []
        self.loop = asyncio.new_event_loop()
        limits = ListenerLimits(**options)
        self.server = self.loop.run_until_complete(
            serve_mllp("127.0.0.1", 0, handler, limits=limits, on_event=self.events.append))
        self.port = self.server.sockets[0].getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

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


@pytest.fixture
def stored() -> list[dict]:
    return []


@pytest.fixture
def listener(stored: list[dict]) -> Iterator[Listener]:
    def store(mapped: MappedMessage) -> None:
        bundle = mapped.bundle
        if any(e["resource"].get("name", [{}])[0].get("family") == "FAIL"
               for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"):
            raise RuntimeError("storage refused the bundle")
        stored.append(bundle)

    running = Listener(bundle_handler(store), max_frame=64 * 1024,
                       max_buffered_bytes=256 * 1024)
    yield running
    running.close()


def test_ack_content_for_a_stored_message(listener: Listener, stored: list[dict]) -> None:
    ack = send_mllp("127.0.0.1", listener.port, GLUCOSE)
    assert ack.startswith("MSH|^~\\&|DIATABASE|DIATABASE|LABO|CHU-DIAB")
    assert msa(ack)[1:3] == ["AA", "MSG-GLU-0001"]
    assert "ERR" not in ack
    assert len(stored) == 1
    assert stored[0]["type"] == "transaction"


def test_resent_message_gives_the_identical_conditional_bundle(
    listener: Listener, stored: list[dict]
) -> None:
    with MllpClient("127.0.0.1", listener.port) as client:
        assert msa(client.send(GLUCOSE))[1] == "AA"
        assert msa(client.send(GLUCOSE))[1] == "AA"

    def requests(bundle: dict) -> list[dict]:
        return [e["request"] for e in bundle["entry"]]

    first, second = stored
    assert requests(first) == requests(second)
    assert [e["resource"] for e in first["entry"]] == [e["resource"] for e in second["entry"]]


def test_several_messages_per_connection_even_in_one_write(listener: Listener) -> None:
    with MllpClient("127.0.0.1", listener.port) as client:
        client.send_raw(b"".join(frame(message(f"C{n}")) for n in range(3)))
        acks = [client.receive() for _ in range(3)]
    assert [msa(a)[2] for a in acks] == ["C0", "C1", "C2"]


def test_many_concurrent_connections(listener: Listener, stored: list[dict]) -> None:
    def sender(worker: int) -> list[str]:
        with MllpClient("127.0.0.1", listener.port) as client:
            return [msa(client.send(message(f"W{worker}-{n}")))[2] for n in range(5)]

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(sender, range(16)))
    assert results == [[f"W{w}-{n}" for n in range(5)] for w in range(16)]
    assert len(stored) == 80


def test_malformed_frames_cost_only_themselves(listener: Listener) -> None:
    with MllpClient("127.0.0.1", listener.port) as bystander, MllpClient(
        "127.0.0.1", listener.port
    ) as client:
        # garbage outside any frame, then a frame cut short by the next <VT>
        client.send_raw(b"garbage before any frame\r\n")
        client.send_raw(b"\x0b" + message("CUT").encode() + b"\x0b" + message("NEXT").encode()
                        + b"\x1c\r")
        cut, following = client.receive(), client.receive()
        assert msa(cut)[1:3] == ["AR", "CUT"]
        assert "malformed MLLP frame" in cut
        assert msa(following)[1:3] == ["AA", "NEXT"]
        # a frame with no HL7 in it gets no answer; the connection still works
        client.send_raw(b"\x0bnot hl7 at all\x1c\r")
        assert msa(client.send(message("AFTER")))[1:3] == ["AA", "AFTER"]
        assert msa(bystander.send(message("OTHER")))[1:3] == ["AA", "OTHER"]


def test_oversized_frame_is_rejected_and_the_connection_lives(listener: Listener) -> None:
    huge = message("BIG") + "\rNTE|1||" + "x" * (128 * 1024)
    with MllpClient("127.0.0.1", listener.port) as client:
        assert msa(client.send(huge))[1:3] == ["AR", "BIG"]
        assert msa(client.send(message("SMALL")))[1] == "AA"


def test_mapping_and_storage_errors_give_ae_with_err(listener: Listener) -> None:
    with MllpClient("127.0.0.1", listener.port) as client:
        unsupported = client.send(message("U1", "MFN^M02"))
        assert msa(unsupported)[1:3] == ["AR", "U1"]
        err = next(s for s in unsupported.split("\r") if s.startswith("ERR")).split("|")
        assert err[2] == "MSH^1^9" and err[3].startswith("200^")
        failing = client.send(message("S1").replace("DOE^JANE", "FAIL^JANE"))
        assert msa(failing)[1:3] == ["AE", "S1"]
        assert "storage refused the bundle" in failing
        assert msa(client.send(message("OK1")))[1] == "AA"


def test_handler_outcome_is_what_the_ack_says() -> None:
    def refuse(received: Received) -> tuple[str, str | None]:
        return ("AE", "duplicate | rejected") if "REFUSE" in received.text else ("AA", None)

    running = Listener(refuse)
    try:
        ack = send_mllp("127.0.0.1", running.port, message("REFUSE"))
        assert msa(ack)[1] == "AE"
        assert "duplicate \\F\\ rejected" in ack
        assert msa(send_mllp("127.0.0.1", running.port, message("FINE")))[1] == "AA"
    finally:
        running.close()


def test_deframer_reassembles_byte_by_byte() -> None:
    data = b"noise" + frame("MSH|one") + frame("MSH|two")[:-1] + b"\x0bMSH|three\x1c"
    deframer = Deframer()
    frames = []
    for index in range(len(data)):
        frames.extend(deframer.feed(data[index : index + 1]))
    assert [(f.data, f.complete) for f in frames] == [
        (b"MSH|one", True), (b"MSH|two", True), (b"MSH|three", True)
    ]


def test_deframer_size_limit_keeps_the_head() -> None:
    deframer = Deframer(max_frame=100)
    [cut] = deframer.feed(b"\x0bMSH|" + b"y" * 500 + b"\x1c\r")
    assert not cut.complete and cut.data.startswith(b"MSH|")
    [good] = deframer.feed(frame("MSH|ok"))
    assert good.complete and good.data == b"MSH|ok"


def test_invalid_handler_outcome_gives_ae() -> None:
    def confused(received: Received) -> tuple[str, str | None]:
        return "OK", None

    running = Listener(confused)
    try:
        with MllpClient("127.0.0.1", running.port) as client:
            assert msa(client.send(message("Q1")))[1] == "AE"
    finally:
        running.close()


def test_a_silent_connection_is_hung_up_after_the_idle_timeout() -> None:
    """The client says nothing, so no scheduling delay can make it look active: the
    listener hangs up after its idle timeout (the client would wait 120 s)."""

    def accept(received: Received) -> tuple[str, str | None]:
        return "AA", None

    running = Listener(accept, idle_timeout=0.3)
    try:
        with MllpClient("127.0.0.1", running.port, timeout=120) as client, pytest.raises(
            ConnectionError
        ):
            client.receive()
    finally:
        running.close()
