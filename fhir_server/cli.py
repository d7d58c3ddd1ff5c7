"""The `diatabase` command: serve, load (and the commands other parts register)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fhir_server.settings import DEFAULT_DB, Settings


def _files(patterns: list[str]) -> list[Path]:
    """Files named, and the .json/.ndjson files inside named folders, in a stable order."""
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found += sorted(
                p for p in path.rglob("*") if p.suffix in (".json", ".ndjson", ".jsonl")
            )
        elif path.exists():
            found.append(path)
        else:
            raise SystemExit(f"diatabase: no such file or folder: {pattern}")
    return found


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from fhir_server.app import create_app
    from fhir_server.deid.keys import DeidConfigError

    settings = Settings.from_env(
        db_url=args.db,
        base_url=args.base_url,
        deid_recipients=args.deid_recipients,
        deid_only=args.deid_only or None,
    )
    try:
        app = create_app(settings)
    except DeidConfigError as exc:
        raise SystemExit(f"diatabase: {exc}") from None
    mode = " (de-identified facade only)" if settings.deid_only else ""
    print(
        f"Diatabase FHIR R4 server{mode} on http://{args.host}:{args.port}/ "
        f"(database {settings.db_url})"
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fhir_server.loader import Loader
    from fhir_server.service.fhir import FhirService
    from fhir_server.storage import open_storage

    settings = Settings.from_env(db_url=args.db)
    files = _files(args.files)
    service = FhirService(open_storage(settings.db_url), settings)
    with tqdm(unit=" resources", disable=args.quiet or not sys.stderr.isatty()) as bar:
        loader = Loader(service, on_progress=bar.update)
        report = loader.load_files(files)
    service.storage.close()
    print(
        f"Loaded {len(files)} file(s) into {settings.db_url}: {report.created} created, "
        f"{report.updated} updated, {len(report.failed)} rejected"
    )
    for failure in report.failed[:50]:
        print(f"  rejected: {failure}", file=sys.stderr)
    return 1 if report.failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diatabase", description="Diatabase FHIR R4 server")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the FHIR server")
    serve.add_argument("--db", default=None, help=f"database URL (default {DEFAULT_DB})")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--base-url", default=None, help="public base URL, if behind a proxy")
    serve.add_argument("--log-level", default="info")
    serve.add_argument(
        "--deid-recipients",
        default=None,
        metavar="FILE",
        help="recipients JSON file: serve the pseudonymized facade at /deid/ "
        "(master secret from DIATABASE_DEID_SECRET)",
    )
    serve.add_argument(
        "--deid-only",
        action="store_true",
        help="serve only the de-identified facade (/deid/ and its /metadata)",
    )
    serve.set_defaults(func=cmd_serve)

    load = sub.add_parser("load", help="store FHIR JSON / NDJSON files or folders")
    load.add_argument("files", nargs="+")
    load.add_argument("--db", default=None, help=f"database URL (default {DEFAULT_DB})")
    load.add_argument("--quiet", action="store_true")
    load.set_defaults(func=cmd_load)

    from fhir_server.deid.cli import add_deid_commands

    add_deid_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
