"""Asynchronous exports (Bulk Data style): one background thread per job.

A job belongs to the recipient who started it: its status and files are only served to
that recipient. Jobs live in memory (a restart forgets them; their folders stay on disk).
"""

from __future__ import annotations

import secrets
import shutil
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fhir_server.deid.engine import Deidentifier
from fhir_server.deid.export import ExportCancelled, planned_counts, run_export
from fhir_server.deid.views import ViewStore
from fhir_server.service.fhir import FhirService
from fhir_server.storage.private_files import private_folder


@dataclass
class ExportJob:
    id: str
    recipient: str
    folder: Path
    total: int = 0
    done: int = 0
    manifest: dict[str, Any] | None = None
    error: str | None = None
    cancelled: bool = False
    thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        return self.manifest is not None or self.error is not None


class ExportJobs:
    def __init__(
        self,
        service: FhirService,
        signing_key: Ed25519PrivateKey,
        root: str | None,
        views: Mapping[str, ViewStore] | None = None,
    ) -> None:
        self._service = service
        self._views = dict(views or {})
        self._key = signing_key
        # Never a shared /tmp: the default lies in the working folder, owner-only.
        self._root = private_folder(root or "diatabase-deid-exports")
        self._jobs: dict[str, ExportJob] = {}
        self._lock = threading.Lock()

    def start(self, engine: Deidentifier, types: list[str] | None = None) -> ExportJob:
        job_id = secrets.token_urlsafe(18)
        job = ExportJob(job_id, engine.keys.recipient_id, self._root / job_id)
        job.total = sum(planned_counts(self._service, types).values())
        store = self._views.get(engine.keys.recipient_id)
        if store is not None and not store.usable():
            store = None

        def work() -> None:
            def progress(n: int) -> None:
                job.done += n

            try:
                job.manifest = run_export(
                    self._service,
                    engine,
                    job.folder,
                    self._key,
                    types,
                    progress,
                    lambda: job.cancelled,
                    store,
                )
            except ExportCancelled:
                job.error = "cancelled"
            except Exception as exc:  # reported through the status URL
                job.error = f"export failed: {type(exc).__name__}: {exc}"

        job.thread = threading.Thread(target=work, name=f"deid-export-{job_id}", daemon=True)
        with self._lock:
            self._jobs[job_id] = job
        job.thread.start()
        return job

    def get(self, job_id: str, recipient: str) -> ExportJob | None:
        job = self._jobs.get(job_id)
        return job if job is not None and job.recipient == recipient else None

    def delete(self, job_id: str, recipient: str) -> bool:
        job = self.get(job_id, recipient)
        if job is None:
            return False
        job.cancelled = True
        if job.thread is not None:
            job.thread.join(timeout=30)
        shutil.rmtree(job.folder, ignore_errors=True)
        with self._lock:
            self._jobs.pop(job_id, None)
        return True

    def wait_all(self, timeout: float = 30) -> None:
        for job in list(self._jobs.values()):
            if job.thread is not None:
                job.thread.join(timeout)
