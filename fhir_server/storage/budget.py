"""The time budget of the work done for one request, and the switch that stops it.

The HTTP layer (api/limits.py) gives every request a `Budget` (a deadline, from
Settings.limits) and makes it current for the request's context, which Starlette's
threadpool carries into the thread that runs the query. The budget stops when its deadline
passes, when the client disconnects, or when the server shuts down; the storage backends
check it where their work runs: SQLite through a progress handler on each reader connection
and `interrupt()` on the writer (sqlite_budget.py), MongoDB through `maxTimeMS` on each
operation (pymongo's timeout). Python loops that run long (Bundle entries, include rounds)
call `check()`.

Work outside a request has no budget unless it opens one with `scope`: the job runner gives
each job one (Limits.job_seconds), stopped too when the job is cancelled or the server stops.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

DEADLINE = "deadline"
DISCONNECTED = "disconnected"
SHUTDOWN = "shutdown"
SLOW_CLIENT = "slow-client"
CANCELLED = "cancelled"


class BudgetExceeded(Exception):
    """The work was stopped: past its deadline, its client gone, or the server stopping."""

    def __init__(self, budget: Budget) -> None:
        self.reason = budget.reason or DEADLINE
        self.seconds = budget.seconds
        self.limit = budget.limit
        super().__init__(self.message)

    @property
    def message(self) -> str:
        if self.reason == SHUTDOWN:
            return "The server is shutting down: the request was stopped; send it again"
        if self.reason == DISCONNECTED:
            return "The client disconnected: the request was stopped"
        if self.reason == SLOW_CLIENT:
            return "The client sent its request too slowly: the request was stopped"
        if self.reason == CANCELLED:
            return "The job was cancelled"
        return (
            f"The request took longer than its budget of {self.seconds:g} s and was stopped "
            f"(limit {self.limit}): narrow it down"
        )


class Budget:
    """A deadline (None: none) and a stop switch, shared by the request's threads; a
    budget with a `parent` (a bounded part of the work, as counting `_total`) is also
    spent when its parent is."""

    __slots__ = ("seconds", "limit", "deadline", "reason", "parent", "_on_stop", "_lock")

    def __init__(
        self, seconds: float | None, limit: str = "search_seconds", parent: Budget | None = None
    ) -> None:
        self.seconds = seconds
        self.limit = limit  # the Limits field that set it, named to the client
        self.deadline = None if seconds is None else time.monotonic() + seconds
        self.reason: str | None = None
        self.parent = parent
        self._on_stop: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def exhausted(self) -> bool:
        """Stopped, or past the deadline (then stopped now): the progress handler's test."""
        if self.reason is not None:
            return True
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.stop(DEADLINE)
            return True
        return self.parent is not None and self.parent.exhausted()

    def check(self) -> None:
        if self.exhausted():
            raise BudgetExceeded(self)

    def remaining(self) -> float | None:
        own = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
        above = None if self.parent is None else self.parent.remaining()
        if own is None or above is None:
            return above if own is None else own
        return min(own, above)

    def stop(self, reason: str) -> None:
        """Stop the work (from any thread or the event loop); the first reason stays."""
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
            callbacks = list(self._on_stop)
        for callback in callbacks:
            callback()

    @contextmanager
    def on_stop(self, callback: Callable[[], None]) -> Iterator[None]:
        """Run `callback` (e.g. interrupt a connection) if the budget stops meanwhile."""
        with self._lock:
            stopped = self.reason is not None
            if not stopped:
                self._on_stop.append(callback)
        if stopped:
            callback()
        try:
            yield
        finally:
            with self._lock:
                if callback in self._on_stop:
                    self._on_stop.remove(callback)


_current: ContextVar[Budget | None] = ContextVar("diatabase_budget", default=None)


def current() -> Budget | None:
    return _current.get()


def check() -> None:
    """Raise BudgetExceeded if the current work's budget is spent (no budget: never)."""
    budget = _current.get()
    if budget is not None:
        budget.check()


@contextmanager
def scope(budget: Budget | None) -> Iterator[Budget | None]:
    """Make `budget` the current one for this context (None: unbounded) while inside."""
    token = _current.set(budget)
    try:
        yield budget
    finally:
        _current.reset(token)
