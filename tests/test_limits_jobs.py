"""Background jobs run under a time budget of their own (Limits.job_seconds), which is also
stopped when the job is cancelled or the server stops: a long statement is interrupted at
once instead of holding a core until its end.

The job here runs one SQLite statement that never ends by itself (a recursive count with no
bound) on the store's reader connection, the one its searches use. Before, a job had no
budget; a cancelled job ran on until its next progress report (never, for such a
statement: `cancel` gave up after 30 s and the job kept running), and `stop` waited for it
in vain.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from fhir_server.jobs import JobContext, JobRunner, JobStore, Owner
from fhir_server.jobs.store import FAILED, QUEUED
from fhir_server.storage import open_storage
from tests.served import wait_until

ENDLESS = (
    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n"
)


@pytest.fixture
def storage(tmp_path: Path):
    opened = open_storage(f"sqlite:///{tmp_path / 'store.db'}")
    yield opened
    opened.close()


def endless_runner(tmp_path: Path, storage: Any, seconds: float | None = None):
    """A runner whose "endless" job sets `started`, runs ENDLESS, and sets `ended` when
    its statement is over."""
    runner = JobRunner(JobStore(tmp_path / "jobs"), workers=1, seconds=seconds)
    started, ended = threading.Event(), threading.Event()

    def endless(context: JobContext) -> dict[str, Any]:
        started.set()
        try:
            storage.reader().execute(ENDLESS).fetchone()
        finally:
            ended.set()
        return {"output": []}

    runner.register("endless", endless, "endless query")
    runner.start()
    return runner, started, ended


def test_a_job_past_its_budget_fails_naming_the_limit(tmp_path: Path, storage: Any) -> None:
    runner, _started, _ended = endless_runner(tmp_path, storage, seconds=0.05)
    try:
        job = runner.submit("endless", Owner(), "req", {}, None)
        wait_until(lambda: runner.store.get(job.id).status == FAILED, what="the job to fail")
        error = runner.store.get(job.id).error
        assert "job_seconds" in error and "0.05 s" in error, error
    finally:
        runner.stop()


def test_cancelling_a_job_interrupts_its_statement(tmp_path: Path, storage: Any) -> None:
    runner, started, ended = endless_runner(tmp_path, storage)
    try:
        job = runner.submit("endless", Owner(), "req", {}, None)
        assert started.wait(60)
        assert runner.cancel(job.id, wait=60)
        # cancel returns once the job let go: its statement is over, its record and
        # folder are gone (before, it gave up waiting and the statement ran on)
        assert ended.is_set()
        assert runner.store.get(job.id) is None
        assert not job.folder.exists()
    finally:
        runner.stop()


def test_stopping_the_runner_interrupts_a_job_and_queues_it_again(
    tmp_path: Path, storage: Any
) -> None:
    """As on SIGTERM (the server's lifespan stops the runner): the job goes back to the
    queue, to be run from the start by the next process."""
    runner, started, ended = endless_runner(tmp_path, storage)
    job = runner.submit("endless", Owner(), "req", {}, None)
    assert started.wait(60)
    runner.stop(timeout=60)
    assert ended.is_set()
    assert JobStore(tmp_path / "jobs").get(job.id).status == QUEUED
