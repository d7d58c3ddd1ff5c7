"""Which search parameters this server can actually answer (for the CapabilityStatement).

A parameter is listed only if a search on it works: `_text` and `_content` (the full-text
index), an indexable type with a FHIRPath expression (not `special`), and, for composites,
two components of which the first is a token and the second a token, quantity, date,
string or number (what the index tables hold).
"""

from __future__ import annotations

from fhir_server.search.fulltext import FULLTEXT_PARAMS
from fhir_server.search.lookup import ParamLookup
from fhir_server.search.query import SUPPORTED_TYPES
from fhir_server.search.types import SearchParam

COMPOSITE_SECOND = frozenset({"token", "quantity", "date", "string", "number"})


def is_supported(param: SearchParam, registry: ParamLookup, resource_type: str) -> bool:
    if param.code in FULLTEXT_PARAMS:
        return True
    if param.type not in SUPPORTED_TYPES or not param.expression:
        return False
    if param.type != "composite":
        return True
    by_url = getattr(registry, "by_url", None)
    if by_url is None or len(param.components) != 2:
        return False
    kinds = []
    for component in param.components:
        found = by_url(component.definition, resource_type)
        kinds.append(found.type if found is not None else None)
    return kinds[0] == "token" and kinds[1] in COMPOSITE_SECOND
