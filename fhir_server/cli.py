"""The `diatabase` command: serve, load (and the commands other parts register)."""

from __future__ import annotations

import argparse
import os
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

    from fhir_server.access_log import log_config
    from fhir_server.api.limits import uvicorn_limits
    from fhir_server.app import create_app
    from fhir_server.deid.keys import DeidConfigError
    from fhir_server.storage import open_storage

    settings = Settings.from_env(
        db_url=args.db,
        base_url=args.base_url,
        deid_recipients=args.deid_recipients,
        deid_only=args.deid_only or None,
        deid_views=args.deid_views,
        insecure_dev=args.insecure_dev or None,
    )
    if settings.insecure_dev:
        _check_insecure_dev(args.host)
    mode = " (de-identified facade only)" if settings.deid_only else ""
    where = f"http://{args.host}:{args.port}/"
    if args.workers > 1:
        # Worker processes build their own app from the environment; SQLite serialises
        # their writes (WAL, BEGIN IMMEDIATE) while parsing and validation run in parallel.
        os.environ["DIATABASE_DB"] = settings.db_url
        if settings.base_url:
            os.environ["DIATABASE_BASE_URL"] = settings.base_url
        if settings.deid_recipients:
            os.environ["DIATABASE_DEID_RECIPIENTS"] = settings.deid_recipients
        if settings.deid_only:
            os.environ["DIATABASE_DEID_ONLY"] = "1"
        if settings.deid_views:
            os.environ["DIATABASE_DEID_VIEWS"] = settings.deid_views
        if settings.insecure_dev:
            os.environ["DIATABASE_INSECURE_DEV"] = "1"
        open_storage(settings.db_url).close()  # create or migrate the schema once, up front
        if not settings.insecure_dev and not settings.deid_only:
            _prepare_auth(settings)  # one signing key for every worker, made before them
        print(
            f"Diatabase FHIR R4 server{mode} on {where} (database {settings.db_url})", flush=True
        )
        uvicorn.run(
            "fhir_server.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
            log_config=log_config(),
            **uvicorn_limits(settings.limits),
        )
        return 0
    try:
        app = create_app(settings)
    except DeidConfigError as exc:
        raise SystemExit(f"diatabase: {exc}") from None
    print(f"Diatabase FHIR R4 server{mode} on {where} (database {settings.db_url})", flush=True)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        log_config=log_config(),
        **uvicorn_limits(settings.limits),
    )
    return 0


def _prepare_auth(settings: Settings) -> None:
    from fhir_server.auth.store import AuthStore, store_path
    from fhir_server.auth.token_endpoint import ServerKey

    store = AuthStore(store_path(settings))
    ServerKey(store, settings.auth_signing_key)
    store.close()


INSECURE_DEV_WARNING = """
!!! --insecure-dev: NO ACCESS CONTROL. Anyone who can reach {where} can read, change and
!!! delete every patient's data. For development on this machine only; never with real data.
"""


def _check_insecure_dev(host: str) -> None:
    """--insecure-dev only on a loopback address, and loudly."""
    import ipaddress

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(
            f"diatabase: --insecure-dev is refused on {host}: it is allowed only when "
            "listening on a loopback address (127.0.0.1, ::1, localhost)"
        )
    print(INSECURE_DEV_WARNING.format(where=host), file=sys.stderr, flush=True)


def cmd_load(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fhir_server.ingest.loader import Loader

    files = _files(args.files)
    settings, service = _open_service(args.db)
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


def _open_service(db: str | None):
    from fhir_server.gc_tuning import tune_for_server
    from fhir_server.service.fhir import FhirService
    from fhir_server.storage import open_storage

    settings = Settings.from_env(db_url=db)
    service = FhirService(open_storage(settings.db_url), settings)
    service.audit.act_as_command(sys.argv[1] if len(sys.argv) > 1 else "command")
    tune_for_server()  # bulk commands: the same collector settings as the server
    return settings, service


def cmd_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fhir_server.ingest.loader import Loader
    from fhir_server.synthetic.cli import run_generate

    if not args.load:
        run_generate(args)
        return 0
    settings, service = _open_service(args.db)
    # the same progress bar as `load`: resources stored and resources per second
    with tqdm(unit=" resources", disable=args.quiet or not sys.stderr.isatty()) as bar:
        loader = Loader(service, on_progress=bar.update)

        def load(resources) -> None:
            loader.load_resources(resources, where="generate")

        run_generate(args, load=load)
    service.storage.close()
    report = loader.report
    print(f"Stored in {settings.db_url}: {report.created} created, {report.updated} updated")
    for failure in report.failed[:20]:
        print(f"  rejected: {failure}", file=sys.stderr)
    return 1 if report.failed else 0


def cmd_import(args: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    from fhir_server.ingest.importer import Importer, ImportOptions, expand, summary_table

    try:
        files = expand(args.files)
    except FileNotFoundError as exc:
        raise SystemExit(f"diatabase: {exc}") from None
    mapping = None
    if args.mapping:
        try:
            mapping = json.loads(Path(args.mapping).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"diatabase: cannot read the mapping {args.mapping}: {exc}") from None
    options = ImportOptions(
        format=args.format,
        patient=args.patient,
        timezone=args.timezone,
        dayfirst=args.dayfirst,
        mapping=mapping,
    )
    settings, service = _open_service(args.db)
    try:
        quiet = args.quiet or not sys.stderr.isatty()
        with tqdm(total=len(files), unit=" file", disable=quiet) as bar:
            report = Importer(service, options, on_progress=bar.update).import_files(files)
    finally:
        service.storage.close()
    print(f"Imported {len(files)} file(s) into {settings.db_url}")
    print(summary_table(report))
    return 1 if report.failed else 0


def cmd_mllp(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from fhir_server.ingest.mllp_config import MllpConfigError, load_config
    from fhir_server.ingest.mllp_listener import run_listener
    from fhir_server.service.ingest import ConversionError, zone_name

    try:
        config = load_config(
            args.config, host=args.host, port=args.port, timezone=args.timezone,
            certificate=args.tls_cert, key=args.tls_key, client_ca=args.tls_client_ca,
            max_message_bytes=args.max_message_bytes, idle_timeout=args.idle_timeout,
            max_connections=args.max_connections,
            max_connections_per_peer=args.max_connections_per_peer, workers=args.workers,
        )
        zone_name(config.timezone)
        config.policy()
        config.tls()
    except (ConversionError, MllpConfigError) as exc:
        raise SystemExit(f"diatabase: {exc}") from None
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    settings, service = _open_service(args.db)
    print(f"Storing into {settings.db_url}", flush=True)
    try:
        asyncio.run(run_listener(service, config))
    except KeyboardInterrupt:
        pass
    finally:
        service.storage.close()
    return 0


def _source_formats() -> list[str]:
    from fhir_server.ingest.importer import SOURCE_FORMATS
    from mappers.device_csv import FORMATS

    return [*SOURCE_FORMATS, *(f for f in FORMATS if f != "mapping")]


def _add_ingest_commands(sub: argparse._SubParsersAction) -> None:
    imp = sub.add_parser(
        "import",
        help="map HL7 v2, CSV (device / lab exports) and DICOM files and store them",
        description="Map and store: one transaction per HL7 v2 message, per CSV file, and "
        "for all the DICOM files together. Re-importing creates nothing new.",
    )
    imp.add_argument("files", nargs="+", help="files or folders")
    imp.add_argument(
        "--format", default="auto", choices=_source_formats(),
        help="source format (default: recognised from each file's content)",
    )
    imp.add_argument("--patient", default=None,
                     help="reference of the Patient a device export belongs to "
                     "(Patient/123 or Patient?identifier=system|value)")
    imp.add_argument("--timezone", default=None,
                     help="IANA zone of times given without an offset (default UTC)")
    imp.add_argument("--mapping", default=None,
                     help="a declarative CSV mapping (JSON file) for other exports")
    order = imp.add_mutually_exclusive_group()
    order.add_argument("--dayfirst", dest="dayfirst", action="store_true", default=None,
                       help="CSV dates are day-first (when the file cannot tell)")
    order.add_argument("--monthfirst", dest="dayfirst", action="store_false",
                       help="CSV dates are month-first")
    imp.add_argument("--db", default=None, help=f"database URL (default {DEFAULT_DB})")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    imp.set_defaults(func=cmd_import)

    mllp = sub.add_parser("mllp", help="receive HL7 v2 over MLLP and store it (ACK per message)")
    mllp.add_argument("--config", default=None,
                      help="TOML file: [listener] limits, [tls], [[peer]] registrations "
                           "(see README); the flags below override it")
    mllp.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    mllp.add_argument("--port", type=int, default=None, help="port (default 2575)")
    mllp.add_argument("--db", default=None, help=f"database URL (default {DEFAULT_DB})")
    mllp.add_argument("--timezone", default=None,
                      help="IANA zone of the senders' times without an offset (default UTC)")
    mllp.add_argument("--tls-cert", default=None, help="PEM certificate (chain): serve TLS")
    mllp.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    mllp.add_argument("--tls-client-ca", default=None,
                      help="PEM CA: mutual TLS, peers must present a certificate it signed")
    mllp.add_argument("--max-message-bytes", type=int, default=None,
                      help="largest message accepted (default 16 MiB; larger: AR)")
    mllp.add_argument("--idle-timeout", type=float, default=None,
                      help="seconds before a silent connection is closed (default 300)")
    mllp.add_argument("--max-connections", type=int, default=None,
                      help="connections in total (default 256)")
    mllp.add_argument("--max-connections-per-peer", type=int, default=None,
                      help="connections per peer address (default 16)")
    mllp.add_argument("--workers", type=int, default=None,
                      help="threads mapping and storing messages (default 4)")
    mllp.add_argument("--log-level", default="info")
    mllp.set_defaults(func=cmd_mllp)


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
        "--workers", type=int, default=1, help="server processes (use the machine's cores)"
    )
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
    serve.add_argument(
        "--deid-views",
        default=None,
        metavar="DIR",
        help="materialized view stores (filled by `diatabase deid views`): the facade "
        "serves their rows instead of pseudonymizing each request's resources",
    )
    serve.add_argument(
        "--insecure-dev",
        action="store_true",
        help="development only: no access control (every request allowed); refused unless "
        "--host is a loopback address",
    )
    serve.set_defaults(func=cmd_serve)

    load = sub.add_parser("load", help="store FHIR JSON / NDJSON files or folders")
    load.add_argument("files", nargs="+")
    load.add_argument("--db", default=None, help=f"database URL (default {DEFAULT_DB})")
    load.add_argument("--quiet", action="store_true")
    load.set_defaults(func=cmd_load)
    _add_ingest_commands(sub)

    from fhir_server.storage.mongo_admin import add_commands as add_mongo
    from fhir_server.synthetic.cli import add_commands as add_generate
    from terminology.cli import add_commands as add_terminology

    generate = add_generate(sub)
    generate.add_argument("--db", default=None, help="database URL for --load")
    generate.add_argument("--quiet", action="store_true", help="no progress bar with --load")
    generate.set_defaults(func=cmd_generate)
    add_terminology(sub)
    add_mongo(sub)

    from fhir_server.auth.cli import add_commands as add_clients
    from fhir_server.deid.cli import add_deid_commands

    add_clients(sub)

    add_deid_commands(sub)
    from fhir_server.jobs.cli import add_commands as add_bulk_commands

    add_bulk_commands(sub)
    from fhir_server.audit.cli import add_audit_commands

    add_audit_commands(sub)
    from fhir_server.analytics.cli import add_views_commands

    add_views_commands(sub)
    from fhir_server.clinical.cli import add_commands as add_clinical_commands

    add_clinical_commands(sub)
    from fhir_server.rights.cli import add_hold_commands, add_rights_commands

    add_rights_commands(sub)
    add_hold_commands(sub)

    from fhir_server.ingest.nightscout_cli import add_commands as add_nightscout_commands

    add_nightscout_commands(sub)
    from fhir_server.subscriptions.cli import add_commands as add_subscription_commands

    add_subscription_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
