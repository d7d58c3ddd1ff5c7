"""Loading FHIR JSON files into the store without HTTP (`diatabase load`).

Accepted: a resource, a Bundle (transaction and batch run as on `POST /`; collection,
searchset and others store their entries' resources), or NDJSON (one resource a line).
Resources with an id keep it (update-as-create), so references between files resolve.
NDJSON is written in chunks, one storage transaction each, for speed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fhir_server.model import jsonio
from fhir_server.model.outcome import FhirError, error
from fhir_server.service.fhir import FhirService

CHUNK = 500


@dataclass
class LoadReport:
    created: int = 0
    updated: int = 0
    failed: list[str] = field(default_factory=list)

    @property
    def stored(self) -> int:
        return self.created + self.updated


def iter_documents(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, document) for every JSON document in a file: one, or one per NDJSON line
    (read a line at a time: a file of millions of lines is never in memory whole)."""
    if path.suffix in (".ndjson", ".jsonl"):
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield f"{path}:{number}", jsonio.loads(line)
    else:
        yield str(path), jsonio.loads(path.read_bytes())


def _resources_of(document: Any) -> list[dict[str, Any]]:
    if isinstance(document, dict) and document.get("resourceType") == "Bundle":
        return [
            e["resource"]
            for e in document.get("entry") or []
            if isinstance(e, dict) and isinstance(e.get("resource"), dict)
        ]
    return [document]


class Loader:
    def __init__(
        self,
        service: FhirService,
        on_progress: Callable[[int], None] | None = None,
        on_rejected: Callable[[str, FhirError], None] | None = None,
    ):
        self.service = service
        self.on_progress = on_progress or (lambda n: None)
        # Told of each rejected resource (where, why): `$import` writes its error file.
        self.on_rejected = on_rejected
        self.report = LoadReport()
        self._pending: list[tuple[str, dict[str, Any]]] = []

    def add(self, where: str, resource: Any) -> None:
        """One resource to store (with the others of its chunk); `finish` stores the rest."""
        self._pending.append((where, resource))
        if len(self._pending) >= CHUNK:
            self._flush(self._pending)

    def finish(self) -> LoadReport:
        self._flush(self._pending)
        return self.report

    def load_files(self, paths: Iterable[Path]) -> LoadReport:
        for path in paths:
            try:
                documents = iter_documents(path)
                for where, document in documents:
                    if _is_transaction(document):
                        self._flush(self._pending)
                        self._bundle(where, document)
                        continue
                    for resource in _resources_of(document):
                        self.add(where, resource)
            except (OSError, jsonio.JsonError) as exc:
                self.report.failed.append(f"{path}: {exc}")
        return self.finish()

    def load_resources(
        self, resources: Iterable[dict[str, Any]], where: str = "input"
    ) -> LoadReport:
        for resource in resources:
            self.add(where, resource)
        return self.finish()

    def _bundle(self, where: str, bundle: dict[str, Any]) -> None:
        try:
            response = self.service.bundles("").process(bundle, self._no_get)
        except FhirError as exc:
            self.report.failed.append(f"{where}: {exc}")
            return
        for entry in response["entry"]:
            status = entry["response"]["status"]
            if status.startswith("201"):
                self.report.created += 1
            elif status.startswith("200"):
                self.report.updated += 1
            elif not status.startswith("204"):
                self.report.failed.append(f"{where}: {status}")
        self.on_progress(len(response["entry"]))

    @staticmethod
    def _no_get(url: str, items: list[tuple[str, str]]) -> tuple[int, Any]:
        return 200, None

    def _flush(self, pending: list[tuple[str, dict[str, Any]]]) -> None:
        """Store a chunk in one transaction; on a failure, retry one by one to keep the rest."""
        if not pending:
            return
        chunk = list(pending)
        pending.clear()
        try:
            with self.service.storage.transaction() as tx:
                results = [self._store(tx, resource) for _, resource in chunk]
        except FhirError:
            results = []
            for where, resource in chunk:
                try:
                    with self.service.storage.transaction() as tx:
                        results.append(self._store(tx, resource))
                except FhirError as exc:
                    self._reject(where, exc)
        for created in results:
            if created:
                self.report.created += 1
            else:
                self.report.updated += 1
        self.on_progress(len(chunk))

    def _reject(self, where: str, exc: FhirError) -> None:
        self.report.failed.append(f"{where}: {exc}")
        if self.on_rejected is not None:
            self.on_rejected(where, exc)

    def _store(self, tx: Any, resource: Any) -> bool:
        resources = self.service.resources
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise error(400, "structure", "not a FHIR resource (no resourceType)")
        rtype = resource["resourceType"]
        resources.check_type(rtype)
        if resource.get("id"):
            return resources.update_in(tx, rtype, resource["id"], resource).created
        return resources.create_in(tx, rtype, resource).created


def _is_transaction(document: Any) -> bool:
    return (
        isinstance(document, dict)
        and document.get("resourceType") == "Bundle"
        and document.get("type") in ("transaction", "batch")
    )
