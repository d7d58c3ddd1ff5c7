"""An acknowledged write survives a power cut: SQLite commits with synchronous=FULL (the
write-ahead log fsynced in every COMMIT), and concurrent single writes share commits
(group commit, storage/sqlite_group_commit.py) so that they share fsyncs.

A power cut cannot be simulated here (the page cache would have to lose its unflushed
writes), so the tests check what makes one harmless: the pragma in force, and, watching the
real server with strace, that every `201 Created` leaves only after the log holding it was
fsynced. Before this, the writer ran synchronous=NORMAL: a process crash lost nothing, but
the last acknowledged commits lived in the page cache until the next checkpoint.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from fhir_server.settings import Settings
from fhir_server.storage import open_storage
from fhir_server.storage.base import NewResource, groupable
from fhir_server.storage.sqlite import SqliteStorage
from tests.served import ServedProcess, wait_until


def observation(i: int) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
        "valueQuantity": {"value": 90 + i % 40, "unit": "mg/dL"},
    }


def test_the_writer_commits_with_synchronous_full(tmp_path: Path) -> None:
    storage = SqliteStorage.from_url(f"sqlite:///{tmp_path / 'a.db'}")
    try:
        assert storage._writer.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert storage.group_commit
    finally:
        storage.close()
    fast = SqliteStorage.from_url(f"sqlite:///{tmp_path / 'b.db'}?synchronous=normal")
    try:
        assert fast._writer.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
        assert not fast.group_commit
    finally:
        fast.close()


def _new(i: int) -> NewResource:
    return NewResource("Basic", f"basic-{i}", 1.0, b'{"resourceType":"Basic"}', ())


def test_a_failing_member_of_a_group_undoes_only_its_own_write(tmp_path: Path) -> None:
    """The first writer holds the open transaction until a second one waits for the lock;
    it passes the transaction on and waits; the second fails: its write is undone, the
    first one's is committed (by the second, the last of the group)."""
    storage = SqliteStorage(str(tmp_path / "group.db"))
    second_waits = threading.Event()
    outcome: dict[str, object] = {}

    def first() -> None:
        with groupable(), storage.transaction() as tx:
            tx.create_many([_new(1)])
            second_waits.wait(60)
        outcome["first"] = "committed"

    def second() -> None:
        try:
            with groupable(), storage.transaction() as tx:
                tx.create_many([_new(2)])
                raise ValueError("this write fails")
        except ValueError:
            outcome["second"] = "failed"

    one = threading.Thread(target=first)
    one.start()
    wait_until(lambda: storage._group is not None, what="the first writer's transaction")
    two = threading.Thread(target=second)
    two.start()
    wait_until(storage._write_lock.waiting, what="the second writer to wait")
    second_waits.set()
    one.join(60)
    two.join(60)
    try:
        assert outcome == {"first": "committed", "second": "failed"}
        assert storage.read("Basic", "basic-1") is not None
        assert storage.read("Basic", "basic-2") is None
        assert storage._group is None and not storage._writer.in_transaction
    finally:
        storage.close()


def test_concurrent_creates_share_commits(tmp_path: Path) -> None:
    from fhir_server.service.fhir import FhirService

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    service = FhirService(open_storage(url), Settings(db_url=url))
    storage = service.storage
    commits: list[str] = []
    storage._writer.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: service.resources.create("Observation", observation(i)),
                                range(160)))
    storage._writer.set_trace_callback(None)
    try:
        assert {r.status for r in results} == {201}
        assert storage.count("Observation") == 160
        assert len(commits) < 160, "no two concurrent creates shared a commit"
    finally:
        storage.close()


SYNCS = ("fdatasync", "fsync")
LINE = re.compile(r"^(?P<pid>\d+)\s+(?P<rest>.*)$")


def _wal_synced_before_each_created(trace: str, wal: str) -> tuple[int, int, list[str]]:
    """(201 answers, WAL syncs, problems): walks strace's lines in order; the log is
    'dirty' from a write to it until a sync of it completes; a 201 sent while dirty is a
    problem (the write it acknowledges might not be on disk)."""
    dirty = False
    pending_sync: dict[str, bool] = {}  # pid -> a WAL sync started there, not yet returned
    created = syncs = 0
    problems: list[str] = []
    for line in trace.splitlines():
        match = LINE.match(line)
        if not match:
            continue
        pid, rest = match["pid"], match["rest"]
        if rest.startswith(("pwrite64(", "write(")) and f"<{wal}>" in rest.split(",")[0]:
            dirty = True
        elif rest.startswith(SYNCS) and f"<{wal}>" in rest:
            if "<unfinished" in rest:
                pending_sync[pid] = True
            else:
                dirty, syncs = False, syncs + 1
        elif rest.startswith("<... fdatasync resumed>") or rest.startswith("<... fsync resumed>"):
            if pending_sync.pop(pid, False):
                dirty, syncs = False, syncs + 1
        elif "HTTP/1.1 201" in rest and "socket:" in rest:
            created += 1
            if dirty:
                problems.append(line)
    return created, syncs, problems


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_every_acknowledged_create_was_fsynced_first(tmp_path: Path) -> None:
    """The real server under strace, 8 clients posting 80 creates: each `201 Created` is
    written to its socket only after the write-ahead log was fsynced since its last write,
    and the syncs are fewer than the creates (group commit)."""
    db = tmp_path / "durable.db"
    trace_path = tmp_path / "strace.txt"
    probe = subprocess.run(["strace", "-f", "-o", "/dev/null", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here: {probe.stderr.decode()[:200]}")
    prefix = (
        "strace", "-f", "-y", "-s", "16", "-o", str(trace_path),
        "-e", "trace=pwrite64,write,writev,sendto,sendmsg,fsync,fdatasync",
    )
    with ServedProcess(db, prefix=prefix) as server, httpx.Client(timeout=120) as client:
        def post(i: int) -> int:
            return client.post(f"{server.url}/Observation", json=observation(i)).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(post, range(80)))
    assert statuses == [201] * 80
    created, syncs, problems = _wal_synced_before_each_created(
        trace_path.read_text(errors="replace"), f"{db}-wal"
    )
    assert created == 80, "strace did not see every answer"
    assert not problems, problems[:3]
    assert syncs > 0
