"""The de-identified export (`/deid/$export`) as a job of the one job store: the work is
deid/export.py's; here it is registered as a kind of job, so that it survives restarts and
answers with the same status and manifest shape as every other job."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fhir_server.deid.export import planned_counts, run_export
from fhir_server.deid.signing import MANIFEST
from fhir_server.jobs import DEID_EXPORT, JobContext, JobRunner, Owner
from fhir_server.jobs.store import Job


class DeidExports:
    """Start and find a recipient's de-identified exports (files under `folder`)."""

    def __init__(
        self,
        runner: JobRunner,
        service: Any,
        recipients: Any,
        signing_key: Any,
        views: Mapping[str, Any],
        folder: Path,
        linkage: Mapping[str, Any] | None = None,
    ) -> None:
        self.runner = runner
        self.folder = folder
        self._service = service
        self._recipients = recipients
        self._key = signing_key
        self._views = dict(views)
        self._linkage = dict(linkage or {})  # recipient -> its linkage keys (if allowed)
        runner.register(DEID_EXPORT, self._run, "de-identified export")

    def start(self, recipient_id: str, types: list[str] | None, request: str) -> Job:
        return self.runner.submit(
            DEID_EXPORT, Owner(recipient=recipient_id), request,
            {"recipient": recipient_id, "types": types}, None, self.folder,
        )

    def get(self, job_id: str, recipient_id: str) -> Job | None:
        job = self.runner.store.get(job_id)
        if job is None or job.kind != DEID_EXPORT or job.owner != Owner(recipient=recipient_id):
            return None
        return job

    def _run(self, context: JobContext) -> dict[str, Any]:
        recipient_id = context.params["recipient"]
        # The recipient's keys and rules as they are now (a re-run after a restart too).
        engine = self._recipients.fresh_engine(recipient_id)
        store = self._views.get(recipient_id)
        if store is not None and not store.usable():
            store = None
        context.progress(0, sum(planned_counts(self._service, context.params["types"]).values()),
                         "pseudonymizing", force=True)
        signed = run_export(self._service, engine, context.folder, self._key,
                            context.params["types"], context.add, None, store,
                            self._linkage.get(recipient_id))
        return {
            "transactionTime": signed["transactionTime"],
            "output": [{"type": o["type"], "file": o["file"], "count": o["count"]}
                       for o in signed["output"]],
            "error": [],
            "signed": signed,
            "extra_files": [MANIFEST],
        }
