"""The audit trail: an AuditEvent for every access to patient data, from every door.

- events.py: the AuditEvent of an interaction (after IHE BALP)
- activity.py: the interaction being audited (opened by each door, a context variable)
- audited.py: the storage the services use, which notes reads and writes into the activity
- writer.py: `AuditTrail`, the one writer (in the write's transaction, or queued)
- chain.py: the hash chain; sqlite_store.py / mongo_store.py: where records live
- criteria.py: AuditEvent search; verify.py: `diatabase audit verify`
- protection.py: AuditEvents are never written through the API
"""

from __future__ import annotations

from typing import Any

from fhir_server.audit.activity import Activity, current, opened, set_interaction
from fhir_server.audit.audited import AuditedStorage
from fhir_server.audit.events import Agent
from fhir_server.audit.writer import AuditTrail

__all__ = [
    "Activity",
    "Agent",
    "AuditTrail",
    "AuditedStorage",
    "current",
    "open_store",
    "open_trail",
    "opened",
    "set_interaction",
]


def open_store(backend: Any) -> Any:
    """The audit store that lives in `backend`'s database."""
    from fhir_server.storage.sqlite import SqliteStorage

    if isinstance(backend, SqliteStorage):
        from fhir_server.audit.sqlite_store import SqliteAuditStore

        return SqliteAuditStore(backend)
    from fhir_server.audit.mongo_store import MongoAuditStore

    return MongoAuditStore(backend)


def open_trail(backend: Any, enabled: bool = True) -> AuditTrail:
    return AuditTrail(open_store(backend), backend, enabled=enabled)
