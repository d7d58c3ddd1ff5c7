"""`diatabase audit verify`: check the audit trail's hash chain in a database."""

from __future__ import annotations

import argparse
from typing import Any

from fhir_server.settings import DEFAULT_DB, Settings


def add_audit_commands(sub: Any) -> None:
    audit = sub.add_parser("audit", help="the audit trail: verify its hash chain")
    commands = audit.add_subparsers(dest="audit_command", required=True)
    check = commands.add_parser(
        "verify",
        help="report any edit, deletion or reordering of audit records in the database",
    )
    check.add_argument("--db", default=None, help=f"database URL (default {DEFAULT_DB})")
    check.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    from fhir_server.audit import open_store
    from fhir_server.audit.verify import verify
    from fhir_server.storage import open_storage

    settings = Settings.from_env(db_url=args.db)
    storage = open_storage(settings.db_url)
    try:
        report = verify(open_store(storage))
    finally:
        storage.close()
    for problem in report.problems:
        print(f"  {problem}")
    head = f"{report.head[0]}:{report.head[1].hex()}" if report.head else "none"
    verdict = "intact" if report.ok else f"BROKEN ({len(report.problems)} problem(s))"
    print(f"{report.records} audit record(s), chain {verdict}; head {head}")
    return 0 if report.ok else 1
