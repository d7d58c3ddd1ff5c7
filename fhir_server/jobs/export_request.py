"""The parameters of a Bulk Data `$export` kick-off (Bulk Data Access IG 2.0), checked
before the job is accepted: what an export asks for, as plain JSON the job keeps (so that
a re-run after a restart does exactly the same export).

GET takes them from the URL; POST from a `Parameters` body (where `patient` may name the
patients of a Patient- or Group-level export). Unsupported values are a 400 unless the
client asked for lenient handling (`Prefer: handling=lenient`), which ignores them.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from fhir_server.model.outcome import FhirError, Issue, error
from fhir_server.model.resource_types import is_resource_type, is_valid_id
from fhir_server.search.compartment import compartment_resource_types
from fhir_server.search.dates import InvalidDate, parse_date_period
from fhir_server.search.errors import SearchError
from fhir_server.search.lookup import ParamLookup
from fhir_server.search.query import parse_search

NDJSON_FORMATS = ("application/fhir+ndjson", "application/ndjson", "ndjson")
SYSTEM, PATIENT, GROUP = "system", "patient", "group"
KNOWN_PARAMS = frozenset(
    {"_outputFormat", "_since", "_type", "_elements", "patient", "includeAssociatedData",
     "_typeFilter"}
)
_ELEMENT = re.compile(r"(?:([A-Z][A-Za-z]+)\.)?([a-z][A-Za-z0-9]*)")
# _typeFilter parameters that select nothing (paging, sorting, includes): refused.
NOT_FILTERS = ("_count", "_sort", "_include", "_revinclude", "_summary", "_elements",
               "_total", "_contained", "_containedType", "_cursor")


@dataclass(frozen=True)
class ExportRequest:
    level: str
    group_id: str | None = None
    types: list[str] | None = None
    since: str | None = None
    type_filters: dict[str, list[str]] = field(default_factory=dict)
    elements: list[str] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)
    transaction_time: float = 0.0
    ignored: list[str] = field(default_factory=list)  # lenient handling: what was ignored

    def to_params(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ExportRequest:
        return cls(**params)

    @property
    def since_epoch(self) -> float | None:
        return parse_date_period(self.since).low if self.since else None

    def elements_for(self, resource_type: str) -> list[str]:
        """The `_elements` that apply to `resource_type` (`name` or `Type.name`)."""
        found = []
        for item in self.elements:
            match = _ELEMENT.fullmatch(item)
            if match and match.group(1) in (None, resource_type):
                found.append(match.group(2))
        return found


def patient_types() -> tuple[str, ...]:
    """Types a Patient- or Group-level export holds: Patient and its compartment's types."""
    return tuple(sorted({"Patient", *compartment_resource_types("Patient")}))


def parse_export_request(
    level: str,
    items: list[tuple[str, str]],
    registry: ParamLookup,
    lenient: bool,
    group_id: str | None = None,
) -> ExportRequest:
    """`items`: the query's parameters, or a POST body's Parameters as (name, value)."""
    ignored: list[str] = []

    def refuse(message: str, where: str) -> None:
        if not lenient:
            raise error(400, "not-supported", message, where)
        ignored.append(message)

    for name, _ in items:
        if name not in KNOWN_PARAMS:
            refuse(f"{name} is not a parameter of $export", name)
    formats = [v for k, v in items if k == "_outputFormat"]
    for fmt in formats:
        if fmt.strip().lower() not in NDJSON_FORMATS:
            raise error(400, "not-supported",
                        f"_outputFormat={fmt}: only application/fhir+ndjson is produced",
                        "_outputFormat")
    allowed = patient_types() if level != SYSTEM else None
    types: list[str] | None = None
    wanted = [t.strip() for k, v in items if k == "_type" for t in v.split(",") if t.strip()]
    if wanted:
        types = []
        for rtype in dict.fromkeys(wanted):
            if not is_resource_type(rtype):
                refuse(f"_type: {rtype} is not a FHIR R4 resource type", "_type")
            elif allowed is not None and rtype not in allowed:
                refuse(f"_type: {rtype} is not in the Patient compartment, which a "
                       f"{level}-level export holds", "_type")
            else:
                types.append(rtype)
        if not types:
            raise error(400, "invalid", "_type names no type that can be exported", "_type")
    since = _since([v for k, v in items if k == "_since"])
    filters = _type_filters([v for k, v in items if k == "_typeFilter"], types, registry,
                            refuse)
    elements = [e.strip() for k, v in items if k == "_elements" for e in v.split(",")
                if e.strip()]
    for item in elements:
        match = _ELEMENT.fullmatch(item)
        if match is None or (match.group(1) and not is_resource_type(match.group(1))):
            raise error(400, "invalid", f"_elements: {item!r} is not [type.]element",
                        "_elements")
    patients = [v for k, v in items if k == "patient"]
    if patients and level == SYSTEM:
        raise error(400, "not-supported",
                    "patient applies to Patient- and Group-level exports only", "patient")
    for value in patients:
        if not is_valid_id(value):
            raise error(400, "invalid", f"patient: {value!r} is not a Patient reference",
                        "patient")
    for value in (v for k, v in items if k == "includeAssociatedData"):
        refuse(f"includeAssociatedData={value} is not supported (no Provenance is "
               "associated with exported resources here)", "includeAssociatedData")
    return ExportRequest(
        level=level,
        group_id=group_id,
        types=types,
        since=since,
        type_filters=filters,
        elements=elements,
        patients=list(dict.fromkeys(patients)),
        transaction_time=round(time.time() * 1000) / 1000,
        ignored=ignored,
    )


def items_from_parameters(body: Any) -> list[tuple[str, str]]:
    """A POST kick-off's `Parameters` as (name, value) pairs; `patient` references become
    patient ids."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise error(400, "invalid", "The body of a POST $export must be a Parameters resource")
    items = []
    for index, parameter in enumerate(body.get("parameter") or []):
        where = f"Parameters.parameter[{index}]"
        if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str):
            raise error(400, "invalid", f"{where} has no name", where)
        name = parameter["name"]
        if name == "patient":
            reference = (parameter.get("valueReference") or {}).get("reference")
            if not isinstance(reference, str) or not reference.startswith("Patient/"):
                raise error(400, "invalid", f"{where}: patient needs a valueReference to a "
                            "Patient", where)
            items.append((name, reference.removeprefix("Patient/")))
            continue
        values = [v for k, v in parameter.items() if k.startswith("value")]
        if len(values) != 1 or not isinstance(values[0], str | int | bool):
            raise error(400, "invalid", f"{where} ({name}) needs one primitive value", where)
        value = values[0]
        items.append((name, str(value).lower() if isinstance(value, bool) else str(value)))
    return items


def _since(values: list[str]) -> str | None:
    if not values:
        return None
    if len(values) > 1:
        raise error(400, "invalid", "_since is given more than once", "_since")
    try:
        parse_date_period(values[0])
    except InvalidDate:
        raise error(400, "invalid", f"_since={values[0]} is not a FHIR instant",
                    "_since") from None
    if "T" not in values[0]:
        raise error(400, "invalid", f"_since={values[0]} must be an instant (with a time and "
                    "time zone)", "_since")
    return values[0]


def _type_filters(
    values: list[str], types: list[str] | None, registry: ParamLookup, refuse: Any
) -> dict[str, list[str]]:
    """`Type?query` per type (several for one type are ORed), each checked by parsing it
    as the search it is: a filter that cannot be applied in full is refused."""
    filters: dict[str, list[str]] = {}
    for value in values:
        rtype, mark, query = value.partition("?")
        if not mark or not is_resource_type(rtype):
            raise error(400, "invalid", f"_typeFilter={value} is not Type?search",
                        "_typeFilter")
        if types is not None and rtype not in types:
            refuse(f"_typeFilter={value}: {rtype} is not among _type", "_typeFilter")
            continue
        try:
            filter_query(rtype, query, registry)
        except SearchError as exc:
            raise FhirError(400, [Issue("error", exc.code, f"_typeFilter={value}: {exc}",
                                        ("_typeFilter",))]) from None
        filters.setdefault(rtype, []).append(query)
    return filters


def filter_query(resource_type: str, query: str, registry: ParamLookup) -> Any:
    """The parsed clauses of one `_typeFilter` query (strict: nothing ignored)."""
    items = parse_qsl(query, keep_blank_values=True)
    bad = [k for k, _ in items if k.split(":")[0] in NOT_FILTERS]
    if bad:
        raise SearchError(f"{bad[0]} selects no resource", bad[0])
    parsed = parse_search(resource_type, items, registry, True)
    if not parsed.clauses:
        raise SearchError("no search parameter given")
    return parsed.clauses
