"""OBX-5 by value type (OBX-2), and OBX-7 / OBX-8 / OBX-11, as Observation elements."""

from __future__ import annotations

import base64
import binascii
import re

from mappers.hl7v2.context import MappingContext
from mappers.hl7v2.datatypes import codeable_concept, number
from mappers.hl7v2.parser import Segment, Value
from mappers.units import quantity

INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
_DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"

# OBX-8 (HL7 table 0078) codes that exist as such in v3 ObservationInterpretation.
_INTERPRETATIONS = {
    "L": "Low", "H": "High", "LL": "Critical low", "HH": "Critical high", "N": "Normal",
    "A": "Abnormal", "AA": "Critical abnormal", "<": "Off scale low", ">": "Off scale high",
    "LU": "Significantly low", "HU": "Significantly high", "U": "Significant change up",
    "D": "Significant change down", "B": "Better", "W": "Worse", "S": "Susceptible",
    "R": "Resistant", "I": "Intermediate", "MS": "moderately susceptible",
    "VS": "very susceptible", "POS": "Positive", "NEG": "Negative",
    "IND": "Indeterminate", "DET": "Detected", "ND": "Not detected", "E": "Equivocal",
    "HX": "above high threshold", "LX": "below low threshold", "NR": "Non-reactive",
    "RR": "Reactive", "WR": "Weakly reactive", "SDD": "Susceptible-dose dependent",
    "EXP": "Expected", "UNE": "Unexpected", "NS": "Non-susceptible", "CAR": "Carrier",
}
_INTERPRETATION_ALIASES = {"<": "<", ">": ">", "LOW": "L", "HIGH": "H", "NORMAL": "N"}

# OBX-11 (HL7 table 0085) to Observation.status; "N" (not asked) is cancelled with a
# data-absent reason, as the IG's table map does.
_STATUS = {
    "C": "corrected", "D": "entered-in-error", "F": "final", "I": "registered",
    "N": "cancelled", "O": "registered", "P": "preliminary", "R": "preliminary",
    "S": "preliminary", "U": "final", "W": "entered-in-error", "X": "cancelled",
    "A": "amended",
}

# Meter read-outs beyond the measuring range: the value is only "below/above the scale".
_OFF_SCALE = {"LO": "<", "LOW": "<", "HI": ">", "HIGH": ">"}
_COMPARATORS = ("<=", ">=", "<", ">")
_RANGE = re.compile(
    r"^\s*\(?\s*(-?\d+(?:[.,]\d+)?)\s*(?:-|_|–|to|à|a)\s*(-?\d+(?:[.,]\d+)?)\s*\)?\s*(.*)$",
    re.IGNORECASE,
)
_BOUND = re.compile(r"^\s*(<=|>=|<|>|≤|≥)\s*(-?\d+(?:[.,]\d+)?)\s*(.*)$")
_NUMERIC_WITH_COMPARATOR = re.compile(r"^\s*(<=|>=|<|>)\s*(-?\d+(?:[.,]\d+)?)\s*$")


def unit_of(obx: Segment) -> str:
    """OBX-6: the UCUM code when the sender says UCUM, else the identifier or text."""
    unit = obx.value(6)
    code, text, system = unit.c(1), unit.c(2), unit.c(3).upper()
    if system == "UCUM" and code:
        return code
    return code or text


def _unit_quantity(value: float | int, unit: str, comparator: str | None = None) -> dict:
    result = quantity(value, unit)
    if comparator:
        result = {"value": value, "comparator": comparator, **{k: v for k, v in result.items()
                                                                 if k != "value"}}
    return result


def value_elements(obx: Segment, ctx: MappingContext) -> tuple[dict, dict | None]:
    """Observation value[x] (or dataAbsentReason) and an off-scale interpretation if any."""
    value_type = obx.text(2).upper()
    reps = obx.repetitions(5)
    if not reps:
        reason = "not-asked" if obx.text(11).upper() == "N" else "unknown"
        return {"dataAbsentReason": {"coding": [{"system": _DATA_ABSENT, "code": reason}]}}, None
    first = reps[0]
    unit = unit_of(obx)
    if value_type == "NM":
        return _numeric(first.text(), unit)
    if value_type == "SN":
        return _structured_numeric(first, unit), None
    if value_type in ("CE", "CWE", "CNE", "CF", "CD"):
        concept = codeable_concept(first)
        return ({"valueCodeableConcept": concept} if concept else {}), None
    if value_type in ("DT", "TS", "DTM"):
        stamp = ctx.dtm(first.text())
        return ({"valueDateTime": stamp} if stamp else {"valueString": first.text()}), None
    if value_type == "TM":
        text = re.sub(r"[^0-9]", "", first.text())[:6]
        if len(text) >= 4:
            return {"valueTime": f"{text[:2]}:{text[2:4]}:{text[4:6] or '00'}"}, None
        return {"valueString": first.text()}, None
    if value_type in ("ED", "RP"):
        return {"valueString": first.text(5) or first.text(1)}, None
    # ST, TX, FT and anything unknown: text; repetitions are lines of one text.
    text = "\n".join(rep.text() for rep in reps if rep.text())
    if value_type not in ("FT", "TX"):
        text = text.strip()
    return ({"valueString": text} if text else {}), None


def attachment(obx: Segment) -> dict | None:
    """ED (source^type^subtype^encoding^data) as a FHIR Attachment for presentedForm."""
    value = obx.value(5)
    kind, subtype, encoding = value.c(2).lower(), value.c(3).lower(), value.c(4).upper()
    data = value.raw(5)
    if not data:
        return None
    content_type = {
        ("application", "pdf"): "application/pdf", ("text", "plain"): "text/plain",
        ("text", "html"): "text/html", ("text", "rtf"): "application/rtf",
        ("image", "jpeg"): "image/jpeg", ("image", "png"): "image/png",
    }.get((kind, subtype)) or (f"{kind}/{subtype}" if kind and subtype else
                                "application/octet-stream")
    try:
        if encoding == "BASE64":
            raw = base64.b64decode(data, validate=False)
        elif encoding == "HEX":
            raw = binascii.unhexlify(data)
        else:  # "A" (ASCII) and anything else: the text as sent
            raw = value.text(5).encode("utf-8")
    except (ValueError, binascii.Error):
        raw = data.encode("utf-8")
    result = {"contentType": content_type, "data": base64.b64encode(raw).decode("ascii")}
    title = obx.value(3).c(2)
    if title:
        result["title"] = title
    return result


def _numeric(text: str, unit: str) -> tuple[dict, dict | None]:
    value = number(text)
    if value is not None:
        return {"valueQuantity": _unit_quantity(value, unit)}, None
    match = _NUMERIC_WITH_COMPARATOR.match(text)
    if match:
        value = number(match.group(2))
        return {"valueQuantity": _unit_quantity(value, unit, match.group(1))}, None
    off_scale = _OFF_SCALE.get(text.strip().upper())
    if off_scale:
        code = off_scale
        return {"valueString": text.strip()}, _interpretation_concept(code)
    return ({"valueString": text} if text else {}), None


def _structured_numeric(value: Value, unit: str) -> dict:
    """SN: comparator (1), num1 (2), separator/suffix (3), num2 (4)."""
    comparator, sep = value.c(1), value.c(3)
    first, second = number(value.c(2)), number(value.c(4))
    if sep in (":", "/") and first is not None and second is not None:
        return {"valueRatio": {"numerator": _unit_quantity(first, ""),
                               "denominator": _unit_quantity(second, "")}}
    if sep == "-" and first is not None and second is not None:
        return {"valueRange": {"low": _unit_quantity(first, unit),
                               "high": _unit_quantity(second, unit)}}
    if first is not None and not sep and second is None:
        if comparator in ("", "="):
            return {"valueQuantity": _unit_quantity(first, unit)}
        if comparator in _COMPARATORS:
            return {"valueQuantity": _unit_quantity(first, unit, comparator)}
    if first is not None and sep == "." and second is not None and comparator in _COMPARATORS:
        # "<^1^.^3": the decimal point sent as a separator.
        joined = number(f"{value.c(2)}.{value.c(4)}")
        return {"valueQuantity": _unit_quantity(joined, unit, comparator)}
    text = "".join(value.c(i) for i in (1, 2, 3, 4))
    return {"valueString": text} if text else {}


def reference_range(text: str, unit: str) -> list[dict] | None:
    """OBX-7 as written (`70-105`, `70_105`, `<5`, `>1.0`, `3.5 - 5.0 mmol/L`, text)."""
    text = text.strip()
    if not text:
        return None
    result: dict = {}
    match = _RANGE.match(text)
    if match:
        low, high = number(match.group(1)), number(match.group(2))
        range_unit = match.group(3).strip() or unit
        if low is not None and high is not None and low <= high:
            result["low"] = quantity(low, range_unit)
            result["high"] = quantity(high, range_unit)
    else:
        match = _BOUND.match(text)
        if match:
            bound = number(match.group(2))
            range_unit = match.group(3).strip() or unit
            if bound is not None:
                side = "high" if match.group(1) in ("<", "<=", "≤") else "low"
                result[side] = quantity(bound, range_unit)
    result["text"] = text
    return [result]


def _interpretation_concept(code: str) -> dict:
    coding = {"system": INTERPRETATION, "code": code}
    if code in _INTERPRETATIONS:
        coding["display"] = _INTERPRETATIONS[code]
    return {"coding": [coding]}


def interpretations(obx: Segment) -> list[dict]:
    """OBX-8 (repeating since 2.5) in v3 ObservationInterpretation where the code exists."""
    found = []
    for rep in obx.repetitions(8):
        code = rep.c(1).upper()
        code = _INTERPRETATION_ALIASES.get(code, code)
        if not code:
            continue
        if code in _INTERPRETATIONS:
            found.append(_interpretation_concept(code))
        else:  # a local flag: keep what was sent rather than guess
            concept = codeable_concept(rep)
            if concept:
                found.append(concept)
    return found


def status(obx: Segment) -> str:
    return _STATUS.get(obx.text(11).upper(), "unknown")
