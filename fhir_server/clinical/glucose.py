"""Glucose readings out of stored Observations, whatever their source: CGM sensor readings
and meter / laboratory glucose, kept apart, in mg/dL or mmol/L.

A reading keeps its value in its own unit (so that 10.0 mmol/L is classed against the
mmol/L bounds, where it is in range, rather than as 180.16 mg/dL, where it would not be)
and its value in mg/dL (1 mmol/L = 18.016 mg/dL) for means and the GMI.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

LOINC = "http://loinc.org"
MG_PER_MMOL = 18.016

# LOINC code -> source. CGM: interstitial glucose by a sensor (HL7 CGM IG). Meter and
# laboratory: capillary blood (41653-7 glucometer), blood, serum/plasma.
CGM_CODES = {"99504-3": "mg/dL", "105272-9": "mmol/L"}
METER_CODES = {
    "41653-7": "mg/dL",
    "14743-9": "mmol/L",
    "2339-0": "mg/dL",
    "15074-8": "mmol/L",
    "2345-7": "mg/dL",
    "14749-6": "mmol/L",
}
GLUCOSE_CODES = {**CGM_CODES, **METER_CODES}
# Unit spellings seen in exports, as UCUM codes.
UNITS = {"mg/dL": "mg/dL", "mg/dl": "mg/dL", "mmol/L": "mmol/L", "mmol/l": "mmol/L"}
# Versions that stand: an Observation entered in error or cancelled says nothing.
STANDING_STATUSES = frozenset({"final", "amended", "corrected", "preliminary"})


@dataclass(frozen=True, slots=True)
class Reading:
    """One glucose value. `at`: epoch seconds (UTC); `value` in `unit`; `mg_dl` the same
    in mg/dL; `source` "cgm" or "meter"; `sensor` the device it came from (its reference,
    or "unknown")."""

    at: float
    value: float
    unit: str
    mg_dl: float
    source: str
    sensor: str


def glucose_code(resource: dict[str, Any]) -> str | None:
    """The glucose LOINC code of an Observation, or None when it is not glucose."""
    for coding in (resource.get("code") or {}).get("coding") or ():
        if coding.get("system") == LOINC and coding.get("code") in GLUCOSE_CODES:
            return coding["code"]
    return None


def effective_instant(resource: dict[str, Any]) -> float | None:
    """Epoch seconds of `effectiveDateTime` / `effectiveInstant` / `effectivePeriod.start`
    when it has a time and an offset; None otherwise (a date alone says no time of day)."""
    text = resource.get("effectiveDateTime") or resource.get("effectiveInstant")
    if text is None:
        text = (resource.get("effectivePeriod") or {}).get("start")
    if not isinstance(text, str) or "T" not in text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None  # FHIR requires an offset with a time; without one it is unknown
    return moment.timestamp()


def reading_from(resource: dict[str, Any]) -> Reading | None:
    """The glucose reading an Observation holds, or None (not glucose, not standing, no
    time, no value in mg/dL or mmol/L). A sensor's "<40" / ">400" counts as the limit."""
    code = glucose_code(resource)
    if code is None or resource.get("status") not in STANDING_STATUSES:
        return None
    at = effective_instant(resource)
    quantity = resource.get("valueQuantity") or {}
    value = quantity.get("value")
    unit = UNITS.get(quantity.get("code") or quantity.get("unit") or GLUCOSE_CODES[code])
    if at is None or unit is None or not isinstance(value, int | float):
        return None
    value = float(value)
    mg_dl = value * MG_PER_MMOL if unit == "mmol/L" else value
    source = "cgm" if code in CGM_CODES else "meter"
    sensor = (resource.get("device") or {}).get("reference") or "unknown"
    return Reading(at, value, unit, mg_dl, source, sensor)
