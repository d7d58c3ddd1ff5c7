"""The current Budget (budget.py) applied to MongoDB operations.

pymongo's client-side operation timeout (`pymongo.timeout`, pymongo 4.2+) sends every
operation in its block with `maxTimeMS` set to what is left of the budget, so the server
itself stops a query past it, and a timed-out operation raises an error whose `timeout` is
true, turned here into BudgetExceeded. A client that disconnects mid-query is not detected
by MongoDB: its query runs until this deadline at most.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pymongo
from pymongo.errors import PyMongoError

from fhir_server.storage import budget
from fhir_server.storage.budget import Budget, BudgetExceeded

# pymongo reads a timeout of 0 as "none": the smallest budget left is this.
MIN_SECONDS = 0.001


@contextmanager
def bounded() -> Iterator[None]:
    """Operations inside get maxTimeMS from the current budget (none: unbounded)."""
    current = budget.current()
    if current is None or current.remaining() is None:
        yield
        return
    current.check()
    try:
        with pymongo.timeout(max(current.remaining() or 0.0, MIN_SECONDS)):
            yield
    except PyMongoError as exc:
        if not exc.timeout:
            raise
        current.stop(budget.DEADLINE)
        raise BudgetExceeded(current) from None


def within(seconds: float, limit: str, work: Callable[[], Any]) -> Any:
    """`work()` with at most `seconds` (inside the current budget), or None when that ran
    out first: for optional work such as `_total=accurate`."""
    parent = budget.current()
    child = Budget(seconds, limit, parent)
    with budget.scope(child):
        try:
            with bounded():
                return work()
        except BudgetExceeded:
            if parent is not None and parent.exhausted():
                raise BudgetExceeded(parent) from None
    return None
