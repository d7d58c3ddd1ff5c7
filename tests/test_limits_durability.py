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

import codecs
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
    """FULL with group commit: the writer's COMMIT leaves the fsync of the log to the
    committer (NORMAL on the connection, LogSync after the locks); without group commit
    SQLite's own FULL."""
    storage = SqliteStorage.from_url(f"sqlite:///{tmp_path / 'a.db'}")
    try:
        assert storage.synchronous == "FULL" and storage.group_commit
        assert storage._log_sync is not None
        assert storage._writer.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    finally:
        storage.close()
    alone = SqliteStorage.from_url(f"sqlite:///{tmp_path / 'c.db'}?group_commit=off")
    try:
        assert alone._log_sync is None
        assert alone._writer.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    finally:
        alone.close()
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


class _HeldSync:
    """A LogSync whose fsync waits until the test lets it go (then really syncs)."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.started = threading.Event()
        self.release = threading.Event()

    def committed(self) -> int:
        return self.real.committed()  # type: ignore[attr-defined]

    def sync(self, commit: int) -> None:
        self.started.set()
        assert self.release.wait(60)
        self.real.sync(commit)  # type: ignore[attr-defined]


def test_another_process_writes_while_a_group_is_fsynced(tmp_path: Path) -> None:
    """The committer of a group releases the write locks (the file lock of every worker
    process) before it fsyncs the log, and its writer is answered only after the fsync:
    a second storage on the same file (as a second worker) writes during the first one's
    fsync. Before, SQLite's FULL fsynced inside COMMIT under the file lock, so two
    workers never wrote during each other's fsyncs."""
    path = str(tmp_path / "two.db")
    first, second = SqliteStorage(path), SqliteStorage(path)
    held = _HeldSync(first._log_sync)
    first._log_sync = held  # type: ignore[assignment]
    done: dict[str, object] = {}

    def write_first() -> None:
        with groupable(), first.transaction() as tx:
            tx.create_many([_new(1)])
        done["first"] = first.read("Basic", "basic-1") is not None

    one = threading.Thread(target=write_first)
    try:
        one.start()
        assert held.started.wait(60), "the first group never reached its fsync"
        # the first group is committed, not yet synced, and its writer not yet answered
        assert "first" not in done
        with groupable(), second.transaction() as tx:  # would wait for the file lock before
            tx.create_many([_new(2)])
        assert second.read("Basic", "basic-2") is not None
        assert "first" not in done
        held.release.set()
        one.join(60)
        assert done == {"first": True}
    finally:
        held.release.set()
        one.join(60)
        first.close()
        second.close()


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


SYNCS = ("fdatasync(", "fsync(")
LINE = re.compile(r"^(?P<pid>\d+)\s+(?P<rest>.*)$")
FRAME_HEADER = re.compile(r'^pwrite64\(\d+<(?P<path>[^>]*)>, "(?P<head>(?:[^"\\]|\\.)*)"\.*, 24,')


def _commit_frame(rest: str, wal: str) -> bool:
    """A WAL frame header whose second word (database size after commit) is not zero:
    the frame that ends a transaction's COMMIT."""
    match = FRAME_HEADER.match(rest)
    if not match or match["path"] != wal:
        return False
    head = codecs.escape_decode(match["head"].encode())[0]
    return len(head) >= 8 and head[4:8] != b"\0\0\0\0"


def _commits_synced(trace: str, wal: str) -> tuple[int, int, list[str]]:
    """(commits, WAL syncs, problems) from strace's lines: after a thread writes a commit
    frame, an fsync of the log must start (on that thread, or on another whose fsync
    covers it) before that thread writes or sends anything else, and every commit frame
    must be followed by one."""
    unsynced: dict[str, str] = {}  # thread -> its commit frame written, not yet synced
    commits = syncs = 0
    problems: list[str] = []
    for line in trace.splitlines():
        match = LINE.match(line)
        if not match:
            continue
        pid, rest = match["pid"], match["rest"]
        if _commit_frame(rest, wal):
            commits += 1
            unsynced[pid] = line
        elif rest.startswith(SYNCS) and f"<{wal}>" in rest:
            syncs += 1
            unsynced.clear()  # an fsync covers every commit frame written before it
        elif rest.startswith(("<... ", "futex(")) or (
            rest.startswith("pwrite64(") and f"<{wal}>" in rest
        ):
            # a call returning, more of the log being written, or a lock released: the
            # committer releases the write locks before it syncs, so that the next group
            # writes meanwhile (its members are woken only after the sync)
            continue
        elif pid in unsynced:
            problems.append(unsynced.pop(pid))
    return commits, syncs, problems + list(unsynced.values())


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_every_commit_is_fsynced_before_it_returns(tmp_path: Path) -> None:
    """The real server under strace, 8 clients posting 80 creates: every COMMIT's commit
    frame is followed by an fsync of the log before the committing thread writes or sends
    anything (the members of its group are woken only after it:
    test_another_process_writes_while_a_group_is_fsynced). Under the former NORMAL, no
    commit frame was synced."""
    db = tmp_path / "durable.db"
    trace_path = tmp_path / "strace.txt"
    probe = subprocess.run(["strace", "-f", "-o", "/dev/null", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here: {probe.stderr.decode()[:200]}")
    prefix = (
        "strace", "-f", "-y", "-s", "16", "-o", str(trace_path),
        "-e", "trace=pwrite64,write,writev,sendto,sendmsg,fsync,fdatasync,futex",
    )
    with ServedProcess(db, prefix=prefix) as server, httpx.Client(timeout=120) as client:
        def post(i: int) -> int:
            return client.post(f"{server.url}/Observation", json=observation(i)).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(post, range(80)))
    assert statuses == [201] * 80
    commits, syncs, problems = _commits_synced(trace_path.read_text(errors="replace"), f"{db}-wal")
    assert commits > 0, "strace saw no commit"
    assert not problems, problems[:3]
    assert syncs > 0


def test_kill_9_during_concurrent_creates_loses_no_acknowledged_write(tmp_path: Path) -> None:
    """8 clients post creates; the server is killed (SIGKILL) once 40 were acknowledged,
    with more in flight: every acknowledged create is in the database, which is intact.
    With group commit an answer leaves only after the COMMIT that holds its write."""
    import signal

    db = tmp_path / "killed.db"
    acknowledged: list[str] = []
    stop = threading.Event()
    server = ServedProcess(db)

    def client(worker: int) -> None:
        with httpx.Client(timeout=60) as http:
            for i in range(1000):
                if stop.is_set():
                    return
                try:
                    response = http.post(f"{server.url}/Observation", json=observation(i))
                except httpx.HTTPError:
                    return  # the server is gone
                if response.status_code == 201:
                    acknowledged.append(response.json()["id"])

    with server:
        threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(acknowledged) >= 40, what="40 acknowledged creates")
        server.signal(signal.SIGKILL)
        stop.set()
        for thread in threads:
            thread.join(60)
    storage = SqliteStorage(str(db))
    try:
        assert storage._writer.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        missing = [rid for rid in acknowledged if storage.read("Observation", rid) is None]
        assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged creates lost"
    finally:
        storage.close()
