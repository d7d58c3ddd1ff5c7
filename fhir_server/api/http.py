"""HTTP plumbing shared by the routers: content negotiation, bodies, FHIR responses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from fhir_server.model import jsonio
from fhir_server.model.outcome import error
from fhir_server.storage.base import StoredResource

FHIR_JSON = "application/fhir+json"
JSON_TYPES = ("application/fhir+json", "application/json", "application/json-patch+json")
XML_HINTS = ("xml",)
JSON_FORMATS = ("json", "application/json", "application/fhir+json", "application/json+fhir")


T = TypeVar("T")


async def read_by_key(request: Request, read: Callable[..., T], *args: Any) -> T:
    """`read(*args)`, a read of one resource by its key: on the event loop when the
    database is SQLite (a primary-key lookup, tens of microseconds from its page cache,
    which is less than the hop to a worker thread and back costs: measured in
    bench/http_path.py), in the threadpool otherwise (MongoDB: a network round trip)."""
    if request.app.state.settings.db_url.startswith("sqlite:"):
        return read(*args)
    return await run_in_threadpool(read, *args)


def check_accept(request: Request) -> None:
    """406 for clients that only take XML (or anything else we do not produce)."""
    fmt = request.query_params.get("_format")
    if fmt is not None:
        if fmt.strip().lower() not in JSON_FORMATS:
            raise error(
                406,
                "not-supported",
                f"_format={fmt} is not supported: this server speaks FHIR JSON only "
                "(XML is not supported)",
            )
        return
    accept = request.headers.get("accept", "")
    if not accept:
        return
    ranges = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    if any(r in ("*/*", "application/*") or "json" in r for r in ranges):
        return
    raise error(
        406,
        "not-supported",
        f"Accept '{accept}' cannot be satisfied: this server speaks FHIR JSON only "
        "(XML is not supported)",
    )


async def read_body(
    request: Request,
    max_bytes: int,
    allowed: tuple[str, ...] = JSON_TYPES,
    with_raw: bool = False,
) -> Any:
    """The request body parsed as JSON, after checking its type and size (with the raw
    bytes too when `with_raw`)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if "xml" in content_type:
        raise error(
            415, "not-supported", "XML is not supported: send FHIR JSON (application/fhir+json)"
        )
    if not content_type:
        # A body without a type is what a browser's cross-origin form can send without
        # asking first: refused, so no page can make a user's browser write here. (No
        # body at all stays the 400 below, which $validate of a stored resource expects.)
        await read_raw_body(request, max_bytes)
        raise error(
            415,
            "not-supported",
            f"The request has no Content-Type: send {' or '.join(allowed)}",
        )
    if content_type not in allowed:
        raise error(
            415,
            "not-supported",
            f"Content-Type '{content_type}' is not supported here; use {' or '.join(allowed)}",
        )
    raw = await read_raw_body(request, max_bytes)
    limits = request.app.state.settings.limits
    check_body_memory(raw, limits.max_body_memory_bytes)
    max_depth = limits.max_json_depth
    try:
        parsed = jsonio.loads(raw, max_depth)
    except jsonio.JsonError as exc:
        raise error(400, exc.code, str(exc)) from None
    return (parsed, raw) if with_raw else parsed


# What a parsed, validated and indexed body costs: per JSON object or array (a dict in
# Python, a value in the validator, index entries), and per byte of its text (the text, its
# parsed strings, the JSON stored). Measured with the 18.6 MB bodies in limits.py.
BYTES_PER_CONTAINER = 700
BYTES_PER_TEXT_BYTE = 3


def check_body_memory(raw: bytes, limit: int) -> None:
    """413 for a body whose estimated memory once parsed passes `limit`: refused before
    parsing, so that no request can take the server's memory with small objects."""
    containers = raw.count(b"{") + raw.count(b"[")  # at C speed; brackets in strings count
    estimate = containers * BYTES_PER_CONTAINER + len(raw) * BYTES_PER_TEXT_BYTE
    if estimate > limit:
        raise error(
            413,
            "too-costly",
            f"The body would take about {estimate // 2**20} MB of memory to process "
            f"({containers} JSON objects and arrays); this server takes at most "
            f"{limit // 2**20} MB (limit max_body_memory_bytes)",
        )


async def read_raw_body(request: Request, max_bytes: int) -> bytes:
    """The request body as bytes; 413 past `max_bytes` (checked while streaming, not only
    from Content-Length), 400 when empty."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise error(413, "too-costly", f"The body exceeds the limit of {max_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise error(413, "too-costly", f"The body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise error(400, "required", "The request has no body")
    return raw


def base_url(request: Request, configured: str) -> str:
    if configured:
        return configured.rstrip("/")
    return str(request.base_url).rstrip("/")


def pretty(request: Request) -> bool:
    return request.query_params.get("_pretty") == "true"


# A Bundle with more entries than this is written to the client as it is serialised, a
# hundred entries at a time, rather than built whole first: a page of 1,000 resources never
# exists twice in memory, and a client that does not read holds back the rest of it (the
# transport stops taking chunks, and api/limits.py closes it after Limits.send_seconds).
STREAM_ENTRIES = 100


def fhir_response(
    body: Any,
    status: int = 200,
    headers: dict[str, str] | None = None,
    pretty_print: bool = False,
) -> Response:
    if isinstance(body, dict) and body.get("entry") == []:
        # R4 JSON: an array is never empty (json.html#arrays); strict parsers refuse `[]`,
        # so a Bundle with no entries leaves the element out
        body = {key: value for key, value in body.items() if key != "entry"}
    if (
        isinstance(body, dict)
        and not pretty_print
        and isinstance(body.get("entry"), list)
        and len(body["entry"]) > STREAM_ENTRIES
    ):
        return StreamingResponse(
            _bundle_chunks(body),
            status_code=status,
            headers=headers,
            media_type=f"{FHIR_JSON}; charset=utf-8",
        )
    if body is None:
        content = b""
    elif isinstance(body, bytes) and not pretty_print:
        content = body
    elif isinstance(body, bytes):
        content = jsonio.dumps(jsonio.loads(body), pretty=True)
    else:
        content = jsonio.dumps(body, pretty=pretty_print)
    return Response(
        content=content,
        status_code=status,
        headers=headers,
        media_type=f"{FHIR_JSON}; charset=utf-8" if body is not None else None,
    )


async def _bundle_chunks(bundle: dict[str, Any]) -> AsyncIterator[bytes]:
    """The JSON of `bundle`, its entries STREAM_ENTRIES at a time (keys in their order)."""
    keys = list(bundle)
    at = keys.index("entry")
    head = jsonio.dumps({k: bundle[k] for k in keys[:at]})
    yield head[:-1] + (b',"entry":[' if at else b'"entry":[')
    entries = bundle["entry"]
    for start in range(0, len(entries), STREAM_ENTRIES):
        part = b",".join(jsonio.dumps(e) for e in entries[start : start + STREAM_ENTRIES])
        yield (b"," if start else b"") + part
    tail = {k: bundle[k] for k in keys[at + 1 :]}
    yield b"]," + jsonio.dumps(tail)[1:] if tail else b"]}"


def version_headers(stored: StoredResource, base: str) -> dict[str, str]:
    return {
        "ETag": stored.etag,
        "Last-Modified": stored.last_modified,
        "Location": f"{base}/{stored.location}",
        "Content-Location": f"{base}/{stored.location}",
    }


def query_items(request: Request) -> list[tuple[str, str]]:
    return list(request.query_params.multi_items())


def link(base: str, path: str, items: list[tuple[str, str]]) -> str:
    return f"{base}/{path}" + (f"?{urlencode(items)}" if items else "")
