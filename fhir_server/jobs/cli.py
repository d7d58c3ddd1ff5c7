"""`diatabase export` and `diatabase import-ndjson`: the Bulk Data work without HTTP, for the
operator (everything is visible; what was done is in the audit trail, door `cli`).

    diatabase export --out DIR [--type Patient,Observation] [--since INSTANT]
                     [--type-filter 'Observation?code=...'] [--elements ...]
                     [--patients | --patient ID ... | --group ID] [--db URL]
    diatabase import-ndjson FILE... [--errors errors.ndjson] [--db URL]

`export` writes the NDJSON files and `manifest.json` (type, file, count per file) into DIR;
`import-ndjson` stores NDJSON files with the loader of `diatabase load` (ids kept) and
writes one OperationOutcome per rejected line into `--errors`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fhir_server.storage.private_files import private_folder


def add_commands(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser("export", help="Bulk Data export of clinical data to NDJSON files")
    export.add_argument("--out", required=True, help="folder for the files (created)")
    export.add_argument("--db", default=None, help="database URL (default: DIATABASE_DB)")
    export.add_argument("--type", default=None, help="resource types, comma-separated")
    export.add_argument("--since", default=None, help="only resources changed since (instant)")
    export.add_argument("--type-filter", action="append", default=[],
                        help="Type?search (repeatable; OR-ed for one type)")
    export.add_argument("--elements", default=None, help="[Type.]element,... to keep")
    who = export.add_mutually_exclusive_group()
    who.add_argument("--patients", action="store_true",
                     help="Patient level: every patient's compartment")
    who.add_argument("--patient", action="append", default=[],
                     help="Patient level: this patient's compartment (repeatable)")
    who.add_argument("--group", default=None, help="Group level: the group's members")
    export.add_argument("--quiet", action="store_true", help="no progress bar")
    export.set_defaults(func=cmd_export)

    imports = sub.add_parser("import-ndjson",
                             help="store NDJSON files (ids kept), reporting rejected lines")
    imports.add_argument("files", nargs="+", help="NDJSON files")
    imports.add_argument("--db", default=None, help="database URL (default: DIATABASE_DB)")
    imports.add_argument("--errors", default=None,
                         help="write an OperationOutcome per rejected line here (NDJSON)")
    imports.add_argument("--quiet", action="store_true", help="no progress bar")
    imports.set_defaults(func=cmd_import_ndjson)


def _service(db: str | None, command: str) -> tuple[Any, Any]:
    from fhir_server.gc_tuning import tune_for_server
    from fhir_server.service.fhir import FhirService
    from fhir_server.settings import Settings
    from fhir_server.storage import open_storage

    settings = Settings.from_env(db_url=db)
    service = FhirService(open_storage(settings.db_url), settings)
    service.audit.act_as_command(command)
    tune_for_server()
    return settings, service


def cmd_export(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fhir_server.analytics.cohort_store import CohortStore
    from fhir_server.analytics.cohorts import Cohorts
    from fhir_server.analytics.groups import GroupMembers
    from fhir_server.audit import Activity
    from fhir_server.jobs.bulk_export import export_to
    from fhir_server.jobs.export_request import GROUP, PATIENT, SYSTEM, parse_export_request
    from fhir_server.jobs.store import default_jobs_dir
    from fhir_server.model import jsonio
    from fhir_server.model.outcome import FhirError

    settings, service = _service(args.db, "export")
    items = [("_type", args.type)] if args.type else []
    items += [("_since", args.since)] if args.since else []
    items += [("_typeFilter", f) for f in args.type_filter]
    items += [("_elements", args.elements)] if args.elements else []
    items += [("patient", p) for p in args.patient]
    level = GROUP if args.group else PATIENT if (args.patients or args.patient) else SYSTEM
    try:
        request = parse_export_request(level, items, service.registry, False, args.group)
    except FhirError as exc:
        raise SystemExit(f"diatabase export: {exc}") from None
    cohorts = Cohorts(service, CohortStore(default_jobs_dir(settings) / "cohorts.db"))
    folder = private_folder(args.out)
    agent = service.audit.act_as_command("export")
    activity = Activity(agent, "operation", "diatabase export " + " ".join(sys.argv[2:]),
                        door="cli", collect_reads=False)
    with service.audit.activity(activity), \
            tqdm(unit=" resources", disable=args.quiet or not sys.stderr.isatty()) as bar:

        def progress(done: int | None = None, total: int | None = None,
                     text: str | None = None) -> None:
            if total is not None:
                bar.total = total
                bar.refresh()
            if done is not None:
                bar.update(done - bar.n)

        try:
            result = export_to(service, request, folder, GroupMembers(service, cohorts),
                               progress)
        except FhirError as exc:
            raise SystemExit(f"diatabase export: {exc}") from None
        activity.read_count = result["resources"]
    (folder / "manifest.json").write_bytes(jsonio.dumps(result, pretty=True))
    service.storage.close()
    print(f"Exported {result['resources']} resources in {len(result['output'])} file(s) "
          f"to {folder} (transactionTime {result['transactionTime']})")
    return 0


def cmd_import_ndjson(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fhir_server.ingest.loader import Loader
    from fhir_server.jobs.bulk_import import ndjson_items, outcome_line

    settings, service = _service(args.db, "import-ndjson")
    errors = open(args.errors, "wb") if args.errors else None  # noqa: SIM115 (closed below)
    rejected = [0]

    def on_rejected(where: str, exc: Any) -> None:
        rejected[0] += 1
        if errors is not None:
            errors.write(outcome_line(where, exc.issues) + b"\n")

    try:
        with tqdm(unit=" resources", disable=args.quiet or not sys.stderr.isatty()) as bar:
            loader = Loader(service, on_progress=bar.update, on_rejected=on_rejected)
            for name in args.files:
                path = Path(name)
                for where, resource in ndjson_items(path, {"type": "", "url": str(path)},
                                                    on_rejected):
                    loader.add(where, resource)
            report = loader.finish()
    finally:
        if errors is not None:
            errors.close()
        service.storage.close()
    print(f"Imported {len(args.files)} file(s) into {settings.db_url}: {report.created} "
          f"created, {report.updated} updated, {rejected[0]} rejected")
    return 1 if rejected[0] else 0
