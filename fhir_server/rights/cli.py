"""`diatabase consent object|withdraw|list` and `diatabase hold set|clear|list`."""

from __future__ import annotations

import argparse
from typing import Any

from fhir_server.settings import DEFAULT_DB


def add_rights_commands(sub: Any) -> None:
    consent = sub.add_parser(
        "consent", help="patients' objections to research use (opt-out Consents)"
    )
    commands = consent.add_subparsers(dest="consent_command", required=True)
    obj = commands.add_parser(
        "object", help="record a patient's objection: from now on no research output "
        "holds anything of the patient"
    )
    obj.add_argument("patient", help="the Patient's id")
    obj.add_argument("--source", required=True,
                     help="how the request came (e.g. 'letter 2026-12-01', 'portal')")
    withdraw = commands.add_parser(
        "withdraw", help="withdraw a patient's objection (research use is restored)"
    )
    withdraw.add_argument("patient", help="the Patient's id")
    listing = commands.add_parser("list", help="the objections in force")
    for command, func in ((obj, cmd_object), (withdraw, cmd_withdraw), (listing, cmd_list)):
        command.add_argument("--db", default=None, help=f"database URL (default {DEFAULT_DB})")
        command.set_defaults(func=func)


def cmd_object(args: argparse.Namespace) -> int:
    from fhir_server.rights.consents import record_objection

    return _run(args, lambda service: print(
        f"Consent/{record_objection(service, args.patient, args.source)}: "
        f"Patient/{args.patient} objects to research use"
    ))


def cmd_withdraw(args: argparse.Namespace) -> int:
    from fhir_server.rights.consents import withdraw_objection

    def work(service: Any) -> int:
        changed = withdraw_objection(service, args.patient)
        if not changed:
            print(f"Patient/{args.patient} has no objection in force")
            return 1
        for consent_id in changed:
            print(f"Consent/{consent_id}: inactive (research use restored)")
        return 0

    return _run(args, work)


def cmd_list(args: argparse.Namespace) -> int:
    from fhir_server.rights.consents import objections_in_force

    def work(service: Any) -> int:
        found = objections_in_force(service)
        for objection in found:
            print(f"Patient/{objection.patient}\tConsent/{objection.consent_id}\t"
                  f"{objection.date_time or '-'}\t{objection.source or '-'}")
        print(f"{len(found)} objection(s) in force")
        return 0

    return _run(args, work)


def _run(args: argparse.Namespace, work: Any) -> int:
    from fhir_server.cli import _open_service
    from fhir_server.model.outcome import FhirError

    _, service = _open_service(args.db)
    try:
        result = work(service)
    except FhirError as exc:
        raise SystemExit(f"diatabase: {exc}") from None
    finally:
        service.storage.close()
    return result if isinstance(result, int) else 0


def add_hold_commands(sub: Any) -> None:
    hold = sub.add_parser("hold", help="legal holds: resources $expunge must not erase")
    commands = hold.add_subparsers(dest="hold_command", required=True)
    put = commands.add_parser("set", help="hold a resource (a Patient: its whole compartment)")
    put.add_argument("reference", help="Type/id, e.g. Patient/123")
    put.add_argument("--reason", required=True)
    clear = commands.add_parser("clear", help="lift a hold")
    clear.add_argument("reference", help="Type/id")
    listing = commands.add_parser("list", help="the holds standing")
    for command, func in ((put, cmd_hold_set), (clear, cmd_hold_clear), (listing, cmd_hold_list)):
        command.add_argument("--db", default=None, help=f"database URL (default {DEFAULT_DB})")
        command.set_defaults(func=func)


def _holds(args: argparse.Namespace) -> Any:
    from fhir_server.rights.holds import Holds, holds_path
    from fhir_server.settings import Settings

    return Holds(holds_path(Settings.from_env(db_url=args.db)))


def _reference(text: str) -> tuple[str, str]:
    from fhir_server.model.resource_types import is_resource_type, is_valid_id

    rtype, _, rid = text.partition("/")
    if not is_resource_type(rtype) or not is_valid_id(rid):
        raise SystemExit(f"diatabase: not a Type/id reference: {text}")
    return rtype, rid


def cmd_hold_set(args: argparse.Namespace) -> int:
    rtype, rid = _reference(args.reference)
    _holds(args).set(rtype, rid, args.reason)
    print(f"{rtype}/{rid} held: {args.reason}")
    return 0


def cmd_hold_clear(args: argparse.Namespace) -> int:
    rtype, rid = _reference(args.reference)
    if not _holds(args).clear(rtype, rid):
        print(f"{rtype}/{rid} was not held")
        return 1
    print(f"{rtype}/{rid}: hold cleared")
    return 0


def cmd_hold_list(args: argparse.Namespace) -> int:
    from fhir_server.storage.base import instant

    found = _holds(args).all()
    for hold in found:
        print(f"{hold.resource_type}/{hold.id}\t{instant(hold.since)}\t{hold.reason}")
    print(f"{len(found)} hold(s)")
    return 0
