"""`diatabase nightscout add | list | revoke`: the Nightscout sites, one per patient.

    diatabase nightscout add --patient Patient/123     # last line: {"site": ..., "secret": ...}
    diatabase nightscout list
    diatabase nightscout revoke SITE

Give the uploader (xDrip+, AndroidAPS, Loop...) the URL `{base}/nightscout/{site}` and the
secret: it sends the secret's SHA-1 digest as `api-secret`. `--secret` (at least 12
characters) sets the secret instead of a random one, e.g. to keep an uploader's setting.
"""

from __future__ import annotations

import argparse
import json
import time

from fhir_server.settings import DEFAULT_DB, Settings


def _sites(args: argparse.Namespace):
    from fhir_server.auth.store import store_path
    from fhir_server.ingest.nightscout_sites import NightscoutSites

    settings = Settings.from_env(db_url=args.db, auth_store=args.store)
    return NightscoutSites(store_path(settings)), settings


def _patient_exists(settings: Settings, patient: str) -> bool:
    from fhir_server.storage import open_storage

    storage = open_storage(settings.db_url)
    try:
        stored = storage.read("Patient", patient)
        return stored is not None and not stored.deleted
    finally:
        storage.close()


def cmd_add(args: argparse.Namespace) -> int:
    patient = args.patient.removeprefix("Patient/")
    if not patient or "/" in patient:
        raise SystemExit("diatabase: --patient takes a reference such as Patient/123")
    sites, settings = _sites(args)
    if not _patient_exists(settings, patient):
        raise SystemExit(f"diatabase: no Patient/{patient} in {settings.db_url}")
    try:
        site, secret = sites.add(patient, args.secret)
    except ValueError as exc:
        raise SystemExit(f"diatabase: {exc}") from None
    print(f"Nightscout site for Patient/{patient}: uploaders use the URL "
          f"<server>/nightscout/{site.site} and the secret below (shown once)")
    print(json.dumps({"site": site.site, "secret": secret, "patient": f"Patient/{patient}"}))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    sites, _ = _sites(args)
    found = sites.sites()
    if not found:
        print("No Nightscout sites")
    for site in found:
        state = "revoked" if site.revoked else "active"
        when = time.strftime("%Y-%m-%d", time.gmtime(site.created))
        print(f"{site.site}  Patient/{site.patient}  {state}  {when}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    sites, _ = _sites(args)
    if not sites.revoke(args.site):
        raise SystemExit(f"diatabase: no active Nightscout site {args.site}")
    print(f"Revoked {args.site}: its secret is refused from now on")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("nightscout", help="Nightscout upload sites (one per patient)")
    commands = parser.add_subparsers(dest="nightscout_command", required=True)

    def common(command: argparse.ArgumentParser) -> None:
        command.add_argument("--db", default=None, help=f"database URL (default {DEFAULT_DB})")
        command.add_argument("--store", default=None, help="the auth store file (default: "
                             "DIATABASE_AUTH_STORE, else beside the database)")

    add = commands.add_parser("add", help="a site for a patient; prints one JSON object "
                              "with site and secret on its last line")
    add.add_argument("--patient", required=True, help="Patient/{id}")
    add.add_argument("--secret", default=None, help="the secret (12 characters or more; "
                     "default: a random one)")
    common(add)
    add.set_defaults(func=cmd_add)
    listing = commands.add_parser("list", help="the sites")
    common(listing)
    listing.set_defaults(func=cmd_list)
    revoke = commands.add_parser("revoke", help="refuse a site's secret from now on")
    revoke.add_argument("site")
    common(revoke)
    revoke.set_defaults(func=cmd_revoke)
