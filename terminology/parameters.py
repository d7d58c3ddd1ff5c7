"""FHIR Parameters in and out of the terminology operations."""

from __future__ import annotations

from typing import Any

from terminology.errors import invalid

# value[x] types an operation input may use, with the Python type each must have.
_VALUE_TYPES: dict[str, type | tuple[type, ...]] = {
    "valueCode": str,
    "valueUri": str,
    "valueUrl": str,
    "valueCanonical": str,
    "valueString": str,
    "valueId": str,
    "valueDateTime": str,
    "valueDate": str,
    "valueBoolean": bool,
    "valueInteger": int,
    "valueUnsignedInt": int,
    "valuePositiveInt": int,
    "valueDecimal": (int, float),
    "valueCoding": dict,
    "valueCodeableConcept": dict,
}


def parse_parameters(body: Any) -> dict[str, Any]:
    """A Parameters resource as a flat dict name -> value.

    A name given once maps to its value; a name given several times (e.g. `property`)
    maps to the list of values. `resource` parameters give the resource dict and `part`
    parameters a nested dict built the same way. Anything malformed raises
    TerminologyError (invalid, 400).
    """
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise invalid("the request body must be a FHIR Parameters resource")
    params = body.get("parameter", [])
    if not isinstance(params, list):
        raise invalid("Parameters.parameter must be a list")
    out: dict[str, Any] = {}
    for index, param in enumerate(params):
        if not isinstance(param, dict):
            raise invalid(f"Parameters.parameter[{index}] must be an object")
        name = param.get("name")
        if not isinstance(name, str) or not name:
            raise invalid(f"Parameters.parameter[{index}] has no name")
        value = _value_of(param, f"Parameters.parameter[{index}]")
        if name in out:
            previous = out[name]
            out[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            out[name] = value
    return out


def _value_of(param: dict, where: str) -> Any:
    value_keys = [k for k in param if k.startswith("value")]
    has_resource = "resource" in param
    has_part = "part" in param
    if len(value_keys) + has_resource + has_part != 1:
        raise invalid(f"{where} must have exactly one of value[x], resource or part")
    if has_resource:
        resource = param["resource"]
        if not isinstance(resource, dict) or "resourceType" not in resource:
            raise invalid(f"{where}.resource must be a FHIR resource")
        return resource
    if has_part:
        return parse_parameters({"resourceType": "Parameters", "parameter": param["part"]})
    key = value_keys[0]
    expected = _VALUE_TYPES.get(key)
    if expected is None:
        raise invalid(f"{where}: {key} is not a supported parameter type")
    value = param[key]
    # bool is an int in Python: reject true/false where a number is expected.
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        raise invalid(f"{where}.{key} has the wrong JSON type")
    if key == "valueCoding":
        _check_coding(value, where)
    return value


def _check_coding(coding: dict, where: str) -> None:
    for field in ("system", "code", "display", "version"):
        if field in coding and not isinstance(coding[field], str):
            raise invalid(f"{where}.valueCoding.{field} must be a string")


def parameters(*entries: dict) -> dict:
    return {"resourceType": "Parameters", "parameter": [e for e in entries if e]}


def param(name: str, value: Any, kind: str | None = None) -> dict:
    """One Parameters.parameter; the value[x] type follows the Python type unless given."""
    if kind is None:
        if isinstance(value, bool):
            kind = "valueBoolean"
        elif isinstance(value, int):
            kind = "valueInteger"
        elif isinstance(value, dict):
            kind = "valueCoding"
        else:
            kind = "valueString"
    return {"name": name, kind: value}


def part(name: str, *parts: dict) -> dict:
    return {"name": name, "part": list(parts)}
