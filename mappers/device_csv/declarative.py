"""Declarative mappings: a small JSON document that says which column holds what.

```json
{
  "name": "levels",
  "header": ["Time (UTC)", "Glucose Reading (mg/dL)"],
  "columns": {"date": "Time (UTC)", "value": "Glucose Reading (mg/dL)"},
  "constants": {"code": "99504-3", "system": "http://loinc.org", "unit": "mg/dL"},
  "device": {"vendor": "levels", "name": "Levels", "kind": "Continuous glucose monitor"}
}
```

Fields (each taken from `columns` (a header name) or `constants` (a fixed value)):
`date` and `value` (required), `code` (required), `system`, `display`, `unit`,
`patient_identifier`, `patient_identifier_system`, `device_serial`, `value_system`,
`value_display`, `row_key` (a per-row id such as a result or specimen number: it joins the
Observation identifier, for files where one patient has several results of one code at the
same instant).
Options: `header` (the header cells that identify the header row; default: every column
named), `delimiter`, `decimal_separator` (`.` or `,`), `date_format` (strptime), `dayfirst`,
`timezone` (used when the caller gives none), `value_type` (`quantity` (default), `coded`,
`string`, `auto`), `patterns` ({field: regex with one group} to cut a value out of a cell),
`profile` (a Diatabase profile name; by default implied by the code: glucose, CGM, HbA1c),
`category` (default `laboratory`), `optional` (columns that may be absent from the header:
the field is then empty, e.g. `patient_identifier` in the generic lab format),
`out_of_range` ({"low": 40, "high": 400}: the value of `Low` / `High` cells),
`device` ({vendor, name, manufacturer, kind, serial}).
Without `patient_identifier` every row belongs to the Patient given to `to_bundle`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Any

from .common import Collector, Options, PatientIdentity, ReadingTemplate
from .errors import CsvMappingError
from .resources import (
    LOINC,
    PROFILE_BY_CODE,
    UCUM,
    DeviceInfo,
    patient_key,
    ucum_unit,
)
from .table import Table
from .timestamps import TimestampReader
from .values import OUT_OF_RANGE_WORDS, parse_number

FIELDS = (
    "date", "value", "code", "system", "display", "unit", "patient_identifier",
    "patient_identifier_system", "device_serial", "value_system", "value_display", "row_key",
)
VALUE_TYPES = ("quantity", "coded", "string", "auto")


@dataclass(frozen=True)
class Mapping:
    name: str
    header: tuple[str, ...]
    columns: dict[str, str]
    constants: dict[str, str]
    patterns: dict[str, re.Pattern[str]]
    delimiter: str | None
    decimal_separator: str | None
    date_format: str | None
    dayfirst: bool | None
    timezone: str | None
    value_type: str
    profile: str | None
    category: str | None
    out_of_range: dict[str, float]
    device: dict[str, str] | None
    optional: frozenset[str] = frozenset()

    def is_header(self, cells: list[str]) -> bool:
        present = {cell.strip().lower() for cell in cells}
        return all(name.lower() in present for name in self.header)


def _strings(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise CsvMappingError(f"mapping: {what} must be an object of strings")
    unknown = set(value) - set(FIELDS)
    if unknown and what in ("columns", "constants", "patterns"):
        raise CsvMappingError(f"mapping: unknown {what} field(s): {sorted(unknown)}")
    return dict(value)


def load_mapping(spec: Any) -> Mapping:
    """Validate a mapping document; raise CsvMappingError saying what is wrong."""
    if not isinstance(spec, dict):
        raise CsvMappingError("mapping must be a JSON object")
    columns = _strings(spec.get("columns"), "columns")
    constants = _strings(spec.get("constants"), "constants")
    for required in ("date", "value", "code"):
        if required not in columns and required not in constants:
            raise CsvMappingError(f"mapping: no column or constant for {required!r}")
    try:
        patterns = {k: re.compile(v) for k, v in _strings(spec.get("patterns"), "patterns").items()}
    except re.error as exc:
        raise CsvMappingError(f"mapping: bad pattern: {exc}") from None
    optional = spec.get("optional") or []
    if not isinstance(optional, list) or not all(isinstance(o, str) for o in optional):
        raise CsvMappingError("mapping: optional must be a list of column names")
    header = spec.get("header") or sorted(set(columns.values()) - set(optional))
    if not isinstance(header, list) or not all(isinstance(h, str) for h in header):
        raise CsvMappingError("mapping: header must be a list of column names")
    value_type = spec.get("value_type", "quantity")
    if value_type not in VALUE_TYPES:
        raise CsvMappingError(f"mapping: value_type must be one of {VALUE_TYPES}")
    decimal = spec.get("decimal_separator")
    if decimal not in (None, ".", ","):
        raise CsvMappingError("mapping: decimal_separator must be '.' or ','")
    delimiter = spec.get("delimiter")
    if delimiter is not None and (not isinstance(delimiter, str) or len(delimiter) != 1):
        raise CsvMappingError("mapping: delimiter must be one character")
    dayfirst = spec.get("dayfirst")
    if dayfirst not in (None, True, False):
        raise CsvMappingError("mapping: dayfirst must be true or false")
    out_of_range = spec.get("out_of_range") or {}
    if not isinstance(out_of_range, dict) or not all(
        k in ("low", "high") and isinstance(v, int | float) for k, v in out_of_range.items()
    ):
        raise CsvMappingError("mapping: out_of_range must be {\"low\": n, \"high\": n}")
    device = spec.get("device")
    if device is not None and not (
        isinstance(device, dict) and all(isinstance(v, str) for v in device.values())
    ):
        raise CsvMappingError("mapping: device must be an object of strings")
    for key in ("name", "date_format", "timezone", "profile", "category"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise CsvMappingError(f"mapping: {key} must be a string")
    return Mapping(
        name=spec.get("name") or "mapping",
        header=tuple(header),
        columns=columns,
        constants=constants,
        patterns=patterns,
        delimiter=delimiter,
        decimal_separator=decimal,
        date_format=spec.get("date_format"),
        dayfirst=dayfirst,
        timezone=spec.get("timezone"),
        value_type=value_type,
        profile=spec.get("profile"),
        category=spec.get("category", "laboratory"),
        out_of_range={"<" if k == "low" else ">": v for k, v in out_of_range.items()},
        device=device,
        optional=frozenset(o.lower() for o in optional),
    )


class _Row:
    """Field access for one row: column (cut by its pattern) or constant."""

    def __init__(self, mapping: Mapping, indexes: dict[str, int], cells: list[str]):
        self.mapping, self.indexes, self.cells = mapping, indexes, cells

    def get(self, field: str) -> str:
        index = self.indexes.get(field)
        if index is None:
            return self.mapping.constants.get(field, "")
        text = self.cells[index].strip() if index < len(self.cells) else ""
        pattern = self.mapping.patterns.get(field)
        if pattern is not None and text:
            match = pattern.search(text)
            text = (match.group(1) if match and match.groups() else "") if match else ""
        return text.strip()


def _value(mapping: Mapping, row: _Row) -> dict[str, Any]:
    text = row.get("value")
    if not text:
        raise ValueError("empty value")
    kind = mapping.value_type
    if kind == "coded":
        coding = {"code": text}
        if row.get("value_system"):
            coding = {"system": row.get("value_system"), "code": text}
        if row.get("value_display"):
            coding["display"] = row.get("value_display")
        return {"valueCodeableConcept": {"coding": [coding]}}
    if kind == "string":
        return {"valueString": text}
    comparator = OUT_OF_RANGE_WORDS.get(text.lower())
    if comparator and comparator in mapping.out_of_range:
        number: int | float = mapping.out_of_range[comparator]
    else:
        comparator = None
        try:
            number = parse_number(text, mapping.decimal_separator)
        except ValueError:
            if kind == "auto":
                return {"valueString": text}
            raise
    quantity: dict[str, Any] = {"value": number}
    if comparator:
        quantity["comparator"] = comparator
    unit = row.get("unit")
    if unit:
        code = ucum_unit(unit)
        quantity.update({"unit": unit, "system": UCUM, "code": code})
    return {"valueQuantity": quantity}


def map_rows(mapping: Mapping, table: Table, options: Options, out: Collector) -> None:
    indexes: dict[str, int] = {}
    for field, column in mapping.columns.items():
        index = table.column(column)
        if index is None and column.lower() in mapping.optional:
            continue
        if index is None:
            raise CsvMappingError(f"mapping {mapping.name}: no column {column!r} in the header")
        indexes[field] = index
    has_patient_column = "patient_identifier" in indexes or bool(
        mapping.constants.get("patient_identifier")
    )
    if not has_patient_column and not options.patient:
        raise CsvMappingError(
            f"mapping {mapping.name}: give a patient (the file names none)"
        )
    dates = [_Row(mapping, indexes, cells).get("date") for _, cells in table.rows]
    dayfirst = mapping.dayfirst if mapping.dayfirst is not None else options.dayfirst_for(dates)
    read_time = TimestampReader(
        dayfirst=dayfirst, zone=options.zone, date_format=mapping.date_format
    ).read
    devices: dict[tuple[str, str], DeviceInfo] = {}
    # Rows with the same code, patient, key and device share one template.
    templates: dict[tuple[Any, ...], ReadingTemplate] = {}

    for (row_number, cells), date_text in zip(table.rows, dates, strict=True):
        row = _Row(mapping, indexes, cells)
        try:
            stamp = read_time(date_text)
        except ValueError as exc:
            out.reject(row_number, f"bad date: {exc}")
            continue
        code = row.get("code")
        if not code:
            out.reject(row_number, "no code")
            continue
        try:
            value = _value(mapping, row)
        except ValueError as exc:
            out.reject(row_number, str(exc))
            continue
        if has_patient_column:
            identifier = row.get("patient_identifier")
            if not identifier:
                out.reject(row_number, "no patient identifier")
                continue
            subject: str | PatientIdentity = PatientIdentity(
                row.get("patient_identifier_system") or None, identifier
            )
            subject_key = f"{subject.system}|{subject.value}"
        else:
            subject = subject_key = options.patient or ""
        system = row.get("system")
        display = row.get("display")
        device = None
        serial = row.get("device_serial")
        if mapping.device is not None or serial:
            spec = mapping.device or {}
            name = spec.get("name") or mapping.name
            device = devices.get((serial, subject_key))
            if device is None:
                device = DeviceInfo(
                    vendor=spec.get("vendor") or re.sub(r"[^a-z0-9-]", "-", name.lower()),
                    serial=serial or spec.get("serial") or None,
                    name=name,
                    manufacturer=spec.get("manufacturer"),
                    kind=spec.get("kind") or "Device",
                    key=f"{mapping.name}:{patient_key(subject_key)}",
                )
                devices[(serial, subject_key)] = device
        row_key = row.get("row_key")
        kind = f"csv-{row_key}" if row_key else "csv"
        shape = (system, code, display, subject, kind, device)
        template = templates.get(shape)
        if template is None:
            profile = mapping.profile or (PROFILE_BY_CODE.get(code) if system == LOINC else None)
            template = templates[shape] = ReadingTemplate(
                make_code=partial(_code, system, code, display),
                code_key=code,
                profile=profile,
                category=mapping.category,
                subject=subject,
                kind=kind,
                device=device,
            )
        out.add(row_number, stamp, template, value)


def _code(system: str, code: str, display: str) -> dict[str, Any]:
    coding = {"system": system, "code": code} if system else {"code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}
