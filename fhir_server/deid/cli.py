"""`diatabase deid export | views | trace | verify | linkage`: the de-identification commands.

All read the master secret from DIATABASE_DEID_SECRET and the recipients from
`--recipients FILE` (default: DIATABASE_DEID_RECIPIENTS), the same file as
`diatabase serve --deid-recipients`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import orjson

from fhir_server.settings import DEFAULT_DB, Settings


def add_deid_commands(sub: Any) -> None:
    deid = sub.add_parser("deid", help="de-identified exports, leak tracing, verification")
    commands = deid.add_subparsers(dest="deid_command", required=True)

    export = commands.add_parser("export", help="write a pseudonymized extract for a recipient")
    export.add_argument("--recipient", required=True)
    export.add_argument("--out", required=True, help="folder to write NDJSON + manifest into")
    export.add_argument("--db", default=None, help=f"database URL (default {DEFAULT_DB})")
    export.add_argument("--type", default=None, help="comma-separated resource types")
    export.add_argument(
        "--views",
        default=None,
        help="view stores folder (default DIATABASE_DEID_VIEWS): copy the rows it has",
    )
    _common(export)
    export.add_argument("--quiet", action="store_true")
    export.set_defaults(func=cmd_export)

    views = commands.add_parser(
        "views", help="fill (and follow) the materialized views the facade serves from"
    )
    views.add_argument(
        "--views", default=None, help="folder of view stores (default DIATABASE_DEID_VIEWS)"
    )
    views.add_argument(
        "--recipient", action="append", default=None, help="recipient id (repeatable; default all)"
    )
    views.add_argument("--db", default=None, help=f"database URL (default {DEFAULT_DB})")
    views.add_argument(
        "--follow",
        type=float,
        default=None,
        metavar="SECONDS",
        help="after the fill, apply new writes every SECONDS until interrupted",
    )
    _common(views)
    views.add_argument("--quiet", action="store_true")
    views.set_defaults(func=cmd_views)

    trace = commands.add_parser("trace", help="name the recipient a leaked extract was made for")
    trace.add_argument("file", help="NDJSON, JSON Bundle/array, or an export folder")
    _common(trace)
    trace.add_argument("--json", action="store_true", help="print the full report as JSON")
    trace.set_defaults(func=cmd_trace)

    from fhir_server.deid.linkage_cli import add_linkage_commands

    add_linkage_commands(commands, _common, _guard)

    verify = commands.add_parser("verify", help="check an export's signature and file hashes")
    verify.add_argument("folder")
    verify.add_argument(
        "--key-file", default=None, help="PEM Ed25519 key (default: from the master secret)"
    )
    verify.set_defaults(func=cmd_verify)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--recipients", default=None, help="recipients JSON (default DIATABASE_DEID_RECIPIENTS)"
    )
    parser.add_argument("--rules", default=None, help="rules file (default: built-in profile)")
    parser.add_argument("--key-file", default=None, help="PEM Ed25519 signing key")


def load_recipients_for(args: argparse.Namespace) -> Any:
    from fhir_server.deid.keys import master_secret
    from fhir_server.deid.recipients import Recipients

    path = args.recipients or os.environ.get("DIATABASE_DEID_RECIPIENTS")
    if not path:
        raise SystemExit("diatabase: give --recipients FILE (or DIATABASE_DEID_RECIPIENTS)")
    return Recipients.load(path, master_secret(), args.rules), master_secret()


def _guard(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        from fhir_server.deid.keys import DeidConfigError

        try:
            return func(args)
        except DeidConfigError as exc:
            raise SystemExit(f"diatabase: {exc}") from None

    return run


@_guard
def cmd_export(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fhir_server.audit import Activity
    from fhir_server.deid.export import planned_counts, run_export
    from fhir_server.deid.keys import signing_key
    from fhir_server.deid.linkage import LinkageStore, store_path
    from fhir_server.deid.views import ViewStore, fingerprint, view_path
    from fhir_server.gc_tuning import tune_for_server
    from fhir_server.service.fhir import FhirService
    from fhir_server.storage import open_storage

    recipients, master = load_recipients_for(args)
    engine = recipients.fresh_engine(args.recipient)
    settings = Settings.from_env(db_url=args.db)
    service = FhirService(open_storage(settings.db_url), settings)
    tune_for_server()
    types = [t for t in args.type.split(",") if t] if args.type else None
    store = None
    folder = args.views or settings.deid_views
    if folder and view_path(folder, args.recipient).exists():
        store = ViewStore(view_path(folder, args.recipient), fingerprint(engine))
        if not store.usable():
            print(f"{store.path} was made with other keys or rules: not used", file=sys.stderr)
            store.close()
            store = None
    agent = service.audit.act_as_command("deid export")
    request = f"diatabase deid export --recipient {args.recipient} --type {args.type or '*'}"
    activity = Activity(agent, "operation", request, door="cli", collect_reads=False)
    try:
        with service.audit.activity(activity):
            total = activity.read_count = sum(planned_counts(service, types).values())
            with tqdm(total=total, unit=" resources", disable=args.quiet) as bar:
                manifest = run_export(
                    service,
                    engine,
                    args.out,
                    signing_key(master, args.key_file),
                    types,
                    bar.update,
                    views=store,
                    linkage=LinkageStore(store_path(settings.deid_linkage, settings.db_url))
                    if recipients.get(args.recipient).linkage
                    else None,
                )
    finally:
        if store is not None:
            store.close()
        service.storage.close()
    written = sum(item["count"] for item in manifest["output"])
    kanon = manifest["kAnonymity"]
    print(
        f"Exported {written} resources in {len(manifest['output'])} file(s) to {args.out} "
        f"for {args.recipient}; k-anonymity k={kanon['k']}: {kanon['released']} of "
        f"{kanon['patients']} patients released, generalized {kanon['generalized']}, "
        f"{kanon['suppressed']} suppressed"
    )
    return 0


@_guard
def cmd_views(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fhir_server.deid.export import planned_counts
    from fhir_server.deid.facade import served_types
    from fhir_server.deid.views import ViewStore, fill, fingerprint, follow, view_path
    from fhir_server.gc_tuning import tune_for_server
    from fhir_server.service.fhir import FhirService
    from fhir_server.stop_signals import StopSignals
    from fhir_server.storage import open_storage

    recipients, _ = load_recipients_for(args)
    settings = Settings.from_env(db_url=args.db)
    folder = args.views or settings.deid_views
    if not folder:
        raise SystemExit("diatabase: give --views DIR (or DIATABASE_DEID_VIEWS)")
    chosen = args.recipient or [r.id for r in recipients]
    service = FhirService(open_storage(settings.db_url), settings)
    tune_for_server()
    stores = {}
    try:
        types = served_types()
        total = sum(planned_counts(service, types).values())
        for recipient_id in chosen:
            engine = recipients.fresh_engine(recipient_id)
            store = ViewStore(view_path(folder, recipient_id), fingerprint(engine))
            stores[recipient_id] = (engine, store)
            with tqdm(total=total, unit=" resources", disable=args.quiet) as bar:
                report = fill(service, engine, store, types, bar.update)
            rate = report.written / report.cpu_seconds if report.cpu_seconds else 0
            print(
                f"{recipient_id}: {report.checked} resources checked, {report.written} "
                f"pseudonymized, {report.removed} removed in {report.seconds:.1f} s "
                f"({rate:,.0f} per CPU second) into {store.path}",
                # stdout is a pipe or a log file under a supervisor: block-buffered, the
                # fill's report would only appear once the follower next had news.
                flush=True,
            )
        if args.follow is not None:
            # Ctrl-C, or SIGTERM from a supervisor (systemd, Kubernetes), ends it after the
            # pass in progress (never inside a write) or at once from the wait between
            # passes, with the stores closed.
            with StopSignals() as stop:
                while not stop.wait(args.follow):
                    for recipient_id, (engine, store) in stores.items():
                        report = follow(service, engine, store, types)
                        if report.written or report.removed:
                            print(
                                f"{recipient_id}: {report.written} made, {report.removed} removed",
                                flush=True,
                            )
    except KeyboardInterrupt:  # during the fill
        pass
    finally:
        for _, store in stores.values():
            store.close()
        service.storage.close()
    return 0


@_guard
def cmd_trace(args: argparse.Namespace) -> int:
    from fhir_server.deid.trace import read_leak, trace

    recipients, _ = load_recipients_for(args)
    report = trace(
        read_leak(args.file),
        [recipients.keys(r.id) for r in recipients],
        {r.id: r.rules.value_watermark for r in recipients},
    )
    if args.json:
        print(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode())
    elif report.recipient is None:
        print(
            f"No recipient can be named ({report.carriers} timestamp carriers, "
            f"{report.value_carriers} value carriers, {report.pseudonyms_tried} ids tried)"
        )
    else:
        print(
            f"Recipient: {report.recipient} (by {report.method}; false-attribution "
            f"probability <= {report.false_attribution_probability:.3g}; "
            f"{report.carriers} timestamp carriers, {report.value_carriers} value carriers, "
            f"{report.pseudonyms_tried} ids tried)"
        )
    return 0 if report.recipient is not None else 1


@_guard
def cmd_verify(args: argparse.Namespace) -> int:
    from fhir_server.deid.keys import master_secret, signing_key
    from fhir_server.deid.signing import verify_export

    master = None if args.key_file else master_secret()
    trusted = signing_key(master, args.key_file).public_key()
    report = verify_export(Path(args.folder), trusted)
    if report.ok:
        print(f"OK: {report.files} file(s) and the manifest signature verify")
        return 0
    for problem in report.problems:
        print(f"ALTERED: {problem}", file=sys.stderr)
    return 1
