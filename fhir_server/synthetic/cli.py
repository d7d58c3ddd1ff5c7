"""The `generate` command of the `diatabase` CLI.

    diatabase generate --patients N --days D [--seed S] [--end-date YYYY-MM-DD]
                       (--out DIR | --load)

The main CLI registers the command with `add_commands(subparsers)` and, for `--load`, calls
`run_generate(args, load)` with a callable that writes an iterable of resources into the
configured database. This module knows nothing of storage.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import date
from typing import Any

from .generator import DEFAULT_END_DATE, generate, write_ndjson

Loader = Callable[[Iterable[dict[str, Any]]], None]


def add_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "generate",
        help="generate a synthetic French diabetes cohort (NDJSON or straight into the database)",
        description="Synthetic patients, conditions, medications, encounters, devices, lab "
        "results, SMBG and CGM readings. Same seed and parameters, same output.",
    )
    parser.add_argument("--patients", type=int, required=True, help="number of patients")
    parser.add_argument("--days", type=int, required=True, help="days of data per patient")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument(
        "--end-date", type=date.fromisoformat, default=None,
        help=f"last day of the window (default {DEFAULT_END_DATE.isoformat()})",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", metavar="DIR", help="write one <Type>.ndjson per resource type")
    target.add_argument("--load", action="store_true", help="load into the configured database")
    parser.set_defaults(handler=run_generate)
    return parser


def _counting(resources: Iterable[dict[str, Any]], counts: Counter[str]) -> Iterator[dict]:
    for resource in resources:
        counts[resource["resourceType"]] += 1
        yield resource


def run_generate(args: argparse.Namespace, load: Loader | None = None) -> dict[str, int]:
    """Run the command; `load` receives the resources when `--load` is given."""
    started = time.perf_counter()
    if args.load:
        if load is None:
            raise SystemExit("generate --load: no database loader is configured; use --out DIR")
        counter: Counter[str] = Counter()
        load(_counting(generate(args.patients, args.days, args.seed, args.end_date), counter))
        counts = dict(sorted(counter.items()))
    else:
        counts = write_ndjson(args.out, args.patients, args.days, args.seed, args.end_date)
    elapsed = time.perf_counter() - started
    total = sum(counts.values())
    width = max((len(t) for t in counts), default=5)
    for resource_type, n in counts.items():
        print(f"{resource_type:<{width}}  {n:>10,}")
    rate = total / elapsed if elapsed > 0 else float("inf")
    print(f"{'total':<{width}}  {total:>10,}  in {elapsed:.2f} s ({rate:,.0f} resources/s)")
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry (`python -m fhir_server.synthetic.cli generate ...`), NDJSON only."""
    parser = argparse.ArgumentParser(prog="diatabase")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.handler(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
