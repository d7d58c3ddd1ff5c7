"""What the full-text index (`_text`, `_content`) costs on ingest, side by side in one run.

Two workloads: the CGM-heavy resources of bench/search.py (patients, conditions, labs, a
CGM reading every 5 minutes, codes without displays: the readings have no text), and the
synthetic cohort of `diatabase generate` (displays on every coding, so every reading has a
row, names, addresses, medication dosages). Each is written through the server's extractor
and SqliteStorage, 500 per transaction, into fresh databases: once with the full-text
words (as the server writes them), once without, alternating, several rounds. Prints
resources/s (CPU time of this process, write-behind thread included, so that a busy
machine disturbs it less; wall time beside it), bytes per resource on disk, and the
overhead of the full-text rows. Not a pass/fail test.

    python -m bench.fulltext [--size small|medium|large]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.common import Result, own_peak_rss_mb
from bench.search import resources
from fhir_server.search.extract import IndexExtractor
from fhir_server.storage.base import instant
from fhir_server.storage.sqlite import SqliteStorage

SIZES = {"small": (500, 1), "medium": (5_000, 11), "large": (50_000, 11)}  # resources, rounds
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


def cgm_workload(count: int) -> list[dict]:
    return list(itertools.islice(resources(max(1, count // 500), 500), count))


def cohort_workload(count: int) -> list[dict]:
    """`count` resources of the synthetic cohort, every type in its share."""
    from fhir_server.synthetic import write_ndjson

    with tempfile.TemporaryDirectory() as tmp:
        write_ndjson(tmp, patients=max(1, count // 400), days=2, seed=1)
        found = [
            orjson.loads(line)
            for path in sorted(Path(tmp).glob("*.ndjson"))
            for line in path.read_bytes().splitlines()
        ]
    return found[:count]


WORKLOADS = {"cgm": cgm_workload, "cohort": cohort_workload}


def write(items: list[dict], fulltext: bool) -> tuple[float, float, float]:
    """(resources/s in CPU time, in wall time, bytes per resource) for one fresh database."""
    items = [dict(item) for item in items]
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


def measure(items: list[dict], rounds: int) -> dict[Any, Any]:
    """Median figures per mode over `rounds` alternating rounds, and under "overhead" the
    median of each round's own ratio (the two writes of a round run back to back: a busy
    machine changes both alike more than it changes two rounds)."""
    figures: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
    write(items[: BATCH * 2], True)  # warms the caches and the page cache: not counted
    for _ in range(rounds):
        for fulltext in (False, True):
            figures[fulltext].append(write(items, fulltext))
    found: dict[Any, Any] = {
        mode: tuple(statistics.median(f[i] for f in runs) for i in range(3))
        for mode, runs in figures.items()
    }
    found["overhead"] = statistics.median(
        plain[0] / text[0] - 1 for plain, text in zip(figures[False], figures[True], strict=True)
    )
    return found


def run(size: str = "small", db: str | None = None) -> list[Result]:
    """For bench/run.py (SQLite only: `db` is unused, fresh files are written)."""
    count, rounds = SIZES[size]
    rows = []
    for name, make in WORKLOADS.items():
        found = measure(make(count), rounds)
        (plain, _, plain_bytes), (text, _, text_bytes) = found[False], found[True]
        rows.append(
            Result(
                f"fulltext ingest {name}",
                f"{count:,} {name} resources through SqliteStorage with their full-text rows, "
                f"median of {rounds} rounds (CPU time): {found['overhead'] * 100:+.0f} % "
                f"time, {text_bytes:,.0f} vs {plain_bytes:,.0f} bytes/resource",
                text,
                "resources/s",
                peak_rss_mb=own_peak_rss_mb(),
                floor=f"without full text {plain:,.0f}/s",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default=None)
    args = parser.parse_args()
    count, rounds = SIZES[args.size]
    names = [args.workload] if args.workload else list(WORKLOADS)
    print(f"{count:,} resources per database, median of {rounds} alternating rounds")
    print(f"{'workload':<10}{'full text':<10}{'res/s (CPU)':>13}{'res/s (wall)':>14}"
          f"{'bytes/resource':>16}")
    for name in names:
        found = measure(WORKLOADS[name](count), rounds)
        for mode in (False, True):
            cpu, wall, size = found[mode]
            print(f"{name:<10}{'with' if mode else 'without':<10}{cpu:>13,.0f}{wall:>14,.0f}"
                  f"{size:>16,.0f}")
        print(f"{name}: full-text overhead {found['overhead'] * 100:+.1f} % CPU time "
              "(median of the rounds' own ratios)")


if __name__ == "__main__":
    main()
