"""Concurrent writers against a real server: no lost update, If-Match conflicts reported."""

from __future__ import annotations

import threading
import uuid

import httpx

from tests.conftest import RunningServer
from tests.test_api_crud import glucose

WORKERS = 8
INCREMENTS = 10


def test_no_lost_update_with_if_match_retry(server: RunningServer) -> None:
    """Eight clients each add 10 to a counter by read / If-Match update / retry on 412."""
    with httpx.Client(base_url=server.url, timeout=60) as setup:
        rid = setup.post("/Observation", json=glucose(0)).json()["id"]
    conflicts = []

    def worker() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            done = 0
            while done < INCREMENTS:
                current = http.get(f"/Observation/{rid}")
                body = current.json()
                body["valueQuantity"]["value"] += 1
                response = http.put(
                    f"/Observation/{rid}", json=body, headers={"If-Match": current.headers["etag"]}
                )
                if response.status_code == 412:
                    conflicts.append(1)
                    continue
                assert response.status_code == 200, response.text
                done += 1

    threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with httpx.Client(base_url=server.url, timeout=60) as check:
        final = check.get(f"/Observation/{rid}")
    assert final.json()["valueQuantity"]["value"] == WORKERS * INCREMENTS
    assert final.headers["etag"] == f'W/"{WORKERS * INCREMENTS + 1}"'
    assert conflicts, "eight racing writers should have met at least one stale If-Match"


def test_concurrent_conditional_creates_make_one_resource(server: RunningServer) -> None:
    ident = uuid.uuid4().hex
    body = glucose(identifier=[{"system": "urn:race", "value": ident}])
    statuses: list[int] = []

    def worker() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            response = http.post(
                "/Observation", json=body, headers={"If-None-Exist": f"identifier=urn:race|{ident}"}
            )
            statuses.append(response.status_code)

    threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] * (WORKERS - 1) + [201]
    with httpx.Client(base_url=server.url, timeout=60) as check:
        found = check.get("/Observation", params={"identifier": f"urn:race|{ident}"}).json()
    assert found["total"] == 1
