"""`ViewDefinition/$run` below HTTP: which view, over which resources, into which format.

The resources come either from the request (`resource` parameters), from the clinical
store as the caller may see it (the request's visibility is applied inside the storage
queries: a patient-context token reads its own compartment only), or, for a research
recipient, from the de-identification facade (`DeidFacade.released`: the same
pseudonyms, shifted dates and suppressions as every other output of that recipient).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from fhir_server.analytics.output import FORMAT_ALIASES, MEDIA_TYPES, write
from fhir_server.analytics.runner import ViewRunError, run_view
from fhir_server.analytics.viewdefinition import CompiledView, ViewDefinitionError, compile_view
from fhir_server.model.outcome import error
from fhir_server.search.query import SearchQuery, parse_search
from fhir_server.search.visibility import current_visibility

PAGE = 1_000  # resources per storage page when the caller's visibility applies


@dataclass(frozen=True)
class RunRequest:
    """What the caller asked of $run, parsed from query items or a Parameters body."""

    view: dict[str, Any] | None
    view_reference: str | None
    fmt: str
    header: bool
    resources: list[dict[str, Any]] | None
    patient: str | None
    limit: int | None
    since: str | None


def parse_format(value: str | None, accept: str | None) -> str:
    if value:
        fmt = FORMAT_ALIASES.get(value.strip().lower())
        if fmt is None:
            raise error(400, "not-supported", f"_format={value}: use csv, ndjson, json or parquet")
        return fmt
    for part in (accept or "").split(","):
        fmt = FORMAT_ALIASES.get(part.split(";")[0].strip().lower())
        if fmt is not None:
            return fmt
    return "json"


def run_request(parameters: dict[str, Any] | None, items: list[tuple[str, str]],
                accept: str | None) -> RunRequest:  # fmt: skip
    """From a `Parameters` body (POST) and the query string (GET and POST)."""
    values: dict[str, list[Any]] = {}
    for name, value in items:
        values.setdefault(name, []).append(value)
    if parameters is not None:
        if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
            raise error(400, "invalid", "$run takes a Parameters resource")
        for parameter in parameters.get("parameter", []) or []:
            if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str):
                raise error(400, "invalid", "Parameters.parameter needs a name")
            value = parameter.get("resource")
            if value is None:
                value = next((v for k, v in parameter.items() if k.startswith("value")), None)
            values.setdefault(parameter["name"], []).append(value)

    def one(name: str) -> Any:
        found = values.get(name, [])
        if len(found) > 1:
            raise error(400, "invalid", f"$run: {name} may be given once")
        return found[0] if found else None

    header = one("header")
    if isinstance(header, str):
        header = {"true": True, "false": False}.get(header.lower(), header)
    if header is not None and not isinstance(header, bool):
        raise error(400, "invalid", "$run: header must be true or false")
    limit = one("_limit")
    if limit is not None:
        try:
            limit = int(limit)
        except (TypeError, ValueError):
            raise error(400, "invalid", "$run: _limit must be a positive integer") from None
        if limit < 1:
            raise error(400, "invalid", "$run: _limit must be a positive integer")
    view = one("viewResource")
    if view is not None and not isinstance(view, dict):
        raise error(400, "invalid", "$run: viewResource must be a ViewDefinition")
    resources = values.get("resource")
    if resources is not None and not all(isinstance(r, dict) for r in resources):
        raise error(400, "invalid", "$run: each resource parameter must hold a resource")
    patient = one("patient")
    if isinstance(patient, dict):
        patient = patient.get("reference")
    if isinstance(patient, str):
        patient = patient.removeprefix("Patient/")
    reference = one("viewReference")
    if isinstance(reference, dict):
        reference = reference.get("reference")
    return RunRequest(view, reference, parse_format(one("_format"), accept),
                      True if header is None else header, resources, patient, limit,
                      one("_since"))  # fmt: skip


def compile_or_400(view: Any) -> CompiledView:
    try:
        return compile_view(view)
    except ViewDefinitionError as exc:
        raise error(400, "invalid", f"ViewDefinition: {exc}") from None


def clinical_query(fhir: Any, rtype: str, patient: str | None, since: str | None
                   ) -> SearchQuery | None:  # fmt: skip
    """The search narrowing `rtype` to one patient's or to what changed since a time (None
    without either); 400 when it cannot apply."""
    items: list[tuple[str, str]] = []
    if patient is not None:
        params = fhir.registry.for_type(rtype)
        name = (
            "_id"
            if rtype == "Patient"
            else "patient"
            if "patient" in params
            else ("subject" if "subject" in params else None)
        )
        if name is None:
            raise error(400, "not-supported", f"$run: patient does not apply to {rtype}")
        items.append((name, patient if name == "_id" else f"Patient/{patient}"))
    if since is not None:
        items.append(("_lastUpdated", f"ge{since}"))
    return parse_search(rtype, items, fhir.registry) if items else None


def clinical_resources(fhir: Any, rtype: str, patient: str | None, since: str | None
                       ) -> Iterator[dict]:  # fmt: skip
    """The current resources of `rtype` the caller may see (storage applies the request's
    visibility inside its queries), optionally one patient's or changed since a time."""
    query = clinical_query(fhir, rtype, patient, since)
    if query is None and current_visibility.get() is None:
        for stored in fhir.storage.iter_current(rtype):
            yield orjson.loads(stored.json)
        return
    if query is None:
        query = parse_search(rtype, [], fhir.registry)
    cursor = None
    while True:
        page = fhir.storage.search(query, PAGE, cursor)
        for stored in page.matches:
            if stored.json is not None:
                yield orjson.loads(stored.json)
        cursor = page.next_cursor
        if cursor is None:
            return


def limited(rows: Iterable[tuple], limit: int | None) -> Iterator[tuple]:
    for count, row in enumerate(rows, start=1):
        yield row
        if limit is not None and count >= limit:
            return


class CountedRows:
    """Rows passed through, counted (for the audit event: how many were released)."""

    def __init__(self, rows: Iterable[tuple]) -> None:
        self.rows = rows
        self.count = 0

    def __iter__(self) -> Iterator[tuple]:
        for row in self.rows:
            self.count += 1
            yield row


def output(view: CompiledView, resources: Iterable[dict], request: RunRequest
           ) -> tuple[str, Iterator[bytes], CountedRows]:  # fmt: skip
    rows = CountedRows(limited(run_view(view, resources), request.limit))
    return MEDIA_TYPES[request.fmt], write(request.fmt, view.column_types, rows,
                                            request.header), rows  # fmt: skip


__all__ = ["RunRequest", "ViewRunError", "clinical_query", "clinical_resources",
           "compile_or_400", "output", "parse_format", "run_request"]  # fmt: skip
