"""The server's job runner with its kinds of job, built once by `create_app`."""

from __future__ import annotations

from typing import Any

from fhir_server.jobs import EXPORT, IMPORT, JobContext, JobRunner, JobStore, default_jobs_dir
from fhir_server.jobs.selection import MemberSource


def build_runner(service: Any, settings: Any, members: MemberSource) -> JobRunner:
    """The runner (not started: `create_app`'s lifespan starts and stops it), with bulk
    export and import and the SQL on FHIR view export registered; other parts register
    theirs (deid)."""
    from fhir_server.jobs.bulk_export import run_export
    from fhir_server.jobs.bulk_import import run_import
    from fhir_server.jobs.view_export import VIEW_EXPORT, run_view_export

    store = JobStore(default_jobs_dir(settings))
    runner = JobRunner(store, settings.jobs_workers, float(settings.jobs_retention),
                       service.audit, settings.limits.job_seconds)

    def export(context: JobContext) -> dict[str, Any]:
        return run_export(context, service, members)

    def import_(context: JobContext) -> dict[str, Any]:
        return run_import(context, service, settings)

    runner.register(EXPORT, export, "bulk export")
    def view_export(context: JobContext) -> dict[str, Any]:
        return run_view_export(context, service)

    runner.register(IMPORT, import_, "bulk import")
    runner.register(VIEW_EXPORT, view_export, "view export")
    return runner
