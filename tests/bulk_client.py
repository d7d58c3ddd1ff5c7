"""A Bulk Data client for tests: kick-off, poll the status URL until done, read the files
(plain httpx, as any client would; no helper of the server is used)."""

from __future__ import annotations

import time
from typing import Any

import httpx

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
DEADLINE_SECONDS = 120  # a loaded 2-core machine


def kick_off(http: httpx.Client, path: str, headers: dict[str, str] | None = None,
             body: dict[str, Any] | None = None, **params: str) -> httpx.Response:
    all_headers = {**ASYNC, **(headers or {})}
    if body is not None:
        return http.post(path, json=body, params=params,
                         headers={**all_headers, "Content-Type": "application/fhir+json"})
    return http.get(path, params=params, headers=all_headers)


def wait(http: httpx.Client, status_url: str, headers: dict[str, str] | None = None
         ) -> httpx.Response:
    """Poll until the job is no longer in progress (202); each 202 must carry X-Progress
    and Retry-After, as the IG asks."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        status = http.get(status_url, headers=headers or {})
        if status.status_code != 202:
            return status
        assert status.headers.get("x-progress") and status.headers["retry-after"].isdigit()
        assert time.monotonic() < deadline, "the job did not finish in time"
        time.sleep(0.1)


def export(http: httpx.Client, path: str, headers: dict[str, str] | None = None,
           body: dict[str, Any] | None = None, **params: str) -> dict[str, Any]:
    """The completion manifest of an export that must succeed."""
    kicked = kick_off(http, path, headers, body, **params)
    assert kicked.status_code == 202, kicked.text[:500]
    status = wait(http, kicked.headers["content-location"], headers)
    assert status.status_code == 200, status.text[:500]
    return status.json()


def resources(http: httpx.Client, manifest: dict[str, Any],
              headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every resource of every output file, in order."""
    found = []
    for item in manifest["output"]:
        answer = http.get(item["url"], headers=headers or {})
        assert answer.status_code == 200, answer.text[:300]
        assert answer.headers["content-type"].startswith("application/fhir+ndjson")
        lines = [line for line in answer.text.split("\n") if line]
        assert len(lines) == item["count"]
        found += [httpx.Response(200, content=line).json() for line in lines]
        assert all(r["resourceType"] == item["type"] for r in found[-len(lines):])
    return found


def keys(found: list[dict[str, Any]]) -> list[str]:
    return sorted(f"{r['resourceType']}/{r['id']}" for r in found)
