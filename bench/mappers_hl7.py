"""HL7 v2 ORU^R01 throughput: mapped in-process, and through MLLP on 127.0.0.1.

    python bench/mappers_hl7.py [--messages 2000] [--connections 4]

Prints a table (messages/s). In-process figures are the median of 3 runs on one core;
MLLP figures include framing, the socket round trip and the ACK, with a handler that
does nothing ("ACK only") or that maps each message and throws the Bundle away.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mappers.hl7v2 import MappedMessage, to_bundle  # noqa: E402
from mappers.mllp import MllpClient, MllpServer, Received, bundle_handler, serve_mllp  # noqa: E402


def glucose_message(n: int) -> str:
    """A typical lab glucose/HbA1c result: PID, PV1, ORC, OBR, 3 OBX, NTE, SPM."""
    return "\r".join([
        f"MSH|^~\\&|LABO|CHU^1.2.250.1.999.1^ISO|DIATABASE|DIA|20240315103000+0100||"
        f"ORU^R01^ORU_R01|BENCH-{n}|P|2.5.1|||AL|NE|FRA|UNICODE UTF-8",
        f"PID|1||{n:013d}^^^&1.2.250.1.213.1.4.10&ISO^INS~IPP{n}^^^CHU&1.2.250.1.999.2&ISO^PI||"
        f"PATIENT{n}^Camille^^^^^L||19700412|F|||1 rue Test^^Lyon^^69003^FRA^H",
        f"PV1|1|O|ENDO^^^CHU||||||||||||||||V{n}^^^CHU&1.2.250.1.999.3&ISO^VN",
        f"ORC|RE|CMD{n}^DPI|LAB{n}^LABO",
        f"OBR|1|CMD{n}^DPI|LAB{n}^LABO|GLYC^Bilan^L|||20240315080000+0100||||||||||||||||||F",
        f"OBX|1|NM|GLU^Glycemie^L^2345-7^Glucose SerPl-mCnc^LN||{90 + n % 80}|mg/dl|70-105|"
        "N|||F|||20240315080000+0100",
        "NTE|1||A jeun",
        "OBX|2|NM|GLUM^Glycemie^L^14749-6^Glucose SerPl-sCnc^LN||5.4|mmol/l|3.9_5.8|N|||F",
        "OBX|3|NM|A1C^HbA1c^L^4548-4^Hemoglobin A1c^LN||7.1|%|4.0-6.0|H|||F",
        f"SPM|1|^SPEC{n}&LABO||119297000^Blood^SCT|||||||P||||||20240315080000+0100",
    ])


def in_process(messages: list[str]) -> float:
    start = time.perf_counter()
    for message in messages:
        to_bundle(message)
    return len(messages) / (time.perf_counter() - start)


def through_mllp(messages: list[str], handler, connections: int) -> float:
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(serve_mllp("127.0.0.1", 0, handler))
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    share = [messages[i::connections] for i in range(connections)]

    def send(batch: list[str]) -> int:
        with MllpClient("127.0.0.1", port) as client:
            for message in batch:
                if "|AA|" not in client.send(message):
                    raise RuntimeError("message not acknowledged AA")
        return len(batch)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=connections) as pool:
        sent = sum(pool.map(send, share))
    elapsed = time.perf_counter() - start
    asyncio.run_coroutine_threadsafe(_stop(server), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    loop.close()
    return sent / elapsed


async def _stop(server: MllpServer) -> None:
    """Close the listener and let the connection tasks see their clients' EOF."""
    server.close()
    await server.wait_closed()
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    await asyncio.gather(*others, return_exceptions=True)


def ack_only(received: Received) -> tuple[str, str | None]:
    return "AA", None


def discard(mapped: MappedMessage) -> None:
    return None


SIZES = {"small": 100, "medium": 2000, "large": 10000}  # messages


def run(size: str = "small", db: str | None = None) -> list:
    """HL7 v2 mapping for the report (no storage; `db` is unused)."""
    from bench.common import Result, own_peak_rss_mb

    count, connections = SIZES[size], 4
    messages = [glucose_message(n) for n in range(count)]
    mapped = statistics.median(in_process(messages) for _ in range(3))
    over_mllp = through_mllp(messages, bundle_handler(discard), connections)
    return [
        Result("hl7v2 map", f"ORU^R01 (3 OBX) to a Bundle in-process, {count:,} messages, "
               "median of 3", mapped, "msg/s", peak_rss_mb=own_peak_rss_mb(), backend="-"),
        Result("hl7v2 mllp", f"ORU^R01 over MLLP, map + discard, {connections} connections, "
               f"{count:,} messages", over_mllp, "msg/s", peak_rss_mb=own_peak_rss_mb(),
               floor=f"in-process map {mapped:,.0f} msg/s", backend="-"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    messages = [glucose_message(n) for n in range(args.messages)]
    runs = [in_process(messages) for _ in range(3)]
    rows = [
        ("in-process to_bundle (median of 3)", statistics.median(runs)),
        ("MLLP, ACK-only handler, 1 connection", through_mllp(messages, ack_only, 1)),
        (f"MLLP, ACK-only handler, {args.connections} connections",
         through_mllp(messages, ack_only, args.connections)),
        (f"MLLP, map + discard, {args.connections} connections",
         through_mllp(messages, bundle_handler(discard), args.connections)),
    ]
    print(f"HL7 v2 ORU^R01 ({args.messages} messages, 3 OBX each)")
    print(f"{'path':<46} {'messages/s':>12}")
    print("-" * 59)
    for label, rate in rows:
        print(f"{label:<46} {rate:>12,.0f}")


if __name__ == "__main__":
    main()
