"""Concurrent GET load on a running server, with a latency per request.

Plain asyncio keep-alive HTTP/1.1 connections rather than an HTTP library: on a two-core
machine the client must cost less CPU than the server it measures.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class LoadFigures:
    requests: int
    seconds: float
    latencies_ms: list[float]
    statuses: dict[int, int]
    # the start of the first answer other than 2xx, so that a failed run says why
    first_error: bytes = b""

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def get_request(url: str, target: str, extra_headers: str = "") -> bytes:
    """The bytes of `GET target` for the server at `url` (http://host:port); `extra_headers`
    are raw header lines, each ending in CRLF."""
    host = urlsplit(url).netloc
    return (f"GET {target} HTTP/1.1\r\nHost: {host}\r\n"
            f"Accept: application/fhir+json\r\n{extra_headers}\r\n").encode()


def post_request(url: str, target: str, body: bytes) -> bytes:
    """The bytes of `POST target` with a FHIR JSON body."""
    host = urlsplit(url).netloc
    return (f"POST {target} HTTP/1.1\r\nHost: {host}\r\nAccept: application/fhir+json\r\n"
            f"Content-Type: application/fhir+json\r\nContent-Length: {len(body)}\r\n"
            "Prefer: return=minimal\r\n\r\n").encode() + body


def run_requests(url: str, requests: list[bytes], clients: int) -> LoadFigures:
    """Send every request once (already encoded), over `clients` concurrent connections."""
    return asyncio.run(_run(url, requests, clients))


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    request: bytes, errors: list[bytes] | None = None) -> int:
    """Send `request`, read its answer; the status. The body of an answer other than 2xx
    is appended to `errors` when given."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    chunked = False
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
        elif line.lower().replace(b" ", b"") == b"transfer-encoding:chunked":
            chunked = True  # a big Bundle, written as it is serialised
    keep = errors is not None and not 200 <= status < 300
    if not chunked:
        body = await reader.readexactly(length)
        if keep:
            errors.append(body[:500])
        return status
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
        chunk = await reader.readexactly(size + 2)  # the chunk and its CRLF
        if keep:
            errors.append(chunk[:500])
            keep = False
        if size == 0:
            return status


async def _run(url: str, requests: list[bytes], clients: int) -> LoadFigures:
    parts = urlsplit(url)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[bytes] = []
    next_index = 0

    async def client() -> None:
        nonlocal next_index
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            while next_index < len(requests):
                request = requests[next_index]
                next_index += 1
                started = time.perf_counter()
                status = await exchange(reader, writer, request, errors if not errors else None)
                latencies.append((time.perf_counter() - started) * 1000)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return LoadFigures(len(requests), time.perf_counter() - started, latencies, statuses,
                       errors[0] if errors else b"")


def run_gets(url: str, targets: list[str], clients: int, extra_headers: str = "") -> LoadFigures:
    """Send every `GET target` once, over `clients` concurrent connections."""
    requests = [get_request(url, t, extra_headers) for t in targets]
    return asyncio.run(_run(url, requests, clients))


def expect_ok(figures: LoadFigures, what: str) -> None:
    """A benchmark of failures measures nothing: refuse any answer but 200."""
    wrong = {status: n for status, n in figures.statuses.items() if status != 200}
    if wrong:
        raise RuntimeError(f"{what}: answers other than 200: {wrong}; the first: "
                           f"{figures.first_error.decode(errors='replace')}")
