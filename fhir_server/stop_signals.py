"""SIGINT and SIGTERM as a request to stop a long-running loop at its next safe point.

Python turns SIGINT into a KeyboardInterrupt raised wherever the main thread happens to be:
inside a database transaction, a lock's `with` block or a thread's `join`, where unwinding
can leave a lock held and the process hanging instead of ending. A follower (`deid views
--follow`) instead records the signal, finishes the pass it is in, and stops; its wait
between passes wakes at once through a pipe (`signal.set_wakeup_fd`), and the handler
itself takes no lock.
"""

from __future__ import annotations

import os
import select
import signal
from types import FrameType
from typing import Any

STOPPING = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """`with StopSignals() as stop: while not stop.wait(seconds): work()`."""

    def __init__(self) -> None:
        self.requested: signal.Signals | None = None
        self._read = self._write = -1
        self._previous: dict[int, Any] = {}
        self._previous_fd = -1

    def __enter__(self) -> StopSignals:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._previous = {s: signal.signal(s, self._record) for s in STOPPING}
        self._previous_fd = signal.set_wakeup_fd(self._write)
        return self

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.requested = signal.Signals(signum)

    def wait(self, seconds: float) -> bool:
        """Wait up to `seconds` (less if a stop signal comes); True once one has come."""
        if self.requested is None:
            select.select([self._read], [], [], seconds)
        return self.requested is not None

    def __exit__(self, *exc: object) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        os.close(self._read)
        os.close(self._write)
