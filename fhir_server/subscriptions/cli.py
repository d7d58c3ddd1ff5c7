"""`diatabase subscriptions deliver`: the delivery worker as a process of its own, so that
sending notifications never competes with the server's request threads for the GIL (the
server then runs with DIATABASE_SUBSCRIPTION_DELIVERY=0). One worker delivers per
database at a time (a lock file); another one started waits for it to stop."""

from __future__ import annotations

import argparse
import signal
import threading

from fhir_server.settings import DEFAULT_DB, Settings


def cmd_deliver(args: argparse.Namespace) -> int:
    from fhir_server.service.fhir import FhirService
    from fhir_server.storage import open_storage
    from fhir_server.subscriptions.delivery import build_worker

    settings = Settings.from_env(db_url=args.db, base_url=args.base_url)
    service = FhirService(open_storage(settings.db_url), settings)
    base = (settings.base_url or "http://localhost").rstrip("/")
    worker = build_worker(service, settings, lambda: base)
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    worker.start()
    try:
        stopped.wait()
    finally:
        worker.stop()
        service.storage.close()
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    subs = sub.add_parser("subscriptions", help="subscription notifications")
    commands = subs.add_subparsers(dest="subscriptions_command", required=True)
    deliver = commands.add_parser(
        "deliver", help="send subscription notifications (until SIGTERM), apart from the server"
    )
    deliver.add_argument("--db", default=None, help=f"database URL (default {DEFAULT_DB})")
    deliver.add_argument("--base-url", default=None,
                         help="the server's public base URL, for the notifications' references")
    deliver.set_defaults(func=cmd_deliver)
