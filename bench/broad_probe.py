"""One side of `bench.broad --readonly-db`: the broad searches in-process on a database
that must not be written (shared, or too big to copy), with the code on PYTHONPATH.

The database is opened `immutable` (no lock, no -shm, no write of any kind). The search
machinery comes from a SqliteStorage on an empty scratch file, given the big database's
parameter ids and a read-only connection to it: the storage's own open would write its
schema and log files. Prints one JSON line: query -> list of milliseconds (first page).
Run by bench/broad.py as a script (`python bench/broad_probe.py DB REQUESTS`), so that
PYTHONPATH chooses the revision measured. `date=ge<20 days before the latest reading>`.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path


def probe(db: Path, requests: int) -> dict:
    from fhir_server.service.fhir import FhirService
    from fhir_server.settings import Settings
    from fhir_server.storage.sqlite import SqliteStorage
    from fhir_server.storage.sqlite_search import run_search

    conn = sqlite3.connect(f"file:{db}?immutable=1", uri=True, check_same_thread=False)
    conn.execute("PRAGMA query_only=1")
    conn.execute("PRAGMA cache_size=-65536")
    with tempfile.TemporaryDirectory() as scratch:
        storage = SqliteStorage(str(Path(scratch) / "scratch.db"))
        service = FhirService(storage, Settings(db_url=f"sqlite:///{scratch}/scratch.db"))
        storage._pids = {(rtype, code): pid for pid, rtype, code
                         in conn.execute("SELECT pid, rtype, code FROM search_params")}
        storage._local.conn = conn  # read_many and date spans read the big database
        patients = [row[0] for row in conn.execute(
            "SELECT id FROM resources WHERE type='Patient' LIMIT 20")]
        newest = conn.execute("SELECT max(last_updated) FROM resources "
                              "WHERE type='Observation'").fetchone()[0]
        poll = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(newest + 3600))
        latest = conn.execute(
            "SELECT max(low) FROM idx_date WHERE pid=(SELECT pid FROM search_params "
            "WHERE rtype='Observation' AND code='date')").fetchone()[0]
        recent = time.strftime("%Y-%m-01", time.gmtime(latest - 20 * 86400))
        queries = {
            "patient": lambda n: [("patient", patients[n % len(patients)]),
                                  ("code", "http://loinc.org|99504-3"),
                                  ("date", f"ge{recent}"), ("_count", "10")],
            "date": lambda n: [("date", f"ge{recent}"), ("_count", "10")],
            "date -date": lambda n: [("date", f"ge{recent}"), ("_sort", "-date"),
                                     ("_count", "10")],
            "lastUpdated": lambda n: [("_lastUpdated", "gt2000-01-01"), ("_count", "10")],
            "poll": lambda n: [("_lastUpdated", f"gt{poll}"), ("_count", "10")],
        }
        times: dict[str, list[float]] = {}
        for name, items in queries.items():
            times[name] = []
            for n in range(requests + 1):
                query = service.search.parse("Observation", items(n), True)
                started = time.perf_counter()
                page = run_search(storage, conn, query, 10, None)
                spent = (time.perf_counter() - started) * 1000
                assert page.matches or name in ("poll", "patient"), name
                if n:  # the first one warms the cache
                    times[name].append(spent)
        storage.close()
    conn.close()
    return {"from": recent, "times": times}


if __name__ == "__main__":
    print(json.dumps(probe(Path(sys.argv[1]), int(sys.argv[2]))))
