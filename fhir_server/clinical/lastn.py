"""`Observation/$lastn` (R4 OperationDefinition Observation-lastn): the most recent `max`
Observations of each code among those a search finds, e.g. a patient's latest HbA1c,
glucose and weight in one request.

R4 asks for a subject (`patient` or `subject`, or the compartment of
`Patient/{id}/Observation/$lastn`) and a `category` or `code`; a request without them is
refused rather than run over every patient. The search's other parameters filter as in a
search. Observations are grouped by their first coded `code` (system and code; the text
when none is coded), newest `effective` first; those without a date come last.
"""

from __future__ import annotations

from typing import Any

from fhir_server.model import jsonio
from fhir_server.search.errors import SearchError
from fhir_server.service.search import SearchService, shape_resource

DEFINITION = "http://hl7.org/fhir/OperationDefinition/Observation-lastn"
OPERATION = ("lastn", DEFINITION)
# Parameters the operation decides itself: the grouping replaces paging and sorting.
OWN_PARAMETERS = frozenset({"max", "_count", "_cursor", "_sort"})
PAGE_SIZE = 1000


def max_per_code(items: list[tuple[str, str]]) -> int:
    values = [value for key, value in items if key == "max"]
    if not values:
        return 1
    if len(values) > 1 or not values[0].isdigit() or int(values[0]) < 1:
        raise SearchError("max must be one positive integer", "max")
    return int(values[0])


def group_key(resource: dict[str, Any]) -> str:
    code = resource.get("code") or {}
    for coding in code.get("coding") or ():
        if coding.get("system") and coding.get("code"):
            return f"{coding['system']}|{coding['code']}"
    for coding in code.get("coding") or ():
        if coding.get("code"):
            return f"|{coding['code']}"
    return f"text:{code.get('text', '')}"


def lastn(
    search: SearchService,
    items: list[tuple[str, str]],
    base_url: str,
    strict: bool,
    compartment: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """A searchset Bundle of the newest `max` Observations per code."""
    keep = max_per_code(items)
    names = {key.split(":")[0].split(".")[0] for key, _ in items}
    if compartment is None and not names & {"patient", "subject"}:
        raise SearchError("$lastn needs a patient or subject", "patient")
    if not names & {"category", "code"}:
        raise SearchError("$lastn needs a category or a code", "category")
    criteria = [(k, v) for k, v in items if k not in OWN_PARAMETERS]
    query = search.parse("Observation", [*criteria, ("_sort", "-date")], strict, compartment)
    kept: dict[str, list[Any]] = {}
    cursor: str | None = None
    while True:
        page = search.storage.search(query, PAGE_SIZE, cursor)
        for stored in page.matches:
            group = kept.setdefault(group_key(jsonio.loads(stored.json)), [])
            if len(group) < keep:
                group.append(stored)
        cursor = page.next_cursor
        if not cursor:
            break
    entries = [
        {
            "fullUrl": f"{base_url}/Observation/{stored.id}",
            "resource": shape_resource("Observation", stored.json, query.result),
            "search": {"mode": "match"},
        }
        for group in kept.values()
        for stored in group
    ]
    path = (
        f"{base_url}/{compartment[0]}/{compartment[1]}/Observation/$lastn"
        if compartment
        else f"{base_url}/Observation/$lastn"
    )
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(entries),
        "link": [{"relation": "self", "url": path}],
        "entry": entries,
    }
