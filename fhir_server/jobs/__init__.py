"""Asynchronous operations on one job store (fhir_server/jobs/).

- store.py: `JobStore`, the jobs in a SQLite file of their own (they survive restarts;
  every worker process sees them); `Owner`, who may poll a job and fetch its files
- runner.py: `JobRunner`, background threads running the jobs under the visibility of the
  request that started them, with progress, cancellation, restart and retention
- manifest.py: the one status and manifest shape (Bulk Data Access IG 2.0)
- export_request.py, selection.py, bulk_export.py: `$export` at system, Patient and Group
  level; bulk_import.py: `$import` of NDJSON; the de-identified export (deid/export.py)
  and cohort evaluations (analytics/cohorts.py) run here too
"""

from __future__ import annotations

from fhir_server.jobs.runner import JobContext, JobRunner, JobStopped
from fhir_server.jobs.store import Job, JobStore, Owner, default_jobs_dir

EXPORT, IMPORT, DEID_EXPORT = "export", "import", "deid-export"

__all__ = [
    "DEID_EXPORT",
    "EXPORT",
    "IMPORT",
    "Job",
    "JobContext",
    "JobRunner",
    "JobStopped",
    "JobStore",
    "Owner",
    "default_jobs_dir",
]
