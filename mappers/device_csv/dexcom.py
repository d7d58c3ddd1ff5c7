"""Dexcom Clarity exports (G5, G6, G7; comma- or tab-separated, mg/dL or mmol/L).

Header: `Index,Timestamp (YYYY-MM-DDThh:mm:ss),Event Type,Event Subtype,Patient Info,
Device Info,Source Device ID,Glucose Value (mg/dL),...` and, in newer exports,
`Transmitter Time (Long Integer),Transmitter ID`. Before the readings come metadata rows
without timestamp (FirstName, LastName, DateOfBirth, Device, Alert settings): they are
skipped (names are never copied), except `Device`, which names the device model.

- EGV rows -> CGMSensorReading. `Low` / `High` are the sensor's limits: `< 40` / `> 400`
  mg/dL (`< 2.2` / `> 22.2` mmol/L).
- Calibration rows (a meter value typed into the receiver) -> BloodGlucose, with no device
  reference (the meter is not named).
- Insulin (`Insulin Value (u)`; subtype Fast-Acting or Long-Acting) -> MedicationAdministration;
  Carbs (`Carb Value (grams)`) -> carbohydrate intake; Exercise (subtype Light / Medium /
  Heavy, `Duration (hh:mm:ss)`) -> exercise duration; Health (Illness, Stress, High or Low
  Symptoms, Cycle, Alcohol) -> a "Health" event with the subtype (mappers/treatments.py).
- Alert and other events -> skipped with the reason.
The device serial is the Transmitter ID of the row when present, else the Source Device ID
of the `Device` metadata row.
"""

from __future__ import annotations

from mappers.treatments import LONG, RAPID, parse_duration_minutes

from . import logged
from .common import Collector, EventTemplate, Options, ReadingTemplate
from .localised import EVENT_TYPES
from .resources import (
    CGM,
    METER,
    MG_DL,
    MMOL_L,
    UCUM,
    DeviceInfo,
    patient_key,
    unit_in,
)
from .table import Table, picker
from .timestamps import TimestampReader
from .values import OUT_OF_RANGE_WORDS, parse_number

NAME = "dexcom-clarity"
_LIMITS = {MG_DL: {"<": 40, ">": 400}, MMOL_L: {"<": 2.2, ">": 22.2}}
_METADATA = {"firstname", "lastname", "dateofbirth", "device", "alert"}
_LOGGED_EVENTS = {"insulin": "insulin", "carbs": "carbs", "exercise": "exercise",
                  "health": "health"}


def is_header(cells: list[str]) -> bool:
    lowered = [c.lower() for c in cells]
    return (
        "event type" in lowered
        and any(c.startswith("timestamp") for c in lowered)
        and any(c.startswith("glucose value") for c in lowered)
    )


def _cell(cells: list[str], index: int | None) -> str:
    if index is None or index >= len(cells):
        return ""
    return cells[index].strip()


def _event_type(cell: str) -> str:
    """The English event type, lower-cased (French exports write `Étalonnage`...)."""
    lowered = cell.lower()
    return EVENT_TYPES.get(lowered, lowered)


def _guess_unit(table: Table, value_col: int | None) -> str:
    """A header without unit: mmol/L values never exceed about 35, mg/dL ones mostly do."""
    numbers = []
    for _, cells in table.rows:
        try:
            numbers.append(parse_number(_cell(cells, value_col)))
        except ValueError:
            continue
    return MMOL_L if numbers and max(numbers) < 35 else MG_DL


def map_rows(table: Table, options: Options, out: Collector) -> None:
    col = table.column
    time_col = col("Timestamp", prefix=True)
    event_col = col("Event Type")
    subtype_col = col("Event Subtype")
    info_col = col("Device Info")
    source_col = col("Source Device ID")
    value_col = col("Glucose Value", prefix=True)
    transmitter_col = col("Transmitter ID")
    insulin_col = col("Insulin Value", prefix=True)
    carb_col = col("Carb Value", prefix=True)
    duration_col = col("Duration", prefix=True)
    unit = unit_in(table.header[value_col]) if value_col is not None else None
    unit = unit or _guess_unit(table, value_col)
    patient = options.patient or ""

    model, receiver = "Dexcom CGM", ""
    for _, cells in table.rows:
        if _event_type(_cell(cells, event_col)) == "device":
            model = _cell(cells, info_col) or model
            receiver = _cell(cells, source_col)
            break
    dayfirst = options.dayfirst_for([_cell(cells, time_col) for _, cells in table.rows])
    read_time = TimestampReader(dayfirst=dayfirst, zone=options.zone).read
    devices: dict[str, DeviceInfo] = {}
    # EGV templates per Transmitter ID cell; calibration ones per subtype cell (no device).
    egv_templates: dict[str, ReadingTemplate] = {}
    calibration_templates: dict[str, ReadingTemplate] = {}
    key = f"{NAME}:{patient_key(patient)}"

    def egv_template(transmitter: str) -> ReadingTemplate:
        found = egv_templates.get(transmitter)  # the cell as read
        if found is None:
            serial = transmitter.strip() or receiver
            if serial not in devices:
                devices[serial] = DeviceInfo(
                    vendor="dexcom",
                    serial=serial or None,
                    name=model,
                    manufacturer="Dexcom",
                    kind="Continuous glucose monitoring system",
                    key=key,
                )
            analyte = CGM[unit]
            found = egv_templates[transmitter] = ReadingTemplate.of_analyte(
                analyte, patient, "egv", devices[serial]
            )
        return found

    def calibration_template(subtype: str) -> ReadingTemplate:
        found = calibration_templates.get(subtype)  # the cell as read
        if found is None:
            note = f"Dexcom {subtype.strip() or 'calibration'} entry"
            analyte = METER[unit]
            found = calibration_templates[subtype] = ReadingTemplate.of_analyte(
                analyte, patient, "calibration", note=note
            )
        return found

    event_templates: dict[str, EventTemplate] = {}

    def event_template(what: str, transmitter: str) -> EventTemplate:
        found = event_templates.get(what)
        if found is None:
            source = egv_template(transmitter).device
            if what in (RAPID, LONG):
                found = logged.insulin(what, patient, source)
            elif what == "carbs":
                found = logged.carbohydrates(patient, source)
            elif what == "exercise":
                found = logged.exercise(patient, source)
            else:
                found = logged.event(what, patient, source)
            event_templates[what] = found
        return found

    def logged_row(row: int, event: str, time_text: str, subtype: str, transmitter: str,
                   cells: list[str]) -> None:
        try:
            stamp = read_time(time_text)
        except ValueError as exc:
            out.reject(row, f"bad timestamp: {exc}")
            return
        try:
            if event == "insulin":
                text = _cell(cells, insulin_col)
                dose = parse_number(text) if text else None
                kind = LONG if subtype.lower().startswith(("long", "lente", "lent")) else RAPID
                note = None if dose is not None else "dose logged without a number"
                out.add_event(row, stamp, event_template(kind, transmitter), (dose, note))
            elif event == "carbs":
                text = _cell(cells, carb_col)
                if not text:
                    out.skip(row, "Carbs event without a value")
                    return
                out.add_event(row, stamp, event_template("carbs", transmitter),
                              parse_number(text))
            elif event == "exercise":
                minutes = parse_duration_minutes(_cell(cells, duration_col))
                out.add_event(row, stamp, event_template("exercise", transmitter),
                              (minutes, subtype or None))
            else:
                out.add_event(row, stamp, event_template("Health", transmitter),
                              subtype or None)
        except ValueError as exc:
            out.reject(row, f"{event} event: {exc}")

    limits = _LIMITS[unit]
    pick = picker((event_col, time_col, value_col, transmitter_col, subtype_col))
    for row, cells in table.rows:
        # Cells as read: each is stripped where it is used (most are used once).
        event, time_text, text, transmitter, subtype = pick(cells)
        event = event.strip()
        lowered = _event_type(event)
        if lowered in _METADATA and not time_text.strip():
            out.skip(row, f"metadata row ({event})")
            continue
        if lowered in _LOGGED_EVENTS:
            logged_row(row, _LOGGED_EVENTS[lowered], time_text, subtype.strip(), transmitter,
                       cells)
            continue
        if lowered not in ("egv", "calibration"):
            out.skip(row, f"event type {event[:30]!r} is not a glucose reading")
            continue
        try:
            stamp = read_time(time_text)  # strips
        except ValueError as exc:
            out.reject(row, f"bad timestamp: {exc}")
            continue
        text = text.strip()
        if not text:
            out.reject(row, f"{event} without a glucose value")
            continue
        comparator = OUT_OF_RANGE_WORDS.get(text.lower())
        try:
            value = limits[comparator] if comparator else parse_number(text)
        except ValueError as exc:
            out.reject(row, str(exc))
            continue
        if comparator:
            quantity = {"value": value, "comparator": comparator, "unit": unit, "system": UCUM,
                        "code": unit}
        else:
            quantity = {"value": value, "unit": unit, "system": UCUM, "code": unit}
        template = egv_template(transmitter) if lowered == "egv" else calibration_template(
            subtype)
        out.add(row, stamp, template, {"valueQuantity": quantity})
