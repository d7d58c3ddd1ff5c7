"""Search as the API sees it: parse, run on storage, and answer a searchset Bundle."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from fhir_server.model import jsonio
from fhir_server.search.compartment import compartment_criterion, compartment_resource_types
from fhir_server.search.errors import SearchError
from fhir_server.search.query import (
    CompartmentClause,
    SearchQuery,
    UnknownParam,
    parse_search,
    parse_system_search,
)
from fhir_server.search.registry import SearchParamRegistry
from fhir_server.service.quantity_check import check_empty_quantity_search
from fhir_server.settings import Settings
from fhir_server.storage.base import Storage, StoredResource

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
# Kept by _elements and _summary whatever is asked, beside each type's mandatory and
# modifier elements (`kept_elements`).
ALWAYS_KEPT = ("resourceType", "id", "meta")
SUMMARY_FILE = "summary-elements-r4-4.0.1.json"
MANDATORY_MODIFIER_FILE = "mandatory-modifier-elements-r4-4.0.1.json"


def _data(name: str) -> Any:
    return json.loads(resources.files("fhir_server.search").joinpath("data", name).read_text())


@cache
def summary_elements() -> dict[str, tuple[str, ...]]:
    """Resource type -> its top-level elements flagged isSummary in the R4 StructureDefinitions
    (vendored extract, see search/data/SOURCES.md); choice elements keep their `[x]`."""
    return {rtype: tuple(names) for rtype, names in _data(SUMMARY_FILE).items()}


@cache
def kept_elements(resource_type: str) -> tuple[str, ...]:
    """The top-level elements no subset may drop (R4 search.html#summary, #elements): the
    mandatory ones (min >= 1), so that strict parsers still read the result, and the
    modifiers, which change the meaning of everything else (see search/data/SOURCES.md)."""
    rules = _data(MANDATORY_MODIFIER_FILE).get(resource_type, {})
    return tuple(dict.fromkeys([*rules.get("mandatory", ()), *rules.get("modifier", ())]))


def _keys_of(names: Iterable[str], resource: dict[str, Any]) -> set[str]:
    """The JSON keys of `resource` that stand for element `names` (a choice `value[x]` is
    `valueQuantity`, a primitive's extension twin `_birthDate` goes with `birthDate`)."""
    plain = {n for n in names if not n.endswith("[x]")}
    choices = tuple(n[:-3] for n in names if n.endswith("[x]"))
    keep = set(ALWAYS_KEPT)
    for key in resource:
        bare = key.removeprefix("_")
        if bare in plain or (
            bare.startswith(choices) and any(_is_choice_of(bare, c) for c in choices)
        ):
            keep.add(key)
    return keep


def summary_keys(resource_type: str, resource: dict[str, Any]) -> set[str]:
    """The JSON keys of `resource` that `_summary=true` keeps."""
    names = (*summary_elements().get(resource_type, ()), *kept_elements(resource_type))
    return _keys_of(names, resource)


def _is_choice_of(key: str, stem: str) -> bool:
    return key.startswith(stem) and len(key) > len(stem) and key[len(stem)].isupper()


# The parameters of R4's Patient-everything (OperationDefinition Patient-everything), plus
# the paging cursor and the result parameters every Bundle of this server takes.
EVERYTHING_PARAMS = frozenset(
    {"_type", "_count", "_cursor", "_summary", "_elements", "_since", "start", "end"}
)
# The care date of each type for `start` / `end` (R4: "care dates, not record currency
# dates"): the first of these the type has as a date parameter. `authoredon` before `date`
# (MedicationRequest's `date` is the dosage schedule), `onset-date` for Condition.
CARE_DATE_PARAMS = (
    "authoredon",
    "onset-date",
    "effective",
    "date",
    "period",
    "occurrence",
    "authored-on",
    "authored",
    "effective-time",
    "whenhandedover",
    "started",
    "collected",
    "sent",
    "recorded",
    "created",
    "issued",
    "datewritten",
    "datetime",
    "start-date",
    "identified",
)


class SearchService:
    def __init__(self, storage: Storage, registry: SearchParamRegistry, settings: Settings) -> None:
        self.storage = storage
        self.registry = registry
        self.settings = settings

    def parse(
        self,
        resource_type: str | None,
        items: list[tuple[str, str]],
        strict: bool,
        compartment: tuple[str, str] | None = None,
    ) -> SearchQuery:
        if resource_type is None:
            query = parse_system_search(items, self.registry, strict, self.settings.limits)
        else:
            query = parse_search(resource_type, items, self.registry, strict, self.settings.limits)
        if query.result.contained in ("true", "both"):
            # Contained resources are not indexed on their own: answering would mean
            # silently returning nothing, so say it is not supported.
            raise SearchError("_contained=true|both is not supported by this server", "_contained")
        if compartment is not None and resource_type is not None:
            criterion = compartment_criterion(*compartment, resource_type, self.registry)
            query = dataclasses.replace(query, clauses=(criterion, *query.clauses))
        return query

    def bundle(
        self,
        resource_type: str | None,
        items: list[tuple[str, str]],
        base_url: str,
        strict: bool,
        compartment: tuple[str, str] | None = None,
    ) -> dict[str, Any]:
        """A searchset Bundle; `compartment` = (type, id) for `GET /Patient/123/Observation`."""
        query = self.parse(resource_type, items, strict, compartment)
        if compartment is not None:
            path = f"{base_url}/{compartment[0]}/{compartment[1]}/{resource_type}"
        else:
            path = f"{base_url}/{resource_type}" if resource_type else base_url
        return self._render(query, path, base_url, query.self_link_items())

    def everything(
        self,
        compartment_type: str,
        compartment_id: str | None,
        items: list[tuple[str, str]],
        base_url: str,
        strict: bool,
    ) -> dict[str, Any]:
        """`GET /Patient/123/$everything` (or, with `compartment_id` None, the type-level
        `GET /Patient/$everything` over every Patient compartment): the compartment's
        resources, paged like any search. The parameters of R4's Patient-everything:
        `_type` narrows the types, `_since` keeps what changed since an instant, `start` /
        `end` bound the care dates (each type's clinical date parameter, CARE_DATE_PARAMS;
        types without one are not dated and always included), `_count` sets the page size.
        Anything else is refused in strict handling and noted in the Bundle otherwise."""
        allowed = (compartment_type, *compartment_resource_types(compartment_type))
        unknown = [
            UnknownParam(k, v, "not a parameter of $everything")
            for k, v in items
            if k not in EVERYTHING_PARAMS
        ]
        wanted = [name for key, value in items if key == "_type" for name in value.split(",")]
        outside = [t for t in wanted if t not in allowed]
        if outside:
            unknown.append(
                UnknownParam(
                    "_type", ",".join(outside), f"not in the {compartment_type} compartment"
                )
            )
        if strict and unknown:
            raise SearchError(
                f"{unknown[0].name}={unknown[0].value}: {unknown[0].reason}", unknown[0].name
            )
        types = [t for t in allowed if not wanted or t in wanted]
        if not types:
            raise SearchError("_type names no type of this compartment", "_type")
        kept = [(k, v) for k, v in items if k in ("_count", "_cursor", "_summary", "_elements")]
        since = [("_lastUpdated", f"ge{v}") for k, v in items if k == "_since"]
        query = parse_system_search(
            [("_type", ",".join(types)), *since, *kept],
            self.registry,
            True,
            self.settings.limits,
        )
        by_type = {}
        for rtype in types:
            try:
                by_type[rtype] = compartment_criterion(
                    compartment_type, compartment_id, rtype, self.registry
                ).alternatives
            except SearchError:
                continue  # listed in the definition with no usable parameter here
        care = [(k, v) for k, v in items if k in ("start", "end")]
        criterion = CompartmentClause(
            compartment_type, compartment_id, (), by_type, self._care_dates(by_type, care)
        )
        query = dataclasses.replace(
            query,
            clauses=(criterion, *query.clauses),
            resource_types=tuple(by_type),
            unknown=tuple(unknown),
        )
        where = (
            compartment_type if compartment_id is None else f"{compartment_type}/{compartment_id}"
        )
        path = f"{base_url}/{where}/$everything"
        understood = [
            (k, v) for k, v in query.self_link_items() if k not in ("_type", "_lastUpdated")
        ]
        understood[:0] = [(k, v) for k, v in items if k in ("_since", "start", "end")]
        if wanted:
            understood.insert(0, ("_type", ",".join(types)))
        return self._render(query, path, base_url, understood)

    def _care_dates(
        self, types: Iterable[str], bounds: list[tuple[str, str]]
    ) -> dict[str, tuple[Any, ...]] | None:
        """Per type, the clauses of `start` / `end` on its care date parameter."""
        if not bounds:
            return None
        within = {}
        for rtype in types:
            code = next(
                (
                    c
                    for c in CARE_DATE_PARAMS
                    if (param := self.registry.get(rtype, c)) is not None and param.type == "date"
                ),
                None,
            )
            if code is None:
                continue
            criteria = [(code, f"ge{v}" if k == "start" else f"le{v}") for k, v in bounds]
            within[rtype] = parse_search(
                rtype, criteria, self.registry, True, self.settings.limits
            ).clauses
        return within

    def _render(
        self,
        query: SearchQuery,
        path: str,
        base_url: str,
        understood: list[tuple[str, str]],
    ) -> dict[str, Any]:
        result = query.result
        page = self.storage.search(query, result.count, result.cursor)
        if not page.matches and not page.total and result.cursor is None:
            check_empty_quantity_search(self.storage, query)

        def url(extra: list[tuple[str, str]]) -> str:
            all_items = understood + extra
            return path + (f"?{urlencode(all_items)}" if all_items else "")

        links = [
            {"relation": "self", "url": url([("_cursor", result.cursor)] if result.cursor else [])}
        ]
        links.append({"relation": "first", "url": url([])})
        if page.previous_cursor:
            links.append({"relation": "previous", "url": url([("_cursor", page.previous_cursor)])})
        if page.next_cursor:
            links.append({"relation": "next", "url": url([("_cursor", page.next_cursor)])})

        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
        if page.total is not None:
            bundle["total"] = page.total
        bundle["link"] = links
        if result.summary == "count":
            bundle["entry"] = []
            outcome = self._outcome(query, page.warnings)
            if outcome is not None:
                bundle["entry"].append({"resource": outcome, "search": {"mode": "outcome"}})
            return bundle
        entries = [self._entry(r, base_url, "match", result) for r in page.matches]
        entries += [self._entry(r, base_url, "include", result) for r in page.included]
        outcome = self._outcome(query, page.warnings)
        if outcome is not None:
            entries.append({"resource": outcome, "search": {"mode": "outcome"}})
        bundle["entry"] = entries
        return bundle

    @staticmethod
    def _outcome(query: SearchQuery, warnings: tuple[str, ...] = ()) -> dict[str, Any] | None:
        issues = [
            {
                "severity": "warning",
                "code": "not-supported",
                "diagnostics": f"Search parameter {u.name}={u.value} was ignored: {u.reason}",
                "expression": [u.name],
            }
            for u in query.unknown
        ]
        issues += [
            {"severity": "information", "code": "informational", "diagnostics": w}
            for w in query.warnings
        ]
        issues += [
            {"severity": "warning", "code": "too-costly", "diagnostics": w} for w in warnings
        ]
        return {"resourceType": "OperationOutcome", "issue": issues} if issues else None

    def _entry(self, stored: StoredResource, base: str, mode: str, result: Any) -> dict[str, Any]:
        assert stored.json is not None
        return {
            "fullUrl": f"{base}/{stored.resource_type}/{stored.id}",
            "resource": shape_resource(stored.resource_type, stored.json, result),
            "search": {"mode": mode},
        }


def shape_resource(resource_type: str, raw: bytes, result: Any) -> Any:
    """Apply _summary=true|text|data and _elements; otherwise embed the stored JSON. A
    subset keeps the type's mandatory and modifier elements and is tagged SUBSETTED."""
    summary, elements = result.summary, result.elements
    if summary not in ("true", "text", "data") and not elements:
        return jsonio.fragment(raw)
    resource = jsonio.loads(raw)
    if summary == "true":
        keep_summary = summary_keys(resource_type, resource)
        resource = {k: v for k, v in resource.items() if k in keep_summary}
    elif summary == "data":
        resource.pop("text", None)
    elif summary == "text":
        keep = _keys_of(("text", *kept_elements(resource_type)), resource)
        resource = {k: v for k, v in resource.items() if k in keep}
    if elements:
        wanted = [e.split(".")[0] for e in elements]
        keep = _keys_of((*wanted, *kept_elements(resource_type)), resource)
        resource = {k: v for k, v in resource.items() if k in keep}
    meta = dict(resource.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    resource["meta"] = meta
    return resource
