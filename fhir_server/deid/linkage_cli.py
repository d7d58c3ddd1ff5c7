"""`diatabase deid linkage request | answer | import`: the two-stage linkage keys.

    # the warehouse: stage 1 for one project (no trait, no id leaves: HMACs only)
    diatabase deid linkage request --recipient cohort-a --out request.ndjson
    # the trusted third party, on its own machine, with its own secret
    DIATABASE_LINKAGE_TTP_SECRET=... diatabase deid linkage answer \\
        --in request.ndjson --out answer.ndjson
    # the warehouse: keep the answers; the facade and exports release them
    diatabase deid linkage import --in answer.ndjson
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import orjson

from fhir_server.settings import DEFAULT_DB, Settings


def add_linkage_commands(commands: Any, common: Any, guard: Any) -> None:
    linkage = commands.add_parser("linkage", help="pseudonymous linkage keys (two stages)")
    steps = linkage.add_subparsers(dest="linkage_command", required=True)

    request = steps.add_parser("request", help="stage 1 (warehouse): the request file")
    request.add_argument("--recipient", required=True, help="the project (linkage: true)")
    request.add_argument("--out", required=True)
    request.add_argument("--db", default=None, help=f"database URL (default {DEFAULT_DB})")
    common(request)
    request.set_defaults(func=guard(cmd_request))

    answer = steps.add_parser(
        "answer", help="stage 2 (trusted third party, DIATABASE_LINKAGE_TTP_SECRET)"
    )
    answer.add_argument("--in", dest="source", required=True)
    answer.add_argument("--out", required=True)
    answer.set_defaults(func=cmd_answer)

    keep = steps.add_parser("import", help="keep the third party's answer (warehouse)")
    keep.add_argument("--in", dest="source", required=True)
    keep.add_argument("--db", default=None, help=f"database URL (default {DEFAULT_DB})")
    keep.add_argument(
        "--linkage", default=None, help="linkage store (default DIATABASE_DEID_LINKAGE)"
    )
    common(keep)
    keep.set_defaults(func=guard(cmd_import))


def cmd_request(args: argparse.Namespace) -> int:
    from fhir_server.audit import Activity
    from fhir_server.deid.cli import load_recipients_for
    from fhir_server.deid.keys import DeidConfigError
    from fhir_server.deid.linkage import stage1, stage1_key, traits
    from fhir_server.service.fhir import FhirService
    from fhir_server.storage import open_storage
    from fhir_server.storage.private_files import create_private_file

    recipients, master = load_recipients_for(args)
    if not recipients.get(args.recipient).linkage:
        raise DeidConfigError(f"recipient {args.recipient} is not allowed linkage keys")
    settings = Settings.from_env(db_url=args.db)
    service = FhirService(open_storage(settings.db_url), settings)
    key = stage1_key(master)
    values: set[str] = set()
    agent = service.audit.act_as_command("deid linkage request")
    activity = Activity(
        agent,
        "operation",
        f"diatabase deid linkage request --recipient {args.recipient}",
        door="cli",
        collect_reads=False,
    )
    try:
        with service.audit.activity(activity):
            for stored in service.storage.iter_current("Patient"):
                if stored.json is None:
                    continue
                found = traits(orjson.loads(stored.json))
                if found is not None:
                    values.add(stage1(key, found))
            activity.read_count = len(values)
    finally:
        service.storage.close()
    out = Path(args.out)
    create_private_file(out)
    lines = [orjson.dumps({"project": args.recipient, "stage1": v}) for v in sorted(values)]
    out.write_bytes(b"".join(line + b"\n" for line in lines))
    print(f"{len(values)} stage-1 values for {args.recipient} written to {out}")
    return 0


def cmd_answer(args: argparse.Namespace) -> int:
    from fhir_server.deid.linkage_ttp import LinkageError, answer, ttp_secret

    try:
        secret = ttp_secret()
        requests = [orjson.loads(line) for line in Path(args.source).read_bytes().splitlines()]
        answers = list(answer(secret, (r for r in requests if r)))
    except (LinkageError, orjson.JSONDecodeError, OSError) as exc:
        raise SystemExit(f"diatabase: {exc}") from None
    Path(args.out).write_bytes(b"".join(orjson.dumps(a) + b"\n" for a in answers))
    print(f"{len(answers)} linkage keys written to {args.out}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from fhir_server.deid.cli import load_recipients_for
    from fhir_server.deid.keys import DeidConfigError
    from fhir_server.deid.linkage import LinkageStore, store_path

    recipients, _ = load_recipients_for(args)
    settings = Settings.from_env(db_url=args.db)
    rows = []
    for number, line in enumerate(Path(args.source).read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        item = orjson.loads(line)
        project, value, key = item.get("project"), item.get("stage1"), item.get("key")
        if not all(isinstance(v, str) for v in (project, value, key)):
            raise DeidConfigError(f"{args.source} line {number}: project, stage1 and key")
        if not recipients.get(project).linkage:
            raise DeidConfigError(f"recipient {project} is not allowed linkage keys")
        rows.append((project, value, key))
    store = LinkageStore(store_path(args.linkage or settings.deid_linkage, settings.db_url))
    store.put(rows)
    print(f"{len(rows)} linkage keys kept in {store.path}")
    return 0
