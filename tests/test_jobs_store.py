"""The job store and runner on a real SQLite file: a job whose process died is queued
again, a failing job reports its failure, a request's visibility is kept exactly, a
cancelled running job stops and leaves no files, and the store file is owner-only."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from fhir_server.jobs import JobContext, JobRunner, JobStore, Owner
from fhir_server.jobs.store import COMPLETED, FAILED, QUEUED, RUNNING
from fhir_server.search.visibility import Grant, Visibility


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_job_of_a_dead_process_is_queued_again(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs")
    job = store.create("echo", Owner(), "test", {}, None)
    host = os.uname().nodename
    dead = 2**22 + 12345  # above the default pid_max: no such process
    claimed = store.claim(f"{host}:{dead}:gone", ("echo",))
    assert claimed is not None and claimed.status == RUNNING
    runner = JobRunner(store, workers=0)
    runner.register("echo", lambda context: {"output": []}, "echo")
    runner.sweep()
    assert store.get(job.id).status == QUEUED
    # A live runner of another host that reported recently is left alone.
    store.claim("elsewhere:1:x", ("echo",))
    runner.sweep()
    assert store.get(job.id).status == RUNNING
    assert oct(os.stat(store.path).st_mode & 0o777) == "0o600"
    assert oct(os.stat(store.root).st_mode & 0o777) == "0o700"


def test_failures_and_results_are_recorded(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs")
    runner = JobRunner(store, workers=1, retention=3600)

    def work(context: JobContext) -> dict[str, Any]:
        if context.params["fail"]:
            raise ValueError("broken input")
        (context.folder / "out.ndjson").write_bytes(b"{}\n")
        return {"transactionTime": "2025-01-01T00:00:00Z",
                "output": [{"type": "Patient", "file": "out.ndjson", "count": 1}]}

    runner.register("work", work, "test work")
    runner.start()
    try:
        good = runner.submit("work", Owner(client_id="c"), "req", {"fail": False}, None)
        bad = runner.submit("work", Owner(client_id="c"), "req", {"fail": True}, None)
        wait_for(lambda: store.get(good.id).status == COMPLETED, "the job did not complete")
        wait_for(lambda: store.get(bad.id).status == FAILED, "the job did not fail")
        assert "broken input" in store.get(bad.id).error
        done = store.get(good.id)
        assert done.result["output"][0]["count"] == 1 and (done.folder / "out.ndjson").exists()
        assert done.expires is not None and done.expires > time.time() + 3000
    finally:
        runner.stop()


def test_cancelling_a_running_job_stops_it_and_removes_its_files(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs")
    runner = JobRunner(store, workers=1)
    started = threading.Event()

    def endless(context: JobContext) -> dict[str, Any]:
        (context.folder / "partial.ndjson").write_bytes(b"{}\n")
        started.set()
        while True:
            context.progress(context.done + 1, force=True)
            time.sleep(0.01)

    runner.register("endless", endless, "endless")
    runner.start()
    try:
        job = runner.submit("endless", Owner(), "req", {}, None)
        assert started.wait(60)
        assert runner.cancel(job.id)
        assert store.get(job.id) is None
        assert not job.folder.exists()
    finally:
        runner.stop()


def test_visibility_is_kept_exactly(tmp_path: Path) -> None:
    visibility = Visibility(
        {"s": {"Observation": (Grant("p1", (("category", "laboratory"),)),),
               "Patient": (Grant("p1"),)}, "r": {"*": (Grant(),)}},
        "p1",
    )
    store = JobStore(tmp_path / "jobs")
    job = store.create("x", Owner(client_id="c", subject="u"), "req", {}, visibility)
    again = JobStore(tmp_path / "jobs").get(job.id)
    assert again.visibility == visibility
    assert again.owner == Owner(client_id="c", subject="u")
    assert store.create("x", Owner(), "req", {}, None).visibility is None


def test_several_jobs_run_at_once(tmp_path: Path) -> None:
    """Two workers: two jobs are running at the same moment (each waits until it sees the
    other started), so a long export does not hold the queue for every other job."""
    store = JobStore(tmp_path / "jobs")
    runner = JobRunner(store, workers=2)
    running: set[str] = set()
    both = threading.Event()
    lock = threading.Lock()

    def meet(context: JobContext) -> dict[str, Any]:
        with lock:
            running.add(context.job.id)
            if len(running) == 2:
                both.set()
        assert both.wait(60), "the other job never ran beside this one"
        return {"output": []}

    runner.register("meet", meet, "meet")
    runner.start()
    try:
        jobs = [runner.submit("meet", Owner(), "req", {}, None) for _ in range(2)]
        for job in jobs:
            wait_for(lambda job=job: store.get(job.id).status == COMPLETED,
                     "the jobs did not run side by side")
    finally:
        runner.stop()


def test_a_job_running_at_shutdown_is_run_again_by_the_next_process(tmp_path: Path) -> None:
    """A server stopping while a job runs puts the job back in the queue; the next runner
    on the same store runs it from the start in a fresh folder and completes it."""
    started = threading.Event()

    def until_stopped(context: JobContext) -> dict[str, Any]:
        (context.folder / "partial.ndjson").write_bytes(b"{}\n")
        started.set()
        while True:
            context.progress(context.done + 1, force=True)
            time.sleep(0.01)

    first = JobRunner(JobStore(tmp_path / "jobs"), workers=1)
    first.register("export", until_stopped, "export")
    first.start()
    job = first.submit("export", Owner(client_id="c"), "req", {"n": 1}, None)
    assert started.wait(60)
    first.stop()

    store = JobStore(tmp_path / "jobs")
    assert store.get(job.id).status == QUEUED

    def finish(context: JobContext) -> dict[str, Any]:
        leftovers = sorted(p.name for p in context.folder.iterdir())
        (context.folder / "out.ndjson").write_bytes(b"{}\n")
        return {"output": [{"type": "Patient", "file": "out.ndjson", "count": 1}],
                "leftovers": leftovers}

    second = JobRunner(store, workers=1)
    second.register("export", finish, "export")
    second.start()
    try:
        wait_for(lambda: store.get(job.id).status == COMPLETED, "the job was not run again")
        done = store.get(job.id)
        assert done.result["leftovers"] == [] and done.params == {"n": 1}
        assert done.owner == Owner(client_id="c")
    finally:
        second.stop()
