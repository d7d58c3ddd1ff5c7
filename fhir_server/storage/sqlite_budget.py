"""The current Budget (budget.py) applied to SQLite connections.

Reader connections get a progress handler: every PROGRESS_STEPS virtual-machine steps SQLite
asks whether the budget is spent, and a yes interrupts the statement (SQLITE_INTERRUPT).
The handler runs Python, so it takes the GIL: at 10,000 steps it is called every few
hundred microseconds of query, which measured below 2 % of a search's time.

The writer connection has no handler: the write-behind thread (sqlite_write_behind.py)
inserts a big transaction's rows without the GIL, and a handler would make it wait for the
GIL every few hundred microseconds. A write is stopped instead by `interrupt()` when its
budget stops (client gone, server stopping; see `SqliteStorage.transaction`), and the
searches a write runs (conditional interactions) get the handler while they run.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from fhir_server.storage import budget
from fhir_server.storage.budget import Budget, BudgetExceeded

PROGRESS_STEPS = 10_000

F = TypeVar("F", bound=Callable[..., Any])


def _spent() -> int:
    current = budget.current()
    return 1 if current is not None and current.exhausted() else 0


def watch(conn: sqlite3.Connection) -> None:
    """Interrupt this connection's statements when the current budget is spent."""
    conn.set_progress_handler(_spent, PROGRESS_STEPS)


@contextmanager
def watched(conn: sqlite3.Connection) -> Iterator[None]:
    """`watch` for the duration of a block (a search on the writer connection)."""
    watch(conn)
    try:
        yield
    finally:
        conn.set_progress_handler(None, 0)


def is_interrupt(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and str(exc) == "interrupted"


def interruptible(method: F) -> F:
    """A storage method whose interrupted statement means that the budget was spent."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except sqlite3.OperationalError as exc:
            spent = spent_budget(exc)
            if spent is None:
                raise
            raise BudgetExceeded(spent) from None

    return wrapper  # type: ignore[return-value]


def spent_budget(exc: BaseException) -> Budget | None:
    """The current budget if `exc` is the interrupt it caused; else None."""
    current = budget.current()
    if is_interrupt(exc) and current is not None and current.exhausted():
        return current
    return None


def within(seconds: float, limit: str, work: Callable[[], Any]) -> Any:
    """`work()` under a budget of its own of `seconds` (inside the current one), or None
    when that ran out first: for optional work such as `_total=accurate`. If the request's
    budget is spent too, the interrupt propagates (and becomes BudgetExceeded)."""
    parent = budget.current()
    with budget.scope(Budget(seconds, limit, parent)):
        try:
            return work()
        except sqlite3.OperationalError as exc:
            if not is_interrupt(exc) or (parent is not None and parent.exhausted()):
                raise
    return None
