"""ViewDefinition as a resource type the server stores: its search parameters and the
check every write of one passes (beyond the structure, model/data/ViewDefinition.schema.json:
its FHIRPath parses, its constants and unionAll branches agree, its column names are
unique)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from fhir_server.analytics.viewdefinition import ViewDefinitionError, compile_view
from fhir_server.model.outcome import Issue

VIEW_TYPE = "ViewDefinition"


@cache
def _search_parameters() -> str:
    data = resources.files("fhir_server.analytics").joinpath(
        "data/viewdefinition-searchparameters.json"
    )
    return data.read_text()


def view_search_parameters() -> list[dict[str, Any]]:
    """url, name, status and resource, as SearchParameter resources (fresh copies)."""
    return json.loads(_search_parameters())


def check_view_definition(resource: dict[str, Any]) -> list[Issue]:
    if not isinstance(resource, dict) or resource.get("resourceType") != VIEW_TYPE:
        return []
    try:
        compile_view(resource)
    except ViewDefinitionError as exc:
        return [Issue("error", "invalid", f"ViewDefinition: {exc}", ("ViewDefinition",))]
    return []
