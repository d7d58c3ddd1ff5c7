"""Read benchmark: GET by id and vread over HTTP, concurrent clients, on the population.

The generated population (bench/population.py) is loaded once; `diatabase serve` then
answers `GET /{type}/{id}` and `GET /{type}/{id}/_history/1` for ids spread over every
resource type, from several keep-alive connections. Every answer must be 200.

    python -m bench.read [--size small|medium|large] [--db URL]
"""

from __future__ import annotations

import argparse
import itertools

from bench.common import Result, percentile, print_table, serve
from bench.http_load import expect_ok, run_gets
from bench.population import loaded

REQUESTS = {"small": 300, "medium": 5000, "large": 10000}
CLIENTS = 8


def targets(sample: dict[str, list[str]], count: int, suffix: str = "") -> list[str]:
    """`count` paths cycling over the types, so that no one type dominates."""
    per_type = [[f"/{rtype}/{rid}{suffix}" for rid in ids] for rtype, ids in sample.items()]
    mixed = [p for group in itertools.zip_longest(*per_type) for p in group if p]
    return list(itertools.islice(itertools.cycle(mixed), count))


def run(size: str = "small", db: str | None = None) -> list[Result]:
    population = loaded(size, db)
    count = REQUESTS[size]
    rows = []
    with serve(population.db_url) as server:
        for name, suffix in (("read", ""), ("vread", "/_history/1")):
            paths = targets(population.sample, count, suffix)
            run_gets(server.url, paths[:50], 2)  # warm up
            figures = run_gets(server.url, paths, CLIENTS)
            expect_ok(figures, name)
            rows.append(Result(
                name,
                f"GET {'by id' if name == 'read' else '/_history/1'}, {count:,} requests over "
                f"{len(population.sample)} types, {CLIENTS} clients, "
                f"{population.resources:,} resources stored",
                figures.rate, "req/s", percentile(figures.latencies_ms, 50),
                percentile(figures.latencies_ms, 99), server.peak_rss_mb(),
                backend=(db or "sqlite").split(":", 1)[0]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(REQUESTS), default="small")
    parser.add_argument("--db", default=None, help="database URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    print_table(run(args.size, args.db))


if __name__ == "__main__":
    main()
