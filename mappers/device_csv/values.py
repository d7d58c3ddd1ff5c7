"""Numeric cells: decimal commas, and the out-of-range words meters write instead of a number."""

from __future__ import annotations

import math
import re

_NUMBER = re.compile(r"^[+-]?(?:\d+(?:[.,]\d*)?|[.,]\d+)$")


def parse_number(text: str, decimal_separator: str | None = None) -> int | float:
    """`117` -> 117, `5.4` / `5,4` -> 5.4; raise ValueError otherwise.

    With `decimal_separator=None` a single comma is a decimal comma: a thousands separator
    never appears in glucose or lab values of this size, and a `5,4` cell in a comma-separated
    file is necessarily quoted, hence still one cell.
    """
    if text.isdecimal():  # the common case, a whole number of digits: nothing to clean
        return int(text)
    cell = text.strip().replace("\u00a0", "").replace(" ", "")
    if decimal_separator == ".":
        cell = cell.replace(",", "") if cell.count(",") and "." in cell else cell
    elif decimal_separator == ",":
        cell = cell.replace(".", "") if cell.count(".") and "," in cell else cell
    if not _NUMBER.match(cell):
        raise ValueError(f"not a number: {text.strip()[:30]!r}")
    if "," in cell:
        if decimal_separator == ".":
            raise ValueError(f"not a number: {text.strip()[:30]!r}")
        cell = cell.replace(",", ".")
    if "." in cell:
        value = float(cell)
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        return value
    return int(cell)


# What meters print when a reading is beyond their measuring range, and the comparator
# it stands for; the limit itself depends on the device and the unit (see the formats).
OUT_OF_RANGE_WORDS = {"low": "<", "lo": "<", "high": ">", "hi": ">"}
