"""WAL checkpoints on a thread of their own, outside the write lock.

By default SQLite copies the write-ahead log back into the database file inside the
COMMIT that crosses 1,000 WAL pages. That commit runs under the write lock (and the
file lock shared by every worker process), so all writers wait for the copy and its
fsync: about a tenth of the serial part of a bulk write. Here the writer connection
has automatic checkpoints off, and after each commit it wakes this thread, which runs a
PASSIVE checkpoint on its own connection: the same checkpoint SQLite would have run (it
never blocks writers or readers), while the next transaction already writes.

SQLite starts the log over only when a writer begins after everything in it has been
copied. Under writes without pauses (a bulk load) the thread is always a commit behind, so
the log would grow with everything written (10 GB in a 10 M load). Once the log file is
past LOG_LIMIT_BYTES, the committer copies the last frames itself, still under the write
lock (a commit's worth: the thread copied the rest); the next transaction restarts the
log, and SQLite cuts the file back to LOG_LIMIT_BYTES (the writer's journal_size_limit).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable

# At most one checkpoint per interval: single-resource writes at hundreds per second must
# not turn into hundreds of fsyncs; bulk writes gather a few MB of WAL in between.
MIN_INTERVAL_SECONDS = 0.25
# The log file's size under continuous writes stays about this.
LOG_LIMIT_BYTES = 64 * 1024 * 1024


class BackgroundCheckpointer:
    def __init__(self, connect: Callable[[], sqlite3.Connection], log_path: str) -> None:
        self._connect = connect
        self._log_path = log_path
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        # commits announced, and how many of them the last finished checkpoint covered:
        # `wait_caught_up` lets a caller (a bulk step, a test) wait for the log to be copied
        self._progress = threading.Condition()
        self._commits = 0
        self._covered = 0

    def committed(self, writer: sqlite3.Connection) -> None:
        """Called after each commit, under the write lock: a checkpoint soon, on the
        checkpointer's thread; and now, on the writer, if the log has grown too long."""
        try:
            too_long = os.path.getsize(self._log_path) > LOG_LIMIT_BYTES
        except OSError:
            too_long = False
        if too_long:
            # busy (the thread is mid-checkpoint): the next commit tries again
            with contextlib.suppress(sqlite3.Error):
                writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        if self._thread is None:
            self._start()  # on the first commit: a storage that only reads needs no thread
        with self._progress:
            self._commits += 1
        self._wake.set()

    def wait_caught_up(self, timeout: float) -> bool:
        """Wait until a checkpoint has run after every commit announced so far (the log
        copied back, as far as readers allowed); False if `timeout` seconds pass first."""
        with self._progress:
            target = self._commits
            return self._progress.wait_for(lambda: self._covered >= target, timeout)

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None:
                return
            self._closing.clear()
            self._thread = threading.Thread(
                target=self._run, name="sqlite-checkpoint", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        conn = self._connect()
        try:
            while True:
                self._wake.wait()
                if self._closing.is_set():
                    return
                self._wake.clear()
                with self._progress:
                    covering = self._commits
                # busy (another process checkpoints) or failing: the next commit wakes us
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                with self._progress:
                    self._covered = covering
                    self._progress.notify_all()
                if self._closing.wait(MIN_INTERVAL_SECONDS):
                    return
        finally:
            conn.close()

    def close(self) -> None:
        """Stop the thread (its last checkpoint finishes first)."""
        thread = self._thread
        if thread is None:
            return
        self._closing.set()
        self._wake.set()
        thread.join()
        self._thread = None
