"""The de-identified export runs on the one job store: a `/deid/$export` accepted by a
server that runs no job (`jobs_workers=0`) waits in the store while that server stops, and
the next server on the same files runs it and serves its manifest to the same recipient
only. (Before the move to jobs/, its jobs lived in memory and a restart forgot them.)"""

from __future__ import annotations

from pathlib import Path

import httpx

from fhir_server.settings import Settings
from tests.bulk_client import wait
from tests.conftest import RunningServer, database_url
from tests.deid_data import french_patients, transaction, write_recipients

KEYS = {"open": "key-open-789", "other": "key-other-123"}


def auth(recipient: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[recipient]}"}


def test_a_deid_export_survives_a_restart(tmp_path: Path) -> None:
    write_recipients(tmp_path / "recipients.json", KEYS, {"open": {"kAnonymity": {"k": 1}}})

    def settings(workers: int) -> Settings:
        return Settings(db_url=database_url(tmp_path), insecure_dev=True,
                        deid_secret="restart-test-master-secret-0123456789",
                        deid_recipients=str(tmp_path / "recipients.json"),
                        deid_export_dir=str(tmp_path / "exports"), jobs_workers=workers)

    with RunningServer(settings(0)) as first, \
            httpx.Client(base_url=first.url, timeout=60) as http:
        data = french_patients(count=3, readings=5)
        stored = http.post("/", json=transaction(data))
        assert stored.status_code == 200, stored.text[:300]
        kicked = http.get("/deid/$export?_type=Patient,Observation", headers=auth("open"))
        assert kicked.status_code == 202, kicked.text[:300]
        status_path = kicked.headers["content-location"].removeprefix(first.url)
        queued = http.get(status_path, headers=auth("open"))
        assert queued.status_code == 202 and queued.headers["x-progress"] == "queued"
    with RunningServer(settings(2)) as second, \
            httpx.Client(base_url=second.url, timeout=60) as http:
        assert http.get(status_path, headers=auth("other")).status_code == 404
        status = wait(http, status_path, headers=auth("open"))
        assert status.status_code == 200, status.text[:300]
        body = status.json()
        counts = {item["type"]: item["count"] for item in body["output"]}
        assert counts == {t: sum(r["resourceType"] == t for r in data)
                          for t in ("Patient", "Observation")}
        for item in body["output"]:
            data = http.get(item["url"], headers=auth("open"))
            assert data.status_code == 200 and len(data.text.splitlines()) == item["count"]
