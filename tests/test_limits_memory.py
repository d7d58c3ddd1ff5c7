"""Memory with a ceiling: a burst of 50 concurrent pages of 1,000 resources and 50 clients
that ask for the same page and never read it leave the server near its resting size.

Before: each page was built whole (the Bundle's bytes beside the resources' own), the
answers of clients that never read stayed in their connections' buffers for as long as
the connections lived, and glibc kept every freed page: 1.5 GB after such a burst, for
good. Now a big Bundle is written as it is serialised (api/http.py), a client that takes
none of it for Limits.send_seconds is disconnected (api/limits.py), and the server trims
malloc's free memory when it goes idle (api/memory.py).

Ceilings (generous, for a busy CI machine): the peak at most PEAK_CEILING_MB above the
resting size; and, once the threadpool has retired the threads the burst started, the size
at most REST_CEILING_MB above it. Measured on 2 cores: resting 375 MB, peak +215 to
+290 MB; right after the burst +185 to +240 MB, nearly all of it the page caches of the
SQLite reader connections of the pool's threads (one a thread, up to 40 threads); once the
pool retires them (idle for 10 s, on its next piece of work) +35 to +50 MB. The size right
after the burst depends on how many threads the burst happened to start (CI saw +298 MB),
so it is not what is asserted.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from tests.served import ServedProcess, raw_get, stored_database, wait_until, wait_until_idle

PEAK_CEILING_MB = 700
REST_CEILING_MB = 200
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
        for sock in silent:
            sock.close()
        peak = server.peak_rss_bytes()
        assert peak - resting < PEAK_CEILING_MB * MB, f"peak +{(peak - resting) / MB:.0f} MB"
        grown: list[int] = []

        def back_near_resting() -> bool:
            grown.append(server.rss_bytes() - resting)
            if grown[-1] < REST_CEILING_MB * MB:
                return True
            # the pool retires a thread idle for 10 s only when it is given work; the
            # polls are 2 s apart so that the server is idle long enough to trim between
            httpx.get(server.url + "/Observation?_count=1", timeout=60).raise_for_status()
            return False

        try:
            wait_until(back_near_resting, every=2.0)
        except AssertionError:
            raise AssertionError(f"idle +{grown[-1] / MB:.0f} MB after 120 s") from None
