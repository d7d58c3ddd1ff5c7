"""FreeStyle Libre exports (LibreView web, LibreLink app, and the older reader software).

Shape: an optional preamble (one line `Glucose Data,Generated on,...`, or two lines for the
reader software: `Patient report,...` then the patient's name), then a header such as
`Device,Serial Number,Device Timestamp,Record Type,Historic Glucose mg/dL,...` (LibreView)
or `Meter Timestamp,Record Type,Historic Glucose(mg/dL),...` (reader software, no serial).

Record types and what becomes of them:
- 0 historic glucose (every 15 min) and 1 scan glucose -> CGMSensorReading (99504-3 mg/dL,
  105272-9 mmol/L). The value is taken from the record type's own column, else from the
  other one (the reader-software sample has type-1 rows with the value under Historic).
- 2 strip glucose (the built-in meter) -> BloodGlucose (41653-7 mg/dL, 14743-9 mmol/L).
- 3 ketone (strip, mmol/L) -> an Observation 53060-9 (3-hydroxybutyrate), no profile.
- 4 insulin -> a MedicationAdministration per dose: `Rapid-Acting Insulin (units)` of
  rapid-acting insulin, `Long-Acting Insulin (units)` of long-acting insulin; a dose ticked
  in a `Non-numeric ...` column without units is recorded without a dose.
- 5 food -> carbohydrates (`Carbohydrates (grams)`, or servings times `Grams of Carbs per
  Serving` in the reader software's export) as a carbohydrate-intake Observation; a meal
  logged without an amount (servings only, or `Non-numeric Food`) as a "Food" event.
- 6 notes -> a "Note" event with the text; without text (a time change) skipped.
(See mappers/treatments.py for the resources.) The device's measuring range is
40-500 mg/dL (2.2-27.8 mmol/L); `LO`/`HI` become `<`/`>`.
"""

from __future__ import annotations

from collections.abc import Callable

from mappers.treatments import LONG, RAPID

from . import logged
from .common import Collector, EventTemplate, Options, ReadingTemplate
from .resources import (
    CGM,
    KETONE,
    METER,
    MG_DL,
    MMOL_L,
    UCUM,
    Analyte,
    DeviceInfo,
    patient_key,
    unit_in,
)
from .table import Table, picker
from .timestamps import TimestampReader
from .values import OUT_OF_RANGE_WORDS, parse_number

NAME = "freestyle-libre"
_LIMITS = {MG_DL: {"<": 40, ">": 500}, "mmol/L": {"<": 2.2, ">": 27.8}}
_LOGGED_TYPES = frozenset({"4", "5", "6"})


def is_header(cells: list[str]) -> bool:
    lowered = [c.lower() for c in cells]
    return (
        "record type" in lowered
        and ("device timestamp" in lowered or "meter timestamp" in lowered)
        and any(c.startswith("historic glucose") for c in lowered)
    )


def _cell(cells: list[str], index: int | None) -> str:
    if index is None or index >= len(cells):
        return ""
    return cells[index].strip()


def _value(text: str, unit: str, limits: bool = True) -> tuple[int | float, str | None]:
    if text.isdecimal():
        return int(text), None
    word = OUT_OF_RANGE_WORDS.get(text.strip().lower())
    if word and limits and unit in _LIMITS:
        return _LIMITS[unit][word], word
    return parse_number(text), None


def map_rows(table: Table, options: Options, out: Collector) -> None:
    col = table.column
    time_col = col("Device Timestamp", "Meter Timestamp")
    type_col = col("Record Type")
    historic_col = col("Historic Glucose", prefix=True)
    scan_col = col("Scan Glucose", prefix=True)
    strip_col = col("Strip Glucose", prefix=True)
    ketone_col = col("Ketone", prefix=True)
    device_col = col("Device")
    serial_col = col("Serial Number")
    logged_cols = {
        name: col(header)
        for name, header in (
            ("rapid", "Rapid-Acting Insulin (units)"),
            ("rapid_flag", "Non-numeric Rapid-Acting Insulin"),
            ("long", "Long-Acting Insulin (units)"),
            ("long_flag", "Non-numeric Long-Acting Insulin"),
            ("grams", "Carbohydrates (grams)"),
            ("servings", "Carbohydrates (servings)"),
            ("per_serving", "Grams of Carbs per Serving"),
            ("food_flag", "Non-numeric Food"),
            ("notes", "Notes"),
        )
    }
    unit = unit_in(table.header[historic_col]) if historic_col is not None else None
    unit = unit or MG_DL
    strip_unit = (unit_in(table.header[strip_col]) if strip_col is not None else None) or unit
    patient = options.patient or ""

    dayfirst = options.dayfirst_for([_cell(cells, time_col) for _, cells in table.rows])
    read_time = TimestampReader(dayfirst=dayfirst, zone=options.zone).read
    devices: dict[tuple[str, str], DeviceInfo] = {}
    # One template per (device name, serial, record type): rows of a file mostly share one.
    templates: dict[tuple[str, str, str], ReadingTemplate] = {}

    def device_of(name: str, serial: str) -> DeviceInfo:
        found = devices.get((name, serial))
        if found is None:
            found = DeviceInfo(
                vendor="abbott",
                serial=serial or None,
                name=name,
                manufacturer="Abbott",
                kind="Continuous glucose monitoring system",
                key=f"{NAME}:{patient_key(patient)}",
            )
            devices[(name, serial)] = found
        return found

    def template_of(cell_name: str, cell_serial: str, record_type: str) -> ReadingTemplate:
        found = templates.get((cell_name, cell_serial, record_type))
        if found is None:
            name = cell_name.strip() or "FreeStyle Libre"
            serial = cell_serial.strip()
            analyte, kind = _ANALYTE_OF[record_type](unit, strip_unit)
            found = ReadingTemplate.of_analyte(analyte, patient, kind, device_of(name, serial))
            templates[(cell_name, cell_serial, record_type)] = found
        return found

    event_templates: dict[tuple[str, str, str], EventTemplate] = {}

    def event_template_of(cell_name: str, cell_serial: str, what: str) -> EventTemplate:
        found = event_templates.get((cell_name, cell_serial, what))
        if found is None:
            source = device_of(cell_name.strip() or "FreeStyle Libre", cell_serial.strip())
            if what in (RAPID, LONG):
                found = logged.insulin(what, patient, source)
            elif what == "carbs":
                found = logged.carbohydrates(patient, source)
            else:
                found = logged.event(what, patient, source)
            event_templates[(cell_name, cell_serial, what)] = found
        return found

    def logged_row(row: int, record_type: str, time_text: str, cells: list[str],
                   name: str, serial: str) -> None:
        try:
            stamp = read_time(time_text)
        except ValueError as exc:
            out.reject(row, f"bad timestamp: {exc}")
            return
        cell = {key: _cell(cells, index) for key, index in logged_cols.items()}
        kept = 0
        try:
            if record_type == "4":
                for kind in (RAPID, LONG):
                    if cell[kind]:
                        dose = parse_number(cell[kind])
                        out.add_event(row, stamp, event_template_of(name, serial, kind),
                                      (dose, None))
                        kept += 1
                    elif cell[f"{kind}_flag"]:
                        out.add_event(row, stamp, event_template_of(name, serial, kind),
                                      (None, "dose logged without a number"))
                        kept += 1
            elif record_type == "5":
                grams = parse_number(cell["grams"]) if cell["grams"] else None
                if grams is None and cell["servings"] and cell["per_serving"]:
                    grams = parse_number(cell["servings"]) * parse_number(cell["per_serving"])
                if grams is not None:
                    out.add_event(row, stamp, event_template_of(name, serial, "carbs"), grams)
                    kept += 1
                elif cell["servings"] or cell["food_flag"]:
                    text = f"{cell['servings']} serving(s)" if cell["servings"] else None
                    out.add_event(row, stamp, event_template_of(name, serial, "Food"), text)
                    kept += 1
            elif cell["notes"]:
                out.add_event(row, stamp, event_template_of(name, serial, "Note"),
                              cell["notes"])
                kept += 1
        except ValueError as exc:
            out.reject(row, f"record type {record_type}: {exc}")
            return
        if not kept:
            what = {"4": "insulin entry without a dose",
                    "5": "food entry without an amount"}.get(record_type,
                                                             "time change or empty note")
            out.skip(row, f"record type {record_type}: {what}")

    # Cells as read: each is stripped where it is used (most are used once).
    pick = picker((type_col, time_col, historic_col, scan_col, strip_col, ketone_col,
                   device_col, serial_col))
    for row, cells in table.rows:
        record_type, time_text, historic, scan, strip, ketone, name, serial = pick(cells)
        record_type = record_type.strip()
        if record_type in _LOGGED_TYPES:
            logged_row(row, record_type, time_text, cells, name, serial)
            continue
        if record_type not in _ANALYTE_OF:
            out.reject(row, f"unknown record type {record_type[:20]!r}")
            continue
        try:
            stamp = read_time(time_text)  # strips
        except ValueError as exc:
            out.reject(row, f"bad timestamp: {exc}")
            continue
        if record_type == "0":
            text, value_unit = historic.strip() or scan.strip(), unit
        elif record_type == "1":
            text, value_unit = scan.strip() or historic.strip(), unit
        elif record_type == "2":
            text, value_unit = strip.strip(), strip_unit
        else:
            text, value_unit = ketone.strip(), MMOL_L
        if not text:
            out.reject(row, f"record type {record_type} without a value")
            continue
        try:
            value, comparator = _value(text, value_unit, limits=record_type != "3")
        except ValueError as exc:
            out.reject(row, str(exc))
            continue
        if comparator:
            quantity = {"value": value, "comparator": comparator, "unit": value_unit,
                        "system": UCUM, "code": value_unit}
        else:
            quantity = {"value": value, "unit": value_unit, "system": UCUM, "code": value_unit}
        out.add(row, stamp, template_of(name, serial, record_type),
                        {"valueQuantity": quantity})


# Record type -> (analyte, reading kind), given the file's glucose and strip units.
_ANALYTE_OF: dict[str, Callable[[str, str], tuple[Analyte, str]]] = {
    "0": lambda unit, strip_unit: (CGM[unit], "historic"),
    "1": lambda unit, strip_unit: (CGM[unit], "scan"),
    "2": lambda unit, strip_unit: (METER[strip_unit], "strip"),
    "3": lambda unit, strip_unit: (KETONE, "ketone"),
}
