"""FHIR operation inputs -> TerminologyService calls.

The HTTP layer gives each function a flat dict of inputs: the query string of a GET
(all values are strings) or `parse_parameters(body)` of a POST (typed values,
`coding`/`valueSet` as dicts). Names follow the R4 operation definitions; the
functions accept both forms, coerce types, and raise TerminologyError on bad input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from terminology.errors import invalid
from terminology.service import TerminologyService


def _str(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, list):
        raise invalid(f"parameter '{name}' is given more than once")
    if not isinstance(value, str):
        raise invalid(f"parameter '{name}' must be a string")
    return value


def _int(params: Mapping[str, Any], name: str) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip().isdigit():
            raise invalid(f"parameter '{name}' must be a non-negative integer")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"parameter '{name}' must be an integer")
    return value


def _bool(params: Mapping[str, Any], name: str) -> bool:
    value = params.get(name)
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise invalid(f"parameter '{name}' must be true or false")


def _list(params: Mapping[str, Any], name: str) -> list[str] | None:
    value = params.get(name)
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in values:
        if not isinstance(item, str):
            raise invalid(f"parameter '{name}' must be codes")
        out.extend(part.strip() for part in item.split(",") if part.strip())
    return out


def _coding(params: Mapping[str, Any], name: str) -> dict | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid(f"parameter '{name}' must be a Coding")
    return value


def _system_code(
    params: Mapping[str, Any], system_name: str = "system", code_name: str = "code",
    coding_name: str = "coding",
) -> tuple[str | None, str | None, str | None, str | None]:
    """(system, code, version, display) from system+code or from a Coding; a
    CodeableConcept uses its first coding."""
    coding = _coding(params, coding_name)
    concept = params.get("codeableConcept")
    if coding is None and isinstance(concept, dict) and concept.get("coding"):
        coding = concept["coding"][0]
    if coding is not None:
        return coding.get("system"), coding.get("code"), coding.get("version"), \
            coding.get("display")
    return (_str(params, system_name), _str(params, code_name), _str(params, "version"),
            _str(params, "display"))


def lookup(service: TerminologyService, params: Mapping[str, Any]) -> dict:
    system, code, version, _ = _system_code(params)
    if not system or not code:
        raise invalid("$lookup needs system and code (or coding)")
    return service.lookup(system, code, version=version,
                          display_language=_str(params, "displayLanguage"),
                          properties=_list(params, "property"))


def code_system_validate_code(
    service: TerminologyService, params: Mapping[str, Any], system_url: str | None = None
) -> dict:
    """CodeSystem/$validate-code: the system is `url` (or `system`, or the instance's)."""
    system, code, version, display = _system_code(params)
    system = system_url or _str(params, "url") or system
    if not system or not code:
        raise invalid("CodeSystem/$validate-code needs url and code (or coding)")
    return service.validate_code(system, code, display=display, version=version)


def subsumes(service: TerminologyService, params: Mapping[str, Any]) -> dict:
    coding_a, coding_b = _coding(params, "codingA"), _coding(params, "codingB")
    system = _str(params, "system")
    code_a = coding_a.get("code") if coding_a else _str(params, "codeA")
    code_b = coding_b.get("code") if coding_b else _str(params, "codeB")
    if coding_a or coding_b:
        systems = {c.get("system") for c in (coding_a, coding_b) if c} | (
            {system} if system else set())
        if len(systems) != 1:
            raise invalid("$subsumes needs both codings in the same system")
        system = systems.pop()
    if not system or not code_a or not code_b:
        raise invalid("$subsumes needs system, codeA and codeB (or codingA and codingB)")
    return service.subsumes(system, code_a, code_b, version=_str(params, "version"))


def expand(
    service: TerminologyService, params: Mapping[str, Any], value_set_url: str | None = None
) -> dict:
    resource = params.get("valueSet")
    target: str | dict | None = value_set_url or _str(params, "url")
    if isinstance(resource, dict):
        target = resource
    if target is None:
        raise invalid("$expand needs url or valueSet")
    return service.expand(target, filter=_str(params, "filter"),
                          offset=_int(params, "offset") or 0, count=_int(params, "count"),
                          display_language=_str(params, "displayLanguage"))


def value_set_validate_code(
    service: TerminologyService, params: Mapping[str, Any], value_set_url: str | None = None
) -> dict:
    url = value_set_url or _str(params, "url")
    if not url:
        raise invalid("ValueSet/$validate-code needs the ValueSet url")
    system, code, _, display = _system_code(params)
    if not code:
        raise invalid("ValueSet/$validate-code needs code (or coding)")
    return service.validate_code_in_value_set(url, system, code, display=display)


def translate(
    service: TerminologyService, params: Mapping[str, Any], concept_map_url: str | None = None
) -> dict:
    system, code, _, _ = _system_code(params)
    # R4 names the wanted system `targetsystem`; `target` is a ValueSet there, but
    # clients often pass a system in it, so it is accepted as a fallback.
    target = _str(params, "targetsystem") or _str(params, "target")
    return service.translate(url=concept_map_url or _str(params, "url"), system=system,
                             code=code, target=target, reverse=_bool(params, "reverse"))
