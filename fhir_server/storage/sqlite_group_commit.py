"""Group commit: single-resource writes that arrive together share one COMMIT, so that the
database is fsynced once for all of them.

Clinical writes commit with `synchronous=FULL`: SQLite fsyncs the write-ahead log in every
COMMIT, so that an acknowledged write survives a power cut (NORMAL, the default before,
survives a process crash only). One fsync per create would cap concurrent single creates
at the disk's fsync rate; here a write that finds others waiting for the write lock does
not commit but hands the still-open transaction to the next one, inside its own SAVEPOINT
(its failure undoes only its own rows), and waits; the last one of the group commits for
all and wakes them. Nobody's answer is sent before the COMMIT that holds its write
returned and the log holding it was fsynced, and nothing of a group is visible to readers
before its COMMIT.

The fsync itself happens after the write locks are released (LogSync below): the locks,
the file lock that every worker process shares included, cover the group's SQL and its
COMMIT only, so a second worker writes while the disk syncs the first one's group, and
the commits made during one fsync share the next.

Only writes that opt in (`base.groupable()`: create, update, patch and delete of one
resource) join a group, and never more than MAX_MEMBERS or for longer than MAX_OPEN_SECONDS:
a big transaction (a Bundle, a load) runs alone, after committing any open group, so
that small writes never wait for it, and its interruption (budget.py) never undoes theirs.
"""

from __future__ import annotations

import os
import threading
import time

MAX_MEMBERS = 64
MAX_OPEN_SECONDS = 0.05


class Group:
    """The members of one open transaction, and how its COMMIT went."""

    def __init__(self) -> None:
        self.members = 0
        self.opened = time.monotonic()
        self.done = threading.Event()
        self.error: BaseException | None = None

    def full(self) -> bool:
        return self.members >= MAX_MEMBERS or time.monotonic() - self.opened > MAX_OPEN_SECONDS

    def finish(self, error: BaseException | None = None) -> None:
        self.error = error
        self.done.set()

    def wait(self) -> None:
        """Until the group's COMMIT is over; its error raised to every member."""
        self.done.wait()
        if self.error is not None:
            raise GroupCommitError("the transaction this write was part of failed") from (
                self.error
            )


class GroupCommitError(RuntimeError):
    """Another member made the shared transaction fail before its COMMIT (or the COMMIT
    itself failed): this write was not stored."""


class WriteLock:
    """The storage's write lock, counting the threads that wait for it: a member passes
    the open transaction on only when someone is there to take it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._waiting = 0

    def acquire(self, timeout: float = -1) -> bool:
        with self._count_lock:
            self._waiting += 1
        try:
            return self._lock.acquire(timeout=timeout)
        finally:
            with self._count_lock:
                self._waiting -= 1

    def release(self) -> None:
        self._lock.release()

    def waiting(self) -> bool:
        return self._waiting > 0

    def __enter__(self) -> WriteLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class LogSync:
    """fsync of the write-ahead log after a COMMIT that did not do it.

    With `synchronous=FULL` SQLite fsyncs the log inside COMMIT, that is while it holds
    the database's write lock, which every worker process shares: a second process could
    not write anything during the first one's fsync (several ms on a virtual disk), so two
    workers committed no faster than one. The writer therefore commits with `NORMAL` (the
    log is written, not synced), announces the commit (`committed`) and, once it has
    released the locks, waits for a sync that covers it (`sync`) before it wakes the
    members of its group: the next group, of this process or another, writes while the
    disk syncs, and one fsync covers every commit made before it started (the commits
    made during an fsync share the next one).

    What makes this as durable as FULL: an fsync covers everything written to the file
    before it, and the log's frames are only ever appended after earlier commits' frames
    (or written over frames that a checkpoint had copied into the database and synced:
    SQLite syncs the log before a checkpoint and the database after a complete one). No
    answer for a write leaves before an fsync that started after its COMMIT returned.
    The difference: another request may read a committed write during the milliseconds of
    its fsync, before its writer is answered.
    """

    def __init__(self, log_path: str) -> None:
        self._log_path = log_path
        self._syncing = threading.Lock()
        self._committed = 0  # commits announced so far (each under the write lock)
        self._synced = 0  # of those, how many an fsync has covered

    def committed(self) -> int:
        """Called right after a COMMIT, under the write lock: the commit's number."""
        self._committed += 1
        return self._committed

    def sync(self, commit: int) -> None:
        """Return once the log is synced up to commit number `commit`."""
        with self._syncing:
            if self._synced >= commit:
                return  # an fsync that started after that commit has returned
            covering = self._committed  # every commit announced was written before now
            # Opened by name each time: the log file of this moment (µs against the fsync).
            fd = os.open(self._log_path, os.O_RDONLY)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
            self._synced = covering
