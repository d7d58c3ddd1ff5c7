"""`diatabase terminology lookup | expand | load` for operators.

`fhir_server/cli.py` calls `add_commands(subparsers)`; each command sets `func`, which
takes the parsed args and returns an exit code. Standalone: `python -m terminology.cli`.

`load` parses a full table once and saves it in the terminology data directory
(`--into DIR`, default $DIATABASE_TERMINOLOGY_DIR); the service reads that directory at
start when DIATABASE_TERMINOLOGY_DIR points to it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from terminology import store
from terminology.atc import load_who_atc
from terminology.cim10 import load_cim10
from terminology.errors import TerminologyError
from terminology.service import TerminologyService
from terminology.uris import ATC, BASE, CIM10, ICD10, LOINC

SYSTEM_ALIASES = {
    "icd10": ICD10, "icd-10": ICD10, "cim10": CIM10, "cim-10": CIM10, "atc": ATC,
    "loinc": LOINC,
}


def resolve_system(name: str) -> str:
    return SYSTEM_ALIASES.get(name.lower(), name)


def resolve_value_set(name: str) -> str:
    """A ValueSet URL, a shipped ValueSet id (`diabetes-conditions`), or a system alias
    (`icd10`: all of ICD-10)."""
    if name.lower() in SYSTEM_ALIASES:
        return SYSTEM_ALIASES[name.lower()] + "?fhir_vs"
    if "/" not in name and ":" not in name:
        return f"{BASE}/ValueSet/{name}"
    return name


def _service(args: argparse.Namespace) -> TerminologyService:
    directory = getattr(args, "data_dir", None) or store.data_dir_from_env()
    return TerminologyService(directory)


def cmd_lookup(args: argparse.Namespace) -> int:
    result = _service(args).lookup(resolve_system(args.system), args.code,
                                   display_language=args.lang)
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return 0
    for entry in result["parameter"]:
        if "part" in entry:
            parts = {p["name"]: next(v for k, v in p.items() if k != "name")
                     for p in entry["part"]}
            if entry["name"] == "designation":
                print(f"designation [{parts['language']}]: {parts['value']}")
            else:
                extra = f"  ({parts['description']})" if "description" in parts else ""
                print(f"{parts['code']}: {parts['value']}{extra}")
        else:
            print(f"{entry['name']}: {next(v for k, v in entry.items() if k != 'name')}")
    return 0


def cmd_expand(args: argparse.Namespace) -> int:
    result = _service(args).expand(resolve_value_set(args.url), filter=args.filter,
                                   offset=args.offset, count=args.count,
                                   display_language=args.lang)
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return 0
    expansion = result["expansion"]
    for item in expansion.get("contains", []):
        print(f"{item['code']:<12} {item['display']}   [{item['system']}]")
    shown = len(expansion.get("contains", []))
    print(f"-- {shown} shown, {expansion['total']} in total (offset {expansion['offset']})")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    directory = Path(args.into) if args.into else store.data_dir_from_env()
    if directory is None:
        print(f"error: give --into DIR or set {store.ENV_VAR}", file=sys.stderr)
        return 2
    if args.atc:
        system = load_who_atc(Path(args.atc), version=args.version)
        kind = "atc"
    else:
        system = load_cim10(*[Path(p) for p in args.cim10], version=args.version)
        kind = "cim10"
    path = store.save(system, directory, kind)
    print(f"saved {len(system)} {system.name} codes (version {system.version}) to {path}")
    if store.data_dir_from_env() != directory:
        print(f"the server reads it when {store.ENV_VAR}={directory}")
    return 0


def _run(func):
    def runner(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except TerminologyError as exc:
            print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
            return 1
    return runner


def add_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("terminology", help="look up, expand and load terminologies")
    parser.add_argument("--data-dir", help=f"terminology data directory (default ${store.ENV_VAR})")
    commands = parser.add_subparsers(dest="terminology_command", required=True)

    lookup = commands.add_parser("lookup", help="show a code: display, designations, parents")
    lookup.add_argument("system", help="system URL or icd10 | cim10 | atc | loinc")
    lookup.add_argument("code")
    lookup.add_argument("--lang", help="display language (fr, en)")
    lookup.add_argument("--json", action="store_true", help="print the FHIR Parameters")
    lookup.set_defaults(func=_run(cmd_lookup))

    expand = commands.add_parser("expand", help="list the codes of a ValueSet")
    expand.add_argument("url", help="ValueSet URL, shipped id (diabetes-conditions) or system")
    expand.add_argument("--filter")
    expand.add_argument("--offset", type=int, default=0)
    expand.add_argument("--count", type=int, default=50)
    expand.add_argument("--lang", help="display language (fr, en)")
    expand.add_argument("--json", action="store_true", help="print the FHIR ValueSet")
    expand.set_defaults(func=_run(cmd_expand))

    load = commands.add_parser("load", help="load a full ATC or CIM-10 table for the server")
    source = load.add_mutually_exclusive_group(required=True)
    source.add_argument("--atc", metavar="FILE", help="WHO ATC CSV (atc_code,atc_name,...)")
    source.add_argument("--cim10", metavar="FILE", action="append",
                        help="SNDS table (MS_CIM_V / IR_CIM_V; repeat to merge) or ATIH ClaML")
    load.add_argument("--into", metavar="DIR", help=f"data directory (default ${store.ENV_VAR})")
    load.add_argument("--version", help="version label to record for the table")
    load.set_defaults(func=_run(cmd_load))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="diatabase")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
