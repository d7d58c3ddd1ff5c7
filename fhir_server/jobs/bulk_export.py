"""The work of a Bulk Data `$export` job: NDJSON files per resource type.

Every resource comes from the search engine, a page at a time (keyset paging, so deep
pages cost what the first does), with the export's criteria as clauses of the search:
`_lastUpdated` from `_since`, the `_typeFilter` queries of the type (OR-ed), and the
patient compartments of the selection (selection.py). A resource changed after the
kick-off's transaction time is left to the next `_since` export, as the IG's
transactionTime says: that bound is checked on each row read, not made a clause of the
search. It matches (nearly) every resource, so as a clause it gave the planner a
candidate driving set to count again for every page (up to 220,000 index rows per page of
1,000) and, for a type under 200,000 resources, to read whole for every page: the medium
export ran at 3,390 resources/s. The visibility of the request that started the job is
applied inside storage by the runner (`visible_as`). Pages are written as they come, so
memory stays flat whatever the size of the export; files are cut every FILE_LINES lines.

Patients are selected in batches: a resource in the compartments of two patients of two
batches would be found twice, so resources naming more than one patient are remembered
(in a small SQLite file in the job's folder, not in memory) and written once.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fhir_server.jobs.export_request import (
    GROUP,
    SYSTEM,
    ExportRequest,
    filter_query,
    patient_types,
)
from fhir_server.jobs.runner import JobContext
from fhir_server.jobs.selection import (
    EVERY_PATIENT,
    SYSTEM_WIDE,
    MemberSource,
    PatientSelection,
    of_group,
    of_patients,
)
from fhir_server.model import jsonio
from fhir_server.model.resource_types import resource_types
from fhir_server.search.compartment import compartment_clause, compartment_criterion
from fhir_server.search.query import AnyOf, Clause, CompartmentClause, parse_search
from fhir_server.search.result_params import ResultParams
from fhir_server.search.values import ReferenceValue, TokenValue
from fhir_server.search.visibility import current_visibility
from fhir_server.service.search import shape_resource
from fhir_server.storage.base import instant

PAGE = 1000  # resources per search page
FILE_LINES = 100_000  # lines per output file
# Never exported: the audit trail is served by its own store and is not clinical data.
NOT_EXPORTED = frozenset({"AuditEvent"})


def run_export(context: JobContext, service: Any, members: MemberSource) -> dict[str, Any]:
    """The job's work: the export its parameters describe, into the job's folder."""
    request = ExportRequest.from_params(context.params)
    return export_to(service, request, context.folder, members, context.progress)


def export_to(
    service: Any,
    request: ExportRequest,
    folder: Path,
    members: MemberSource,
    progress: Callable[..., None],
) -> dict[str, Any]:
    """Write the export into `folder` and return its result (files relative to it).
    `progress(done, total, text)` is told as pages are written (the CLI's bar, a job's
    X-Progress)."""
    done = [0]

    def written(n: int) -> None:
        done[0] += n
        progress(done[0])

    exporter = Exporter(service, request, folder, written)
    selection = select(request, members)
    stored = exporter.stored_counts()
    types = list(stored)
    progress(0, sum(stored.values()), "exporting")
    outputs = []
    for rtype in types:
        outputs += exporter.export_type(rtype, selection)
    exporter.close()
    return {
        "transactionTime": instant(request.transaction_time),
        "output": outputs,
        "error": [],
        "ignored": request.ignored,
        "resources": sum(o["count"] for o in outputs),
    }


def select(request: ExportRequest, members: MemberSource) -> PatientSelection:
    """The patients of the export (the single place where a patient is in or out)."""
    if request.level == SYSTEM:
        return SYSTEM_WIDE
    if request.level == GROUP:
        assert request.group_id is not None
        group = of_group(request.group_id, members)
        if not request.patients:
            return group
        wanted = set(request.patients)
        return of_patients(p for batch in group.batches() for p in batch if p in wanted)
    if request.patients:
        return of_patients(request.patients)
    return EVERY_PATIENT


class Exporter:
    def __init__(
        self,
        service: Any,
        request: ExportRequest,
        folder: Path,
        on_written: Callable[[int], None],
    ) -> None:
        self.service = service
        self.storage = service.storage
        self.registry = service.registry
        self.request = request
        self.folder = folder
        self.on_written = on_written
        # Millisecond instants, as meta.lastUpdated and the transaction time are written.
        self.until_millis = round(request.transaction_time * 1000)
        self._seen: sqlite3.Connection | None = None

    # -- what to export ------------------------------------------------------------------

    def stored_counts(self) -> dict[str, int]:
        """The types to export, each with its stored count (an upper bound for X-Progress),
        in export order. Counted once: a count reads every row of the type (1.9 million
        resources: 1.6-2.3 s counted twice, 0.9-1.3 s once, warm; a minute on a cold
        cache)."""
        if self.request.types:
            candidates = list(self.request.types)
        elif self.request.level == SYSTEM:
            candidates = sorted(resource_types())
        else:
            candidates = list(patient_types())
        visibility = current_visibility.get()
        visible = visibility.types("s") if visibility is not None else None
        counts = {
            t: self.storage.count(t) for t in candidates
            if t not in NOT_EXPORTED and (visible is None or t in visible)
        }
        return {t: n for t, n in counts.items() if n > 0}

    def base_clauses(self, rtype: str) -> tuple[Any, ...]:
        items = [("_lastUpdated", f"ge{self.request.since}")] if self.request.since else []
        clauses = list(parse_search(rtype, items, self.registry, True).clauses)
        filters = self.request.type_filters.get(rtype)
        if filters:
            clauses.append(AnyOf(tuple(
                tuple(filter_query(rtype, q, self.registry)) for q in filters
            )))
        return tuple(clauses)

    # -- writing -------------------------------------------------------------------------

    def export_type(self, rtype: str, selection: PatientSelection) -> list[dict[str, Any]]:
        base = self.base_clauses(rtype)
        elements = self.request.elements_for(rtype)
        shaping = ResultParams(elements=tuple(elements)) if elements else None
        files = NdjsonFiles(self.folder, rtype)
        try:
            if selection.everyone:
                extra = (every_compartment(rtype, self.registry),) if selection.compartments \
                    else ()
                for page in self._pages(rtype, (*base, *extra)):
                    self._write(files, page, shaping, dedupe=False)
            else:
                for batch in selection.batches():
                    membership = batch_compartment(rtype, batch, self.registry)
                    for page in self._pages(rtype, (*base, membership)):
                        self._write(files, page, shaping, dedupe=True)
        finally:
            files.close()
        return files.outputs

    def _pages(self, rtype: str, clauses: tuple[Any, ...]) -> Iterator[list[Any]]:
        query = parse_search(rtype, [], self.registry, True)
        query = dataclasses.replace(query, clauses=clauses)
        cursor = None
        while True:
            page = self.storage.search(query, PAGE, cursor)
            if page.matches:
                yield page.matches
            cursor = page.next_cursor
            if cursor is None:
                return

    def _write(self, files: NdjsonFiles, page: list[Any], shaping: Any, dedupe: bool) -> None:
        lines = []
        until = self.until_millis
        for stored in page:
            raw = stored.json
            if raw is None or round(stored.last_updated * 1000) > until:
                continue
            if dedupe and raw.count(b'"Patient/') > 1 and self._seen_before(stored):
                continue
            if shaping is not None:
                raw = jsonio.dumps(shape_resource(stored.resource_type, raw, shaping))
            lines.append(raw)
        files.write(lines)
        self.on_written(len(page))

    def _seen_before(self, stored: Any) -> bool:
        if self._seen is None:
            self._seen = sqlite3.connect(self.folder / ".seen.db")
            self._seen.execute("CREATE TABLE seen (type TEXT, id TEXT, PRIMARY KEY (type, id))")
        inserted = self._seen.execute(
            "INSERT OR IGNORE INTO seen VALUES (?, ?)", (stored.resource_type, stored.id)
        ).rowcount
        return inserted == 0

    def close(self) -> None:
        if self._seen is not None:
            self._seen.close()
            (self.folder / ".seen.db").unlink(missing_ok=True)


def every_compartment(rtype: str, registry: Any) -> CompartmentClause:
    """Membership of any patient's compartment (a Patient-level export of everyone)."""
    return compartment_criterion("Patient", None, rtype, registry)


def batch_compartment(rtype: str, patients: list[str], registry: Any) -> CompartmentClause:
    """Membership of the compartments of `patients`: each compartment parameter with every
    id as one OR-ed value list (and `_id` for the Patients themselves)."""
    template = compartment_clause("Patient", patients[0], rtype, registry)
    alternatives = []
    for clause in template:
        if clause.param.code == "_id":
            values: tuple[Any, ...] = tuple(TokenValue(None, p, False) for p in patients)
        else:
            values = tuple(ReferenceValue(type="Patient", id=p) for p in patients)
        alternatives.append(Clause(clause.param, clause.modifier, values))
    return CompartmentClause("Patient", patients[0], tuple(alternatives))


class NdjsonFiles:
    """One type's output: `Type.ndjson`, then `Type.2.ndjson`... every FILE_LINES lines."""

    def __init__(self, folder: Path, rtype: str) -> None:
        self.folder = folder
        self.rtype = rtype
        self.outputs: list[dict[str, Any]] = []
        self._handle: Any = None
        self._lines = 0

    def write(self, lines: list[bytes]) -> None:
        while lines:
            if self._handle is None or self._lines >= FILE_LINES:
                self._open()
            room = FILE_LINES - self._lines
            part, lines = lines[:room], lines[room:]
            self._handle.write(b"\n".join(part) + b"\n")
            self._lines += len(part)
            self.outputs[-1]["count"] = self._lines

    def _open(self) -> None:
        self._close_file()
        n = len(self.outputs) + 1
        name = f"{self.rtype}.ndjson" if n == 1 else f"{self.rtype}.{n}.ndjson"
        self._handle = (self.folder / name).open("wb")
        self._lines = 0
        self.outputs.append({"type": self.rtype, "file": name, "count": 0})

    def _close_file(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            self._handle.close()
            self._handle = None

    def close(self) -> None:
        self._close_file()
