"""Everything the facade needs, built once from the settings (`create_app` keeps it)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from fhir_server.deid.facade import DeidFacade
from fhir_server.deid.keys import DeidConfigError, master_secret, signing_key
from fhir_server.deid.linkage import LinkageStore, store_path
from fhir_server.deid.recipients import Recipients
from fhir_server.deid.views import ViewStore, fingerprint, view_path
from fhir_server.jobs import JobContext, JobRunner
from fhir_server.jobs.deid_export import DeidExports
from fhir_server.jobs.view_export import DEID_VIEW_EXPORT, run_view_export
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage.private_files import private_folder

log = logging.getLogger("diatabase.deid")


@dataclass
class DeidRelease:
    """What the facade releases and to whom: enough to read through it (the server, the
    views materialiser), no exports and so no job runner."""

    recipients: Recipients
    facade: DeidFacade
    views: dict[str, ViewStore] = field(default_factory=dict)
    master: bytes = field(default=b"", repr=False)
    # recipient -> the linkage keys the third party returned (recipients with linkage)
    linkage: dict[str, LinkageStore] = field(default_factory=dict)

    def close(self) -> None:
        for store in self.views.values():
            store.close()


@dataclass
class DeidContext:
    recipients: Recipients
    facade: DeidFacade
    jobs: DeidExports
    views: list[ViewStore] = field(default_factory=list)

    def close(self) -> None:
        for store in self.views:
            store.close()


def build_release(service: FhirService, settings: Settings) -> DeidRelease:
    """The recipients and the facade over `service` (with the view stores if configured)."""
    if not settings.deid_recipients:
        raise DeidConfigError("the de-identification facade needs a recipients file")
    master = master_secret(settings.deid_secret or None)
    recipients = Recipients.load(settings.deid_recipients, master, settings.deid_rules or None)
    if not len(recipients):
        raise DeidConfigError(f"{settings.deid_recipients} lists no recipient")
    views = {}
    if settings.deid_views:
        views = {
            r.id: ViewStore(
                view_path(settings.deid_views, r.id), fingerprint(recipients.engine(r.id))
            )
            for r in recipients
        }
        for recipient_id, store in views.items():
            if not store.usable():
                # Served by the engine meanwhile; the facade looks again every few seconds.
                log.warning(
                    "no usable view store for %s at %s: fill it with `diatabase deid views`",
                    recipient_id,
                    store.path,
                )
    store = LinkageStore(store_path(settings.deid_linkage, settings.db_url))
    linkage = {recipient_id: store for recipient_id in recipients.with_linkage()}
    facade = DeidFacade(service, views=views, linkage=linkage)
    return DeidRelease(recipients, facade, views, master, linkage)


def build_deid(service: FhirService, settings: Settings, runner: JobRunner) -> DeidContext:
    """The facade, its recipients and their exports (kinds of job of `runner`: the
    de-identified `$export` and a research recipient's `$viewdefinition-export`)."""
    release = build_release(service, settings)
    export_dir = settings.deid_export_dir or default_export_dir(settings.db_url)
    # Never a shared /tmp: the default lies beside the database, owner-only.
    jobs = DeidExports(runner, service, release.recipients, signing_key(release.master),
                       release.views, private_folder(export_dir), release.linkage)  # fmt: skip

    def view_export(context: JobContext) -> dict[str, Any]:
        # the recipient's keys and rules as they are now (a re-run after a restart too)
        engine = release.recipients.fresh_engine(context.params["recipient"])
        return run_view_export(context, service,
                               lambda rtype: release.facade.released(engine, rtype))  # fmt: skip

    runner.register(DEID_VIEW_EXPORT, view_export, "de-identified view export")
    return DeidContext(release.recipients, release.facade, jobs, list(release.views.values()))


def default_export_dir(db_url: str) -> str:
    """Where exports go unless configured: beside a SQLite database, else in the working
    folder; never a shared temporary folder (the folder is made owner-only)."""
    if db_url.startswith("sqlite:///") and ":memory:" not in db_url:
        return db_url.removeprefix("sqlite:///").split("?", 1)[0] + ".deid-exports"
    return "diatabase-deid-exports"
