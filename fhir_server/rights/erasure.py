"""Erasure (`$expunge`): every version of a resource, or of a patient and everything in the
patient's compartment, removed from the store and from every copy the server keeps of it
(index and full-text rows, clinical aggregates, de-identified view stores, cohort
snapshots, export files), unless the operator holds it (holds.py).

Order of work: the current resources are first deleted through the FHIR service in one
transaction (so the clinical aggregates subtract them, and the audit trail records, with
the ids of every resource erased, what is about to go: ids, never contents); then the
backend removes every version (erase_sqlite.py, erase_mongo.py); then the
copies outside the store. A failure half-way leaves the resources deleted, never served,
and the erasure can be run again.
"""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from fhir_server.clinical.indexes import subject_patient
from fhir_server.model.outcome import error
from fhir_server.rights import erase_mongo, erase_sqlite
from fhir_server.rights.holds import Holds
from fhir_server.search.compartment import compartment_clause, compartment_resource_types
from fhir_server.search.errors import SearchError
from fhir_server.search.query import SearchQuery
from fhir_server.search.result_params import ResultParams
from fhir_server.search.visibility import visible_as

PAGE = 1000


@dataclass
class ErasureReport:
    erased: list[str] = field(default_factory=list)  # "Type/id" of every resource erased
    versions: int = 0
    view_rows: int = 0
    materialized_rows: int = 0
    cohort_rows: int = 0
    job_outputs: list[str] = field(default_factory=list)  # ids of the jobs whose files went


class Erasure:
    def __init__(
        self,
        service: Any,
        holds: Holds,
        jobs: Any = None,
        views_dir: str | Path | None = None,
        cohorts_path: Path | None = None,
        materialized_dir: str | Path | None = None,
    ) -> None:
        self.service = service
        self.holds = holds
        self.jobs = jobs  # the JobStore, whose finished jobs' files may hold the resources
        self.views_dir = Path(views_dir) if views_dir else None
        self.cohorts_path = cohorts_path
        self.materialized_dir = Path(materialized_dir) if materialized_dir else None
        self.backend = service.indexed.backend

    # -- what an erasure covers ----------------------------------------------------------------

    def instance_targets(self, rtype: str, rid: str) -> list[tuple[str, str]]:
        if rtype == "Patient":
            return self.patient_targets(rid)
        stored = self.service.storage.read(rtype, rid)
        if stored is None:
            raise error(404, "not-found", f"{rtype}/{rid} is not known")
        return [(rtype, rid)]

    def patient_targets(self, patient_id: str) -> list[tuple[str, str]]:
        """The patient, the current members of its compartment, and the deleted resources
        whose former versions name it."""
        storage = self.service.storage
        if storage.read("Patient", patient_id) is None:
            raise error(404, "not-found", f"Patient/{patient_id} is not known")
        found: dict[tuple[str, str], None] = {("Patient", patient_id): None}
        registry = self.service.registry
        with visible_as(None):
            for rtype in compartment_resource_types("Patient"):
                if rtype == "AuditEvent":
                    continue  # the trail is kept (ids, not contents): audit/ says why
                try:
                    clauses = compartment_clause("Patient", patient_id, rtype, registry)
                except SearchError:
                    continue
                for clause in clauses:
                    query = SearchQuery(rtype, (clause,), ResultParams(count=PAGE))
                    cursor = None
                    while True:
                        page = storage.search(query, PAGE, cursor, False)
                        for stored in page.matches:
                            found[(stored.resource_type, stored.id)] = None
                        cursor = page.next_cursor
                        if cursor is None:
                            break
        for key in self._backend_module().deleted_referring(self.backend, patient_id):
            found[key] = None
        return list(found)

    def check_holds(self, targets: list[tuple[str, str]]) -> None:
        """409 when any target is held, or belongs to a held patient."""
        held = {(h.resource_type, h.id): h for h in self.holds.all()}
        if not held:
            return
        for rtype, rid in targets:
            hold = held.get((rtype, rid))
            if hold is None and rtype != "Patient":
                stored = self.service.storage.read(rtype, rid)
                if stored is not None and stored.json is not None:
                    patient = subject_patient(orjson.loads(stored.json))
                    hold = held.get(("Patient", patient)) if patient else None
            if hold is not None:
                raise error(
                    409, "business-rule",
                    f"{rtype}/{rid} is under a legal hold ({hold.resource_type}/{hold.id}: "
                    f"{hold.reason}): it cannot be erased until the hold is cleared",
                )

    # -- the erasure ---------------------------------------------------------------------------

    def erase(self, targets: list[tuple[str, str]]) -> ErasureReport:
        self.check_holds(targets)
        report = ErasureReport(erased=[f"{t}/{i}" for t, i in targets])
        patients = [i for t, i in targets if t == "Patient"]
        service = self.service
        with visible_as(None), service.storage.transaction() as tx:
            for rtype, rid in targets:
                if service.resources.delete_in(tx, rtype, rid) is None:
                    tx.writes.append((rtype, rid, None, "DELETE"))  # named in the record too
        report.versions = self._backend_module().erase(self.backend, targets, patients)
        report.view_rows = self._erase_views(targets)
        report.materialized_rows = self._erase_materialized(targets)
        report.cohort_rows = self._erase_cohort_members(patients)
        report.job_outputs = self._erase_job_outputs(targets)
        return report

    def _backend_module(self) -> Any:
        return erase_sqlite if hasattr(self.backend, "_writer") else erase_mongo

    def _erase_views(self, targets: list[tuple[str, str]]) -> int:
        if self.views_dir is None or not self.views_dir.is_dir():
            return 0
        removed = 0
        for path in sorted(self.views_dir.glob("*.sqlite")):
            removed += _secure_delete_rows(
                path, "DELETE FROM views WHERE type=? AND id=?", targets
            )
        return removed

    def _erase_materialized(self, targets: list[tuple[str, str]]) -> int:
        """Rows of the materialized views (analytics/materialize.py, the operator's folder
        the server's Measures read): deleted by key, each Parquet file written again. The
        next incremental run would not see the erasure (its history is gone with it)."""
        database = self.materialized_dir / "views.duckdb" if self.materialized_dir else None
        if database is None or not database.exists():
            return 0
        import duckdb
        import pyarrow as pa

        from fhir_server.analytics.materialize import KEY_COLUMN, STATE_TABLE

        removed = 0
        db = duckdb.connect(str(database))
        try:
            db.register("_erased", pa.table({"key": sorted({rid for _, rid in targets})}))
            for (name,) in db.execute(f"SELECT view FROM {STATE_TABLE}").fetchall():
                gone = db.execute(
                    f'DELETE FROM "{name}" WHERE {KEY_COLUMN} IN (SELECT key FROM _erased)'
                ).fetchone()[0]
                if gone:
                    removed += gone
                    parquet = self.materialized_dir / f"{name}.parquet"  # type: ignore[operator]
                    partial = parquet.with_name(f".{name}.parquet.partial")
                    db.execute(f"COPY \"{name}\" TO '{partial}' (FORMAT PARQUET, COMPRESSION ZSTD)")
                    partial.replace(parquet)
            db.execute("CHECKPOINT")
        finally:
            db.close()
        return removed

    def _erase_cohort_members(self, patients: list[str]) -> int:
        if self.cohorts_path is None or not patients or not self.cohorts_path.exists():
            return 0
        return _secure_delete_rows(
            self.cohorts_path, "DELETE FROM members WHERE patient=?", [(p,) for p in patients]
        )

    def _erase_job_outputs(self, targets: list[tuple[str, str]]) -> list[str]:
        """Delete the files of every finished job that may hold an erased resource: exports
        whose files name one of them, and de-identified exports (their files hold
        pseudonyms, which only the recipient's keys would match)."""
        if self.jobs is None:
            return []
        from fhir_server.jobs import DEID_EXPORT

        needles = [f'"{t}/{i}"'.encode() for t, i in targets]
        needles += [f'"id":"{i}"'.encode() for _, i in targets]
        removed = []
        for job in self.jobs.completed():
            folder = Path(job.folder)
            if job.kind == DEID_EXPORT or _any_file_holds(folder, needles):
                shutil.rmtree(folder, ignore_errors=True)
                self.jobs.delete(job.id)
                removed.append(job.id)
        return removed


def _any_file_holds(folder: Path, needles: list[bytes]) -> bool:
    for path in folder.glob("*.ndjson"):
        with path.open("rb") as handle:
            for line in handle:
                if any(n in line for n in needles):
                    return True
    return False


def _secure_delete_rows(path: Path, statement: str, rows: list[tuple[str, ...]]) -> int:
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        conn.execute("PRAGMA secure_delete=ON")
        conn.execute("BEGIN IMMEDIATE")
        removed = 0
        for row in rows:
            removed += conn.execute(statement, row).rowcount
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return removed
    finally:
        conn.close()
