"""The second watermark: keyed, clinically negligible changes to glucose values.

The first watermark (watermark.py) lives in the seconds of timestamps: truncating them to
the minute erases it. This one lives in the values, and survives that, the removal of ids
and references, and the removal of most rows.

Carrier: the `valueQuantity` of each glucose reading (an Observation whose code is one of
the rules' `valueWatermark.codes`, in one of its `units`). Written as an integer count n
of the unit's last marked decimal (mg/dL: whole units; mmol/L: tenths), the released
value is the n' in {n-1, n, n+1} with n' = T (mod 3), where
T = BLAKE2b(recipient key, shifted "YYYY-MM-DDThh:mm" + unit) mod 3. So a value moves by
at most one unit of that decimal: 1 mg/dL, or 0.1 mmol/L (1.8 mg/dL), far inside the
accuracy a glucose meter claims under ISO 15197:2013 (+/-15 mg/dL below 100 mg/dL,
+/-15 % above; CGM MARD is ~8-10 %) and below what any clinical decision uses. A value
given with more decimals is marked in its last one (a smaller change still); a reading
with a comparator (`<` 1.1 mmol/L, a meter's LO) keeps its limit unchanged.

Detection needs only the file: for each distinct (minute, unit) context, recompute T under
each recipient's key. The recipient who received the data matches every context; any other
matches each with probability 1/3 (BLAKE2b is a PRF, keys are independent; readings of the
same context must all match to count, so they are one trial). The false-attribution
probability of m matches out of n is P[Bin(n, 1/3) >= m] times the number of recipients.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any

from fhir_server.model.jsonio import FhirDecimal

CHANCE_MATCH = 1 / 3
MODULUS = 3


def keyed_residue(key: bytes) -> Callable[[str], int]:
    keyed = hashlib.blake2b(key=key, digest_size=8)

    def residue(context: str) -> int:
        state = keyed.copy()
        state.update(context.encode())
        return int.from_bytes(state.digest(), "big") % MODULUS

    return residue


def literal(value: Any) -> str | None:
    """The decimal literal of a JSON number as written (None: not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, FhirDecimal):
        return value.literal
    return str(value) if isinstance(value, int) else repr(value)


def _decimals(text: str) -> int | None:
    if "e" in text or "E" in text:
        return None  # exponents: left alone (no glucose value is written that way)
    return len(text.partition(".")[2])


def context(minute: str, unit: str) -> str:
    return f"{minute}|{unit}"


def reading(resource: dict[str, Any], watermark: dict[str, Any]) -> tuple[str, str, Any] | None:
    """(minute, unit, value) of a glucose reading that carries the mark, else None."""
    quantity = resource.get("valueQuantity")
    if type(quantity) is not dict or "comparator" in quantity:
        return None
    unit = quantity.get("code")
    if unit not in watermark["units"]:
        return None
    when = resource.get("effectiveDateTime")
    if when is None:
        period = resource.get("effectivePeriod")
        when = period.get("start") if type(period) is dict else resource.get("effectiveInstant")
    if type(when) is not str or len(when) < 16:
        return None
    code = resource.get("code")
    codings = code.get("coding") if type(code) is dict else None
    codes = watermark["codes"]
    if not codings or not any(
        type(c) is dict and f"{c.get('system')}|{c.get('code')}" in codes for c in codings
    ):
        return None
    return when[:16], unit, quantity.get("value")


def mark(
    resource: dict[str, Any], watermark: dict[str, Any], residue: Callable[[str], int]
) -> None:
    """Move the value of a glucose reading to the recipient's residue (in place)."""
    found = reading(resource, watermark)
    if found is None:
        return
    minute, unit, value = found
    counted = _count(value, watermark["units"][unit])
    if counted is None:
        return
    count, decimals = counted
    target = residue(context(minute, unit))
    marked = count + ((target - count + 1) % MODULUS) - 1  # the one of n-1, n, n+1
    if marked <= 0:
        return
    if decimals == 0:
        resource["valueQuantity"]["value"] = marked
        return
    text = f"{marked // 10**decimals}.{marked % 10**decimals:0{decimals}d}"
    number = float(text)
    # A float writes itself back as the same literal unless it ends in a zero (5.10).
    resource["valueQuantity"]["value"] = number if repr(number) == text else FhirDecimal(text)


def _count(value: Any, least_decimals: int) -> tuple[int, int] | None:
    """The value as an integer count of its last decimal (at least `least_decimals`)."""
    if type(value) is int:
        return value * 10**least_decimals, least_decimals
    text = literal(value)
    decimals = _decimals(text) if text is not None else None
    if decimals is None:
        return None
    assert text is not None
    digits = int(text.replace(".", "", 1))  # the literal's digits: exact, no float error
    if decimals < least_decimals:
        return digits * 10 ** (least_decimals - decimals), least_decimals
    return digits, decimals


def contexts(resources: Iterable[dict[str, Any]], watermark: dict[str, Any]) -> dict[str, set[int]]:
    """Context -> the residues its readings show, for every marked reading of a leak."""
    found: dict[str, set[int]] = {}
    for resource in resources:
        item = reading(resource, watermark)
        if item is None:
            continue
        minute, unit, value = item
        text = literal(value)
        decimals = _decimals(text) if text is not None else None
        if decimals is None:
            continue
        count = int(text.replace(".", "", 1))  # type: ignore[union-attr]
        found.setdefault(context(minute, unit), set()).add(count % MODULUS)
    return found


def count_matches(key: bytes, found: dict[str, set[int]]) -> int:
    residue = keyed_residue(key)
    return sum(1 for ctx, seen in found.items() if seen == {residue(ctx)})
