"""Memory with a ceiling: a burst of 50 concurrent pages of 1,000 resources and 50 clients
that ask for the same page and never read it leave the server near its resting size.

Before: each page was built whole (the Bundle's bytes beside the resources' own), the
answers of clients that never read stayed in their connections' buffers for as long as
the connections lived, and glibc kept every freed page: 1.5 GB after such a burst, for
good. Now a big Bundle is written as it is serialised (api/http.py), a client that takes
none of it for Limits.send_seconds is disconnected (api/limits.py), and the server trims
malloc's free memory when it goes idle (api/memory.py).

Ceilings (generous, for a busy CI machine; measured on 2 cores: resting 245 MB, peak
+180 MB, +115 MB once idle, most of it the page caches of the threadpool's SQLite reader
connections, one per thread): the peak at most PEAK_CEILING_MB above the resting size, and
the size once idle at most REST_CEILING_MB above it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from tests.served import ServedProcess, raw_get, stored_database, wait_until, wait_until_idle

PEAK_CEILING_MB = 700
REST_CEILING_MB = 250
PAGE = "/Observation?_count=1000"
CLIENTS = 50
MB = 1024 * 1024


@pytest.fixture(scope="module")
def pages_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stored_database(
        tmp_path_factory.mktemp("memory") / "pages.db",
        [
            {
                "resourceType": "Observation",
                "id": f"reading-{i}",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
                "subject": {"reference": "Patient/memory"},
                "effectiveDateTime": "2024-01-01T10:00:00Z",
                "valueQuantity": {"value": i % 300, "unit": "mg/dL"},
                "note": [{"text": f"reading {i} " + "x" * 1500}],
            }
            for i in range(1000)
        ],
    )


def _sockets(server: ServedProcess) -> int:
    fds = Path(f"/proc/{server.pid}/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += fd.readlink().name.startswith("socket:")
        except OSError:
            continue  # closed meanwhile
    return count


def test_a_burst_of_pages_and_readers_that_never_read(pages_db: Path) -> None:
    with ServedProcess(pages_db, env={"DIATABASE_SEND_SECONDS": "3"}) as server:
        for _ in range(2):  # warm: the first page builds caches that stay
            assert httpx.get(server.url + PAGE, timeout=120).status_code == 200
        wait_until_idle(server)
        resting = server.rss_bytes()
        idle_sockets = _sockets(server)
        failures: list[str] = []

        def reader() -> None:
            response = httpx.get(server.url + PAGE, timeout=300)
            if response.status_code != 200 or len(response.json()["entry"]) != 1000:
                failures.append(f"{response.status_code} {response.text[:200]}")

        readers = [threading.Thread(target=reader) for _ in range(CLIENTS)]
        for thread in readers:
            thread.start()
        silent = [raw_get(server.port, PAGE) for _ in range(CLIENTS)]
        for thread in readers:
            thread.join(300)
        assert not failures, failures[:3]
        # the server closes the connections of the clients that never read
        wait_until(lambda: _sockets(server) <= idle_sockets, what="silent clients closed")
        wait_until_idle(server)
        peak, after = server.peak_rss_bytes(), server.rss_bytes()
        for sock in silent:
            sock.close()
    assert peak - resting < PEAK_CEILING_MB * MB, f"peak +{(peak - resting) / MB:.0f} MB"
    assert after - resting < REST_CEILING_MB * MB, f"idle +{(after - resting) / MB:.0f} MB"
