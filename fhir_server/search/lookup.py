"""How the query parser finds search parameters, without depending on the registry's code.

The registry (registry.py) satisfies `ParamLookup`; tests use small hand-made doubles.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from fhir_server.search.errors import SearchError
from fhir_server.search.types import SearchParam

# Parameters that apply to every resource type are looked up on this pseudo type when a
# system-level search names no _type.
ANY_RESOURCE = "Resource"


class ParamLookup(Protocol):
    def get(self, resource_type: str, code: str) -> SearchParam | None: ...


@runtime_checkable
class ParamUrlLookup(Protocol):
    """Optional: a registry that also finds parameters by canonical URL (for composites)."""

    def by_url(self, url: str) -> SearchParam | None: ...


def component_params(registry: ParamLookup, param: SearchParam) -> tuple[SearchParam, ...]:
    """The parameters a composite parameter is made of, in order.

    Components name their parameter by canonical URL. A registry that can look URLs up is
    asked directly; otherwise the code is read from the URL's last segment, which the R4
    definitions spell `<Base>-<code>` (".../SearchParameter/Observation-value-quantity",
    ".../SearchParameter/clinical-code").
    """
    found: list[SearchParam] = []
    for component in param.components:
        component_param = None
        if isinstance(registry, ParamUrlLookup):
            component_param = registry.by_url(component.definition)
        if component_param is None:
            last_segment = component.definition.rstrip("/").rsplit("/", 1)[-1]
            code = last_segment.split("-", 1)[1] if "-" in last_segment else last_segment
            component_param = registry.get(param.resource_type, code)
        if component_param is None:
            raise SearchError(
                f"composite parameter {param.code!r}: component {component.definition} is not"
                " a known search parameter",
                param.code,
            )
        found.append(component_param)
    return tuple(found)
