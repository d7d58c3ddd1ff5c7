"""What the full-text index (`_text`, `_content`) costs on ingest, side by side in one run.

The same CGM-heavy resources as bench/search.py (patients, conditions, labs, a CGM reading
every 5 minutes) are written through the server's extractor and SqliteStorage, 500 per
transaction, into fresh databases: once with the full-text words (as the server writes
them), once without, alternating, several rounds. Prints resources/s (CPU time of this
process, write-behind thread included, so that a busy machine disturbs it less; wall time
beside it), bytes per resource on disk, and the overhead of the full-text rows. Not a
pass/fail test.

    python -m bench.fulltext [--size small|medium|large]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import orjson

from bench.common import Result, own_peak_rss_mb
from bench.search import resources
from fhir_server.search.extract import IndexExtractor
from fhir_server.storage.base import instant
from fhir_server.storage.sqlite import SqliteStorage

SIZES = {"small": (1_000, 2), "medium": (20_000, 5), "large": (100_000, 5)}  # resources, rounds
BATCH = 500


def extractor_for(storage: SqliteStorage, fulltext: bool) -> IndexExtractor:
    """The server's own extractor (units, shared rows) with or without the full text."""
    from fhir_server.service.fhir import FhirService
    from fhir_server.settings import Settings

    server = FhirService(storage, Settings(db_url=f"sqlite:///{storage.path}")).extractor
    return IndexExtractor(
        server.registry,
        canonicalize=server.canonicalize,
        share_rows=server.share_rows,
        fulltext=fulltext,
    )


def write(count: int, fulltext: bool) -> tuple[float, float, float]:
    """(resources/s in CPU time, in wall time, bytes per resource) for one fresh database."""
    items = list(itertools.islice(resources(max(1, count // 500), 500), count))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fulltext.db"
        storage = SqliteStorage(str(path))
        extractor = extractor_for(storage, fulltext)
        extractor.extract(items[-1])  # compiles the types and loads the units: not timed
        cpu, wall = time.process_time(), time.perf_counter()
        for start in range(0, len(items), BATCH):
            with storage.transaction() as tx:
                for resource in items[start : start + BATCH]:
                    now = time.time()
                    resource["meta"] = {"versionId": "1", "lastUpdated": instant(now)}
                    raw = orjson.dumps(resource)
                    entries = extractor.extract(resource)
                    tx.put(resource["resourceType"], resource["id"], 1, now, raw, entries, "PUT")
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        storage.close()
        size = sum(p.stat().st_size for p in Path(tmp).iterdir() if p.name.startswith(path.name))
    return len(items) / cpu, len(items) / wall, size / len(items)


def measure(count: int, rounds: int) -> dict[bool, tuple[float, float, float]]:
    """Median figures per mode over `rounds` alternating rounds."""
    figures: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
    for _ in range(rounds):
        for fulltext in (False, True):
            figures[fulltext].append(write(count, fulltext))
    return {
        mode: tuple(statistics.median(f[i] for f in found) for i in range(3))  # type: ignore[misc]
        for mode, found in figures.items()
    }


def run(size: str = "small", db: str | None = None) -> list[Result]:
    """For bench/run.py (SQLite only: `db` is unused, fresh files are written)."""
    count, rounds = SIZES[size]
    found = measure(count, rounds)
    (plain, _, plain_bytes), (text, _, text_bytes) = found[False], found[True]
    return [
        Result(
            "fulltext ingest",
            f"{count:,} CGM-heavy resources through SqliteStorage with their full-text rows, "
            f"median of {rounds} rounds (CPU time): {(plain / text - 1) * 100:+.0f} % time, "
            f"{text_bytes:,.0f} vs {plain_bytes:,.0f} bytes/resource",
            text,
            "resources/s",
            peak_rss_mb=own_peak_rss_mb(),
            floor=f"without full text {plain:,.0f}/s",
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    args = parser.parse_args()
    count, rounds = SIZES[args.size]
    found = measure(count, rounds)
    print(f"{count:,} resources per database, median of {rounds} alternating rounds")
    print(f"{'full text':<10}{'res/s (CPU)':>13}{'res/s (wall)':>14}{'bytes/resource':>16}")
    for mode in (False, True):
        cpu, wall, size = found[mode]
        print(f"{'with' if mode else 'without':<10}{cpu:>13,.0f}{wall:>14,.0f}{size:>16,.0f}")
    print(f"full-text overhead: {(found[False][0] / found[True][0] - 1) * 100:+.1f} % CPU time")


if __name__ == "__main__":
    main()
