"""Definitions that name an R4 core SearchParameter must agree with it (as the reference
validator checks): a SearchParameter `derivedFrom` a core one keeps its type and only the
bases it lists; a CapabilityStatement's `searchParam` whose `definition` is a core one
declares the same type. Other canonical URLs are not resolved here."""

from __future__ import annotations

from functools import cache
from typing import Any

from fhir_server.model.outcome import Issue
from fhir_server.search.registry import official_params


@cache
def _core() -> dict[str, tuple[str, frozenset[str]]]:
    """Core SearchParameter url -> (type, base types)."""
    found: dict[str, tuple[str, set[str]]] = {}
    for param in official_params():
        if param.url:
            found.setdefault(param.url, (param.type, set()))[1].add(param.resource_type)
    return {url: (kind, frozenset(bases)) for url, (kind, bases) in found.items()}


def _lookup(canonical: Any) -> tuple[str, tuple[str, frozenset[str]]] | None:
    if not isinstance(canonical, str):
        return None
    url = canonical.split("|", 1)[0]
    core = _core().get(url)
    return (url, core) if core is not None else None


def check_search_definitions(resource: dict[str, Any]) -> list[Issue]:
    kind = resource.get("resourceType")
    if kind == "SearchParameter":
        return _derived_from(resource)
    if kind == "CapabilityStatement":
        return _capability_search_params(resource)
    return []


def _derived_from(resource: dict[str, Any]) -> list[Issue]:
    found = _lookup(resource.get("derivedFrom"))
    if found is None:
        return []
    url, (parent_type, parent_bases) = found
    issues: list[Issue] = []
    if resource.get("type") != parent_type:
        issues.append(Issue(
            "error", "invalid",
            f"The type {resource.get('type')!r} is different to the type {parent_type!r} of "
            f"{url}, the SearchParameter this is derived from",
            ("SearchParameter.type",),
        ))
    bases = resource.get("base")
    for index, base in enumerate(bases if isinstance(bases, list) else []):
        if base not in parent_bases:
            issues.append(Issue(
                "error", "invalid",
                f"The resource type {base!r} is not listed as a base in {url}, the "
                f"SearchParameter this is derived from",
                (f"SearchParameter.base[{index}]",),
            ))
    return issues


def _capability_search_params(resource: dict[str, Any]) -> list[Issue]:
    issues: list[Issue] = []
    for r, rest in enumerate(_objects(resource.get("rest"))):
        for t, kind in enumerate(_objects(rest.get("resource"))):
            for p, param in enumerate(_objects(kind.get("searchParam"))):
                found = _lookup(param.get("definition"))
                if found is None:
                    continue
                url, (core_type, _) = found
                if param.get("type") is not None and param.get("type") != core_type:
                    issues.append(Issue(
                        "error", "invalid",
                        f"Type mismatch: SearchParameter {url} has type {core_type!r}, but "
                        f"the type here is {param.get('type')!r}",
                        (f"CapabilityStatement.rest[{r}].resource[{t}].searchParam[{p}].type",),
                    ))
    return issues


def _objects(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
