"""Export benchmark: the generated population written out as NDJSON, one file per type.

Reads every current resource through the storage (`iter_current`, what a bulk export
streams) and writes `<Type>.ndjson`; resources/s and MB/s. The floor in the same run is
SQLite's own `SELECT json` of the same rows, with no storage layer.

    python -m bench.export [--size small|medium|large] [--db URL]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

from bench.common import Result, own_peak_rss_mb, print_table
from bench.population import loaded


def export_ndjson(db_url: str, folder: Path, types: list[str]) -> tuple[int, int]:
    """(resources, bytes) written: one NDJSON line per current resource."""
    from fhir_server.storage import open_storage

    storage = open_storage(db_url)
    count = size = 0
    try:
        for rtype in types:
            with open(folder / f"{rtype}.ndjson", "wb", buffering=1 << 20) as out:
                for stored in storage.iter_current(rtype):
                    out.write(stored.json)
                    out.write(b"\n")
                    count += 1
                    size += len(stored.json) + 1
    finally:
        storage.close()
    return count, size


def sqlite_floor(db_url: str) -> float:
    conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
    try:
        started = time.perf_counter()
        count = sum(1 for _ in conn.execute("SELECT json FROM history"))  # one version each
        return count / (time.perf_counter() - started)
    finally:
        conn.close()


def run(size: str = "small", db: str | None = None) -> list[Result]:
    population = loaded(size, db)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        count, written = export_ndjson(population.db_url, Path(tmp), sorted(population.sample))
        seconds = time.perf_counter() - started
    if count != population.resources:
        raise RuntimeError(f"exported {count} of {population.resources} resources")
    sqlite = population.db_url.startswith("sqlite:///")
    floor = f"sqlite SELECT json {sqlite_floor(population.db_url):,.0f} rows/s" if sqlite else ""
    return [Result(
        "export",
        f"NDJSON per type through Storage.iter_current, {count:,} resources, "
        f"{written / 1e6:,.0f} MB, {written / 1e6 / seconds:,.0f} MB/s",
        count / seconds, "resources/s", None, None, own_peak_rss_mb(), floor,
        (db or "sqlite").split(":", 1)[0])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("small", "medium", "large"), default="small")
    parser.add_argument("--db", default=None, help="database URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    print_table(run(args.size, args.db))


if __name__ == "__main__":
    main()
