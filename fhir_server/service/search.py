"""Search as the API sees it: parse, run on storage, and answer a searchset Bundle."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fhir_server.model import jsonio
from fhir_server.search.query import SearchQuery, parse_search, parse_system_search
from fhir_server.search.registry import SearchParamRegistry
from fhir_server.settings import Settings
from fhir_server.storage.base import Storage, StoredResource

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
# Kept by _elements and _summary whatever is asked (FHIR: mandatory and modifier elements
# may not be dropped; these are the ones every resource has).
ALWAYS_KEPT = ("resourceType", "id", "meta")


class SearchService:
    def __init__(self, storage: Storage, registry: SearchParamRegistry, settings: Settings) -> None:
        self.storage = storage
        self.registry = registry
        self.settings = settings

    def parse(
        self, resource_type: str | None, items: list[tuple[str, str]], strict: bool
    ) -> SearchQuery:
        if resource_type is None:
            return parse_system_search(items, self.registry, strict=strict)
        return parse_search(resource_type, items, self.registry, strict=strict)

    def bundle(
        self,
        resource_type: str | None,
        items: list[tuple[str, str]],
        base_url: str,
        strict: bool,
    ) -> dict[str, Any]:
        query = self.parse(resource_type, items, strict)
        result = query.result
        page = self.storage.search(query, result.count, result.cursor)
        path = f"{base_url}/{resource_type}" if resource_type else base_url
        understood = query.self_link_items()

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
        entries = [self._entry(r, base_url, "match", result) for r in page.matches]
        entries += [self._entry(r, base_url, "include", result) for r in page.included]
        outcome = self._outcome(query)
        if outcome is not None:
            entries.append({"resource": outcome, "search": {"mode": "outcome"}})
        bundle["entry"] = entries
        return bundle

    @staticmethod
    def _outcome(query: SearchQuery) -> dict[str, Any] | None:
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
        return {"resourceType": "OperationOutcome", "issue": issues} if issues else None

    def _entry(self, stored: StoredResource, base: str, mode: str, result: Any) -> dict[str, Any]:
        assert stored.json is not None
        return {
            "fullUrl": f"{base}/{stored.resource_type}/{stored.id}",
            "resource": self._shape(stored.json, result),
            "search": {"mode": mode},
        }

    @staticmethod
    def _shape(raw: bytes, result: Any) -> Any:
        """Apply _summary=text|data and _elements; otherwise embed the stored JSON as is."""
        summary, elements = result.summary, result.elements
        if summary not in ("text", "data") and not elements:
            return jsonio.fragment(raw)
        resource = jsonio.loads(raw)
        if summary == "data":
            resource.pop("text", None)
        elif summary == "text":
            keep = (*ALWAYS_KEPT, "text", "status")
            resource = {k: v for k, v in resource.items() if k in keep}
        if elements:
            wanted = {e.split(".")[0] for e in elements}
            resource = {k: v for k, v in resource.items() if k in wanted or k in ALWAYS_KEPT}
        meta = dict(resource.get("meta") or {})
        meta["tag"] = [*meta.get("tag", []), SUBSETTED]
        resource["meta"] = meta
        return resource
