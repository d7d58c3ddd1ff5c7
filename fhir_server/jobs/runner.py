"""Running the store's jobs in background threads, off the request path.

A few worker threads per process (`jobs_workers`) take queued jobs from the store one at a
time (`JobStore.claim`, so several processes share the queue) and call the handler
registered for the job's kind. A handler reports progress through its `JobContext`,
which also tells it to stop: when the job is cancelled (DELETE on its status URL, from any
process) or the server shuts down (the job goes back to the queue and is run again from
the start by the next process, in a fresh folder). Jobs whose process died (kill -9, a
power cut) are found by the sweeper and queued again. The sweeper also deletes the files
and records of jobs past their retention, and of cancelled jobs.

Each job runs under a time budget of its own (storage/budget.py; Limits.job_seconds): past
it the job fails, naming the limit. The budget is also stopped when the job is cancelled in
this process or the server stops, so that a long statement (a costly `_typeFilter`) is
interrupted at once instead of running to its end before the next progress report.

Each job runs under the visibility of the request that started it (`visible_as`), so a
patient-context token's export holds only its patient's data, and under an audit
activity of its own (door "jobs"), so what it read or wrote is in the trail with who
asked for it.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhir_server.audit import Activity, Agent
from fhir_server.jobs.store import CANCELLED, Job, JobStore, Owner, runner_name
from fhir_server.search.visibility import Visibility, visible_as
from fhir_server.storage import budget
from fhir_server.storage.budget import Budget, BudgetExceeded
from fhir_server.storage.private_files import private_folder

log = logging.getLogger("diatabase.jobs")

PROGRESS_EVERY = 1.0  # seconds between progress writes (and cancellation checks) in the store
POLL_EVERY = 1.0  # seconds between looks for jobs queued by other processes
# A job silent for this long on another host is taken as lost (same host: its pid is checked).
STALE_AFTER = 600.0


class JobStopped(Exception):
    """Raised inside a handler to stop it: `reason` is "cancelled" or "shutdown"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JobContext:
    """What a handler gets: its job, a fresh folder for its files, and `progress`."""

    def __init__(self, job: Job, runner: JobRunner, activity: Activity | None) -> None:
        self.job = job
        self.runner = runner
        self.activity = activity
        self.folder = fresh_folder(job.folder)
        self.done = 0
        self.total: int | None = job.total
        self._text: str | None = None
        self._written = 0.0

    @property
    def params(self) -> dict[str, Any]:
        return self.job.params

    def progress(self, done: int | None = None, total: int | None = None,
                 text: str | None = None, force: bool = False) -> None:
        """Note progress (written to the store about once a second); raise JobStopped
        when the job was cancelled or the server is stopping."""
        if done is not None:
            self.done = done
        if total is not None:
            self.total = total
        if text is not None:
            self._text = text
        if self.runner.stopping.is_set():
            raise JobStopped("shutdown")
        now = time.monotonic()
        if force or now - self._written >= PROGRESS_EVERY:
            self._written = now
            if not self.runner.store.progress(self.job.id, self.done, self.total, self._text):
                raise JobStopped("cancelled")

    def add(self, n: int, text: str | None = None) -> None:
        self.progress(self.done + n, text=text)


Handler = Callable[[JobContext], dict[str, Any]]


@dataclass(frozen=True)
class JobKind:
    handler: Handler
    describe: str  # for the audit trail: "bulk export", "bulk import", ...


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        workers: int = 2,
        retention: float = 86400.0,
        trail: Any = None,
        seconds: float | None = None,
    ) -> None:
        self.store = store
        self.seconds = seconds  # each job's time budget (None: unbounded)
        self.workers = max(0, workers)  # 0: this process accepts jobs, others run them
        self.retention = retention
        self.trail = trail
        self.kinds: dict[str, JobKind] = {}
        self.name = runner_name(secrets.token_hex(4))
        self.stopping = threading.Event()
        self._wake = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._running: dict[str, threading.Event] = {}  # job id -> set when it let go
        self._budgets: dict[str, Budget] = {}  # job id -> its budget, while it runs here
        # The sweeper looks at least this often (a short retention is honoured promptly).
        self.sweep_every = max(0.5, min(60.0, retention / 2))

    def register(self, kind: str, handler: Handler, describe: str) -> None:
        self.kinds[kind] = JobKind(handler, describe)

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self._threads:
            return
        self.sweep()
        for n in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"jobs-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        sweeper = threading.Thread(target=self._sweeping, name="jobs-sweeper", daemon=True)
        sweeper.start()
        self._threads.append(sweeper)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; running ones stop at their next progress report and go back
        to the queue, to be run again by the next process."""
        self.stopping.set()
        for running in list(self._budgets.values()):
            running.stop(budget.SHUTDOWN)  # interrupts their statements
        with self._wake:
            self._wake.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()
        self.store.close()

    # -- requests -------------------------------------------------------------------------

    def submit(
        self,
        kind: str,
        owner: Owner,
        request: str,
        params: dict[str, Any],
        visibility: Visibility | None,
        folder: Path | None = None,
    ) -> Job:
        if kind not in self.kinds:
            raise ValueError(f"no handler for jobs of kind {kind!r}")
        job = self.store.create(kind, owner, request, params, visibility, folder)
        with self._wake:
            self._wake.notify()
        return job

    def cancel(self, job_id: str, wait: float = 30.0) -> bool:
        """Cancel a job and delete its files (a running job here is waited for, so that no
        file appears after the answer); True when there was such a job."""
        if not self.store.cancel(job_id):
            return False
        running = self._budgets.get(job_id)
        if running is not None:
            running.stop(budget.CANCELLED)
        released = self._running.get(job_id)
        if released is not None:
            released.wait(wait)
        job = self.store.get(job_id)
        if job is not None and (released is not None or job.finished is not None
                                or job.started is None):
            # Not running anywhere (or it ran here and let go): nobody will write again.
            self._discard(job)
        return True

    # -- the workers ----------------------------------------------------------------------

    def _work(self) -> None:
        kinds = tuple(self.kinds)
        while not self.stopping.is_set():
            job = self.store.claim(self.name, kinds) if kinds else None
            if job is None:
                with self._wake:
                    self._wake.wait(POLL_EVERY)
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        released = threading.Event()
        self._running[job.id] = released
        spent = self._budgets[job.id] = Budget(self.seconds, "job_seconds")
        if self.stopping.is_set():
            spent.stop(budget.SHUTDOWN)
        kind = self.kinds[job.kind]
        activity = self._activity(job, kind)
        try:
            with visible_as(job.visibility), self._audited(activity):
                context = JobContext(job, self, activity)
                try:
                    with budget.scope(spent):
                        result = kind.handler(context)
                except Exception as exc:
                    reason = stop_reason(exc, spent)
                    if reason in ("shutdown", "cancelled"):
                        if activity is not None:
                            activity.outcome_text = f"job {reason}"
                        if reason == "shutdown":
                            self.store.requeue(job.id)
                        else:
                            self._discard(job)
                        return
                    if reason is None:
                        log.exception("job %s (%s) failed", job.id, job.kind)
                        message = f"{kind.describe} failed: {exc}"
                    else:  # past its budget
                        message = f"{kind.describe} failed: {BudgetExceeded(spent).message}"
                    if activity is not None:
                        activity.outcome = "8"
                        activity.outcome_text = f"job failed: {type(exc).__name__}"
                    self.store.fail(job.id, message, self.retention)
                    return
                if not self.store.progress(job.id, context.done, context.total, None):
                    self._discard(job)  # cancelled at the last moment: no files remain
                    return
                self.store.complete(job.id, result, self.retention)
        finally:
            self._budgets.pop(job.id, None)
            self._running.pop(job.id, None)
            released.set()

    def _activity(self, job: Job, kind: JobKind) -> Activity | None:
        if self.trail is None or not self.trail.enabled:
            return None
        owner = job.owner
        agent = Agent(client_id=owner.client_id or owner.recipient, user=owner.subject,
                      display=None if owner.client_id or owner.recipient
                      else "development mode (--insecure-dev)")
        return Activity(agent, "operation", f"{kind.describe} job {job.id}: {job.request}",
                        door="jobs", collect_reads=False)

    def _audited(self, activity: Activity | None) -> Any:
        if activity is None:
            return _nothing()
        return self.trail.activity(activity)

    # -- housekeeping ---------------------------------------------------------------------

    def _sweeping(self) -> None:
        while not self.stopping.wait(self.sweep_every):
            try:
                self.sweep()
            except Exception:  # the next round tries again
                log.exception("job sweep failed")

    def sweep(self) -> None:
        """Re-queue jobs whose process is gone; delete expired and cancelled jobs' files."""
        alive = {self.name}
        for job_id in self.store.orphans(alive, time.time() - STALE_AFTER):
            log.warning("job %s lost its runner: queued again", job_id)
            self.store.requeue(job_id)
        for job in self.store.expired(time.time()):
            if job.status == CANCELLED and job.id in self._running:
                continue  # its worker discards it when it stops
            self._discard(job)
        if self.store.queued_count():
            with self._wake:
                self._wake.notify_all()

    def _discard(self, job: Job) -> None:
        shutil.rmtree(job.folder, ignore_errors=True)
        for item in job.params.get("inputs", ()):
            if isinstance(item, dict) and item.get("path"):  # an upload waiting for the job
                Path(item["path"]).unlink(missing_ok=True)
        self.store.delete(job.id)


def stop_reason(exc: Exception, spent: Budget) -> str | None:
    """Why a job's handler raised `exc`: "shutdown" or "cancelled" (it was told to stop),
    "deadline" (past its budget), or None (it failed). A stopped budget may surface as
    another error (an interrupted statement outside the storage methods that translate it)."""
    if isinstance(exc, JobStopped):
        return exc.reason
    if isinstance(exc, BudgetExceeded) or spent.exhausted():
        return spent.reason or budget.DEADLINE
    return None


def fresh_folder(path: Path) -> Path:
    """The job's folder, empty and owner-only (a re-run starts from nothing)."""
    shutil.rmtree(path, ignore_errors=True)
    return private_folder(path)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
