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
- Insulin, Carbs, Exercise, Health, Alert and other events -> skipped with the reason.
The device serial is the Transmitter ID of the row when present, else the Source Device ID
of the `Device` metadata row.
"""

from __future__ import annotations

from .common import Collector, Options, ReadingTemplate
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
    unit = unit_in(table.header[value_col]) if value_col is not None else None
    unit = unit or _guess_unit(table, value_col)
    patient = options.patient or ""

    model, receiver = "Dexcom CGM", ""
    for _, cells in table.rows:
        if _cell(cells, event_col).lower() == "device":
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

    limits = _LIMITS[unit]
    pick = picker((event_col, time_col, value_col, transmitter_col, subtype_col))
    for row, cells in table.rows:
        # Cells as read: each is stripped where it is used (most are used once).
        event, time_text, text, transmitter, subtype = pick(cells)
        event = event.strip()
        lowered = event.lower()
        if lowered in _METADATA and not time_text.strip():
            out.skip(row, f"metadata row ({event})")
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
