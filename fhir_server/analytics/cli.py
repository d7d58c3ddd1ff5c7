"""`diatabase views materialize`: views to Parquet files and an embedded DuckDB database."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson


def add_views_commands(sub: Any) -> None:
    views = sub.add_parser("views", help="SQL on FHIR views: materialise them for analysis")
    commands = views.add_subparsers(dest="views_command", required=True)
    run = commands.add_parser(
        "materialize",
        help="write views to <out>/<view>.parquet and <out>/views.duckdb, incrementally "
        "from the history since the last run",
    )
    run.add_argument("--db", default=None, help="database URL")
    run.add_argument("--out", required=True, help="output folder (created owner-only)")
    run.add_argument(
        "--view", action="append", default=[],
        help="a ViewDefinition JSON file (repeatable); default: every stored active one",
    )  # fmt: skip
    run.add_argument(
        "--recipient", default=None,
        help="materialise what the de-identification facade releases to this research "
        "recipient (needs --deid-recipients and DIATABASE_DEID_SECRET)",
    )  # fmt: skip
    run.add_argument("--deid-recipients", default=None, help="the recipients file")
    run.set_defaults(func=cmd_materialize)


def _stored_views(service: Any) -> list[dict]:
    found = []
    for stored in service.storage.iter_current("ViewDefinition"):
        view = orjson.loads(stored.json)
        if view.get("status", "active") == "active":
            found.append(view)
    return found


def cmd_materialize(args: argparse.Namespace) -> int:
    from fhir_server.analytics.materialize import FacadeSource, Materializer, StoreSource
    from fhir_server.cli import _open_service

    settings, service = _open_service(args.db)
    views = [orjson.loads(Path(p).read_bytes()) for p in args.view] or _stored_views(service)
    if not views:
        print("no view to materialise: give --view FILE or store active ViewDefinitions",
              file=sys.stderr)  # fmt: skip
        return 1
    source: Any = StoreSource(service.storage)
    release = None
    if args.recipient:
        from dataclasses import replace

        from fhir_server.deid.context import build_release

        if args.deid_recipients:
            settings = replace(settings, deid_recipients=args.deid_recipients)
        # Reading through the facade only: no exports, so no job runner.
        release = build_release(service, settings)
        engine = release.recipients.engine(args.recipient)
        source = FacadeSource(source, release.facade, engine)
    materializer = Materializer(args.out, source)
    try:
        for view in views:
            done = materializer.materialize(view)
            print(f"{done.view}: {done.mode}, {done.changed_resources} resource(s) read, "
                  f"{done.rows} row(s), {done.parquet_bytes} bytes of Parquet, "
                  f"{done.seconds:.2f} s")  # fmt: skip
    finally:
        materializer.close()
        if release is not None:
            release.close()
        service.storage.close()
    return 0
