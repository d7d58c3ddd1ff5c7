"""The rules of an R4 Bundle that its FHIRPath invariants (bdl-1 ... bdl-12, checked as
invariants) do not state: what the specification's Bundle page and the reference
validator require of `fullUrl`, entries, links and references inside the Bundle.

- `fullUrl` is absolute (a URL, `urn:uuid:` or `urn:oid:`), and when it is a RESTful URL
  (`.../Patient/1`) its type and id are the resource's;
- a searchset's matches have ids, and its `outcome` entries are OperationOutcomes;
- a link relation occurs once;
- in a transaction or batch, each request's url fits its method (`POST Patient`,
  `PUT Patient/1` whose id is the resource's, conditional forms `Patient?...`) and type;
- references between entries resolve by the R4 rules (a relative reference against the
  entry's fullUrl base): a `urn:uuid:` reference must find its entry in a transaction
  or batch (elsewhere, a warning), a
  reference that finds several entries is an error, and in a document a reference to a
  version the Bundle does not hold is an error (other unresolved references of a document
  are warnings: the document may point to resources held elsewhere).
"""

from __future__ import annotations

import re
from typing import Any

Problem = tuple[str, str, str, str]  # severity, code, expression, message

_RESTFUL = re.compile(r"^(.*/)?([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/([^/]+))?$")
_ABSOLUTE = re.compile(r"^[a-z][a-z0-9+.\-]*:", re.IGNORECASE)  # a URI with a scheme
_TYPE_URL = re.compile(r"^([A-Z][A-Za-z]+)(\?.*)?$")
_INSTANCE_URL = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(\?.*)?$")


def bundle_problems(bundle: dict, path: str) -> list[Problem]:
    problems: list[Problem] = []
    kind = bundle.get("type")
    entries = bundle.get("entry") if isinstance(bundle.get("entry"), list) else []
    _links(bundle.get("link"), f"{path}.link", problems)
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        where = f"{path}.entry[{index}]"
        resource = entry.get("resource") if isinstance(entry.get("resource"), dict) else None
        full_url = entry.get("fullUrl")
        if isinstance(full_url, str):
            _full_url(full_url, resource, where, problems)
        if kind == "searchset" and resource is not None:
            mode = (entry.get("search") or {}).get("mode")
            if mode == "outcome" and resource.get("resourceType") != "OperationOutcome":
                problems.append(("error", "invalid", f"{where}.resource",
                                 f"An outcome entry must be an OperationOutcome (found "
                                 f"{resource.get('resourceType')})"))
            elif mode != "outcome" and "id" not in resource and (
                resource.get("resourceType") != "OperationOutcome"
            ):
                problems.append(("error", "required", f"{where}.resource",
                                 "Search results must have ids"))
        if kind in ("transaction", "batch") and isinstance(entry.get("request"), dict):
            _request(entry["request"], resource, f"{where}.request", problems)
        _links(entry.get("link"), f"{where}.link", problems)
    _references(kind, entries, path, problems)
    return problems


def _links(links: Any, where: str, problems: list[Problem]) -> None:
    if not isinstance(links, list):
        return
    seen: set[str] = set()
    for index, link in enumerate(links):
        relation = link.get("relation") if isinstance(link, dict) else None
        if isinstance(relation, str):
            if relation in seen:
                problems.append(("error", "invalid", f"{where}[{index}]",
                                 f"The link relation '{relation}' can only occur once"))
            seen.add(relation)


def _full_url(full_url: str, resource: dict | None, where: str, problems: list[Problem]) -> None:
    if not _ABSOLUTE.match(full_url):
        problems.append(("error", "invalid", f"{where}.fullUrl",
                         f"The fullUrl must be an absolute URL (not '{full_url}')"))
        return
    if resource is None or full_url.lower().startswith("urn:"):
        return
    match = _RESTFUL.match(full_url)
    if match is None or match.group(4):
        return
    resource_type, rid = match.group(2), match.group(3)
    if resource.get("resourceType") != resource_type or (
        "id" in resource and resource.get("id") != rid
    ):
        problems.append(("error", "invalid", f"{where}.fullUrl",
                         f"The fullUrl {full_url} does not match the resource "
                         f"{resource.get('resourceType')}/{resource.get('id')}"))


def _request(request: dict, resource: dict | None, where: str, problems: list[Problem]) -> None:
    method, url = request.get("method"), request.get("url")
    if not isinstance(method, str) or not isinstance(url, str):
        return
    url = url.split("://", 1)[-1].split("/", 1)[-1] if "://" in url else url.lstrip("/")
    resource_type = resource.get("resourceType") if resource else None
    if method == "POST":
        match = _TYPE_URL.match(url)
        if match is None and not url.startswith("$") and "/$" not in url:
            problems.append(("error", "invalid", f"{where}.url",
                             f"A POST entry's url must be a resource type (found '{url}')"))
        elif match is not None and resource_type and match.group(1) != resource_type:
            problems.append(("error", "invalid", f"{where}.url",
                             f"The url {url} does not match the entry's {resource_type}"))
    elif method in ("PUT", "PATCH", "DELETE"):
        instance, conditional = _INSTANCE_URL.match(url), _TYPE_URL.match(url)
        if instance is None and (conditional is None or not conditional.group(2)):
            problems.append(("error", "invalid", f"{where}.url",
                             f"A {method} entry's url must be Type/id or a conditional "
                             f"Type?criteria (found '{url}')"))
            return
        named = (instance or conditional).group(1)  # type: ignore[union-attr]
        if method == "PUT" and resource_type and named != resource_type:
            problems.append(("error", "invalid", f"{where}.url",
                             f"The url {url} does not match the entry's {resource_type}"))
        if method == "PUT" and instance and resource and "id" in resource and (
            resource["id"] != instance.group(2)
        ):
            problems.append(("error", "invalid", f"{where}.url",
                             f"The url {url} does not match the resource's id "
                             f"'{resource['id']}'"))


def _reference_strings(value: Any, path: str) -> list[tuple[str, str]]:
    """(reference, FHIRPath) of every Reference.reference below `value`."""
    out: list[tuple[str, str]] = []
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if key == "reference" and isinstance(child, str):
                    out.append((child, where))
                elif isinstance(child, dict | list) and key != "contained":
                    stack.append((child, f"{where}.{key}"))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(item))
    out.reverse()
    return out


def _references(kind: Any, entries: list, path: str, problems: list[Problem]) -> None:
    by_url: dict[str, list[dict]] = {}
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("fullUrl"), str):
            resource = entry.get("resource")
            by_url.setdefault(entry["fullUrl"], []).append(
                resource if isinstance(resource, dict) else {}
            )
    if not by_url:
        return
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            continue
        full_url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else ""
        base_match = _RESTFUL.match(full_url) if full_url else None
        base = base_match.group(1) if base_match and base_match.group(1) else None
        where = f"{path}.entry[{index}].resource"
        for reference, at in _reference_strings(entry["resource"], where):
            if reference.startswith(("#", "?")) or "?" in reference:
                continue
            match = _RESTFUL.match(reference)
            version = match.group(5) if match else None
            if reference.lower().startswith("urn:"):
                target = reference
            elif _ABSOLUTE.match(reference):
                target = reference.split("/_history/")[0]
            elif match and base:
                target = f"{base}{match.group(2)}/{match.group(3)}"
            else:
                continue
            found = by_url.get(target, [])
            if version is not None:
                versioned = [r for r in found if (r.get("meta") or {}).get("versionId") == version]
                if not versioned and found and kind == "document":
                    problems.append(("error", "invalid", f"{at}.reference",
                                     f"Can't find '{reference}' in the bundle: the entries "
                                     f"{target} hold other versions"))
                found = versioned
            if len(found) > 1:
                problems.append(("error", "forbidden", f"{at}.reference",
                                 f"Multiple matches in the bundle for the reference "
                                 f"{reference}"))
            elif not found and reference.lower().startswith("urn:uuid:"):
                # a transaction cannot be processed with it; elsewhere it may be a name
                severity = "error" if kind in ("transaction", "batch") else "warning"
                problems.append((severity, "not-found", f"{at}.reference",
                                 f"The reference {reference} points to no entry of the "
                                 "Bundle"))
            elif not found and kind == "document" and version is None:
                problems.append(("warning", "not-found", f"{at}.reference",
                                 f"The reference {reference} is not resolved inside the "
                                 "document"))
