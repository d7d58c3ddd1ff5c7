"""Group commit: single-resource writes that arrive together share one COMMIT, so that the
database is fsynced once for all of them.

Clinical writes commit with `synchronous=FULL`: SQLite fsyncs the write-ahead log in every
COMMIT, so that an acknowledged write survives a power cut (NORMAL, the default before,
survives a process crash only). One fsync per create would cap concurrent single creates
at the disk's fsync rate; here a write that finds others waiting for the write lock does
not commit but hands the still-open transaction to the next one, inside its own SAVEPOINT
(its failure undoes only its own rows), and waits; the last one of the group commits for
all (one fsync) and wakes them. Nobody's answer is sent before the COMMIT that holds its
write returned, and nothing of a group is visible to readers before it.

Only writes that opt in (`base.groupable()`: create, update, patch and delete of one
resource) join a group, and never more than MAX_MEMBERS or for longer than MAX_OPEN_SECONDS:
a big transaction (a Bundle, a load) runs alone, after committing any open group, so
that small writes never wait for it, and its interruption (budget.py) never undoes theirs.
"""

from __future__ import annotations

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
