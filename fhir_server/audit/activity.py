"""The interaction being audited: who asked what, and what it read and wrote so far.

An `Activity` is opened by each door (the REST middleware per request, the MLLP listener
per message, the facade, the command line) and held in a context variable, so that the
storage layer under it can add what it reads and writes without every service passing it
down (the context is copied into the threads `run_in_threadpool` and `asyncio.to_thread`
use). Nothing here writes: the writer (writer.py) turns an activity into events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from fhir_server.audit.events import ACTIONS, Agent
from fhir_server.storage.base import StoredResource

_current: ContextVar[Activity | None] = ContextVar("diatabase_audit_activity", default=None)


@dataclass(eq=False)
class Activity:
    """`agent` may be a callable: the REST door knows who asked only once authorization
    has run, after the activity was opened."""

    agent: Agent | Callable[[], Agent]
    interaction: str
    request: str | None = None
    data: str | None = None  # "Observation/123" for an instance-level interaction
    door: str = "rest"
    # The facade reads many real resources to serve a few pseudonymized ones: its events
    # say how many it served, not which real resources it looked at.
    collect_reads: bool = True
    ended: float | None = None  # when the door finished it: the event's `recorded`
    reads: list[StoredResource] = field(default_factory=list)
    read_count: int | None = None  # resources served, when the door counts them itself
    attempted: list[tuple[str, str, bytes | None]] = field(default_factory=list)
    patients: set[str] = field(default_factory=set)  # known to the door itself (MLLP)
    recorded_writes: int = 0  # events already committed with a write transaction
    outcome: str | None = None  # set by a door that knows better than the HTTP status
    outcome_text: str | None = None
    # about terminology or conformance resources: recorded only if it touched patient data,
    # wrote, or was refused (api/audit_http.py DEFINITIONAL_TYPES)
    definitional: bool = False

    @property
    def action(self) -> str:
        return ACTIONS.get(self.interaction, "E")

    def who(self) -> Agent:
        return self.agent() if callable(self.agent) else self.agent

    def note_reads(self, resources: list[StoredResource]) -> None:
        if self.collect_reads:
            self.reads.extend(resources)


def current() -> Activity | None:
    return _current.get()


@contextmanager
def opened(activity: Activity) -> Iterator[Activity]:
    """Make `activity` the current one for the code inside (and the threads it starts)."""
    token = _current.set(activity)
    try:
        yield activity
    finally:
        _current.reset(token)


def set_interaction(interaction: str) -> None:
    """For code that learns the interaction late (a Bundle's type once it is parsed)."""
    activity = _current.get()
    if activity is not None:
        activity.interaction = interaction
