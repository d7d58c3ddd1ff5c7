"""`Observation/$lastn` (R4 OperationDefinition Observation-lastn): the most recent `max`
Observations of each code among those a search finds, e.g. a patient's latest HbA1c,
glucose and weight in one request.

R4 asks for a subject (`patient` or `subject`, or the compartment of
`Patient/{id}/Observation/$lastn`) and a `category` or `code`; a request without them is
refused rather than run over every patient. The search's other parameters filter as in a
search (`_include` too). Observations are grouped by their coded `code` (system and code),
newest `effective` first.

How it avoids reading a patient's year of 5-minute readings (105,000 rows) to find one
HbA1c: the codes each patient has are kept in the code catalogue (indexes.py), updated in
every write transaction. For each of the patient's codes, one search `code=<it>` with the
request's criteria, sorted by date, asks for `max` matches: the newest readings of a
frequent code are at the head of the patient's date index, and a rare code (a few HbA1c
among the readings) is searched without sorting, through its token index, and its few
matches sorted here. Codes that the request's criteria exclude give empty searches.

Paging: `_count` Observations per page (default the server's), groups in code order;
the next link carries the position (`_lastn_offset`), the search being recomputed.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fhir_server.model import jsonio
from fhir_server.search.errors import SearchError
from fhir_server.service.search import SearchService, shape_resource

DEFINITION = "http://hl7.org/fhir/OperationDefinition/Observation-lastn"
OPERATION = ("lastn", DEFINITION)
# Parameters the operation decides itself: the grouping replaces sorting and paging.
OWN_PARAMETERS = frozenset({"max", "_count", "_cursor", "_sort", "_lastn_offset", "_total"})
# A code a patient has at most this many Observations of is read whole through its token
# index and sorted here; a more frequent one is read newest first through the date index.
RARE_CODE = 500
MAX_PAGE = 1000


def max_per_code(items: list[tuple[str, str]]) -> int:
    values = [value for key, value in items if key == "max"]
    if not values:
        return 1
    if len(values) > 1 or not values[0].isdigit() or int(values[0]) < 1:
        raise SearchError("max must be one positive integer", "max")
    return int(values[0])


def _int_parameter(items: list[tuple[str, str]], name: str, default: int) -> int:
    values = [value for key, value in items if key == name]
    if not values:
        return default
    if len(values) > 1 or not values[0].isdigit():
        raise SearchError(f"{name} must be one non-negative integer", name)
    return int(values[0])


def patients_of(items: list[tuple[str, str]], compartment: tuple[str, str] | None) -> list[str]:
    """The patients the request names (`patient`, `subject` as Patient, the compartment)."""
    found: list[str] = []
    if compartment is not None and compartment[0] == "Patient":
        found.append(compartment[1])
    for key, value in items:
        name = key.split(":")[0]
        if name not in ("patient", "subject") or "." in key:
            continue
        for part in value.split(","):
            part = part.rsplit("/_history", 1)[0]
            if part.startswith("Patient/") or (name == "patient" and "/" not in part):
                found.append(part.rsplit("/", 1)[-1])
            else:
                raise SearchError(
                    "$lastn needs its subjects as Patient references (Patient/123)", name
                )
    return list(dict.fromkeys(found))


def effective_key(raw: bytes) -> str:
    resource = jsonio.loads(raw)
    period = resource.get("effectivePeriod") or {}
    return (
        resource.get("effectiveDateTime")
        or resource.get("effectiveInstant")
        or period.get("end")
        or period.get("start")
        or ""
    )


def newest_of_code(
    search: SearchService,
    criteria: list[tuple[str, str]],
    code: tuple[str, str],
    count: int,
    keep: int,
    strict: bool,
    compartment: tuple[str, str] | None,
) -> tuple[list[Any], list[Any], Any]:
    """(the newest `keep` matches, their includes, the query) for one code."""
    token = f"{code[0]}|{code[1]}" if code[0] else f"|{code[1]}"
    by_code = [*criteria, ("code", token)]
    if count > RARE_CODE:
        query = search.parse("Observation", [*by_code, ("_sort", "-date")], strict, compartment)
        page = search.storage.search(query, keep, None)
        return list(page.matches), list(page.included), query
    query = search.parse("Observation", by_code, strict, compartment)
    page = search.storage.search(query, count + 1, None)
    # newest first by the date text, which sorts as time when offsets agree; the search
    # engine's own order decides ties and mixed offsets in the sorted branch
    matches = sorted(page.matches, key=lambda s: effective_key(s.json), reverse=True)
    kept = matches[:keep]
    ids = {m.id for m in kept}
    included = [i for i in page.included if i.resource_type != "Observation" or i.id not in ids]
    return kept, included, query


def lastn(
    search: SearchService,
    items: list[tuple[str, str]],
    base_url: str,
    strict: bool,
    compartment: tuple[str, str] | None = None,
    catalogue: Any = None,
    page_size: int = 50,
) -> dict[str, Any]:
    """A searchset Bundle of the newest `max` Observations per code (one page)."""
    keep = max_per_code(items)
    names = {key.split(":")[0].split(".")[0] for key, _ in items}
    if compartment is None and not names & {"patient", "subject"}:
        raise SearchError("$lastn needs a patient or subject", "patient")
    if not names & {"category", "code"}:
        raise SearchError("$lastn needs a category or a code", "category")
    count = min(_int_parameter(items, "_count", page_size), MAX_PAGE)
    offset = _int_parameter(items, "_lastn_offset", 0)
    criteria = [(k, v) for k, v in items if k not in OWN_PARAMETERS]
    codes: dict[tuple[str, str], int] = {}
    for patient in patients_of(items, compartment):
        for code, n in catalogue.code_counts(patient).items():
            codes[code] = codes.get(code, 0) + n
    groups: list[Any] = []
    included: dict[tuple[str, str], Any] = {}
    shaping = None
    for code in sorted(codes):
        kept, extra, query = newest_of_code(
            search, criteria, code, codes[code], keep, strict, compartment
        )
        shaping = query.result
        groups += kept
        for stored in extra:
            included.setdefault((stored.resource_type, stored.id), stored)
    page = groups[offset : offset + count] if count else []
    entries = [
        {
            "fullUrl": f"{base_url}/Observation/{stored.id}",
            "resource": shape_resource("Observation", stored.json, shaping),
            "search": {"mode": "match"},
        }
        for stored in page
    ]
    shown = {("Observation", s.id) for s in page}
    entries += [
        {
            "fullUrl": f"{base_url}/{s.resource_type}/{s.id}",
            "resource": jsonio.loads(s.json),
            "search": {"mode": "include"},
        }
        for key, s in included.items()
        if key not in shown and s.json is not None and _includes_page(s, page)
    ]
    path = (
        f"{base_url}/{compartment[0]}/{compartment[1]}/Observation/$lastn"
        if compartment
        else f"{base_url}/Observation/$lastn"
    )
    own = [(k, v) for k, v in items if k not in ("_lastn_offset",)]
    links = [{"relation": "self", "url": _url(path, [*own, ("_lastn_offset", str(offset))])}]
    if offset + count < len(groups):
        links.append(
            {"relation": "next", "url": _url(path, [*own, ("_lastn_offset", str(offset + count))])}
        )
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(groups),
        "link": links,
        "entry": entries,
    }


def _includes_page(included: Any, page: list[Any]) -> bool:
    """An included resource is kept when a match of this page refers to it."""
    target = f"{included.resource_type}/{included.id}".encode()
    return any(stored.json is not None and target in stored.json for stored in page)


def _url(path: str, items: list[tuple[str, str]]) -> str:
    return path + ("?" + urlencode(items) if items else "")
