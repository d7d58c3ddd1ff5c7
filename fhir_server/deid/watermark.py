"""The recipient watermark: keyed seconds on timestamps, and its statistical detection.

Carrier: every timestamp that carries seconds (dateTime/instant with a time). After the
date shift, its seconds field (and any fraction) is replaced by
`BLAKE2b(key_recipient, "YYYY-MM-DDThh:mm" + zone) mod 60`. The clinical meaning is kept:
the date, hour, minute and zone are exactly those of the shifted original (intervals and
times of day are exact to the minute; seconds carry no clinical information in glucose,
HbA1c or drug data).

Detection from a leaked file needs nothing but the file: for each distinct carrier
(minute + zone), recompute the seconds under each recipient's key. For the recipient who
received the data every carrier matches; for any other recipient each carrier matches
with probability 1/60 (BLAKE2b is a PRF, the keys are independent), independently across
distinct carriers. The false-attribution probability of a recipient with m matches out
of n is therefore the binomial tail P[Bin(n, 1/60) >= m], multiplied by the number of
recipients tested (union bound). `trace` attributes only when that is below 1e-9.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable

CHANCE_MATCH = 1 / 60
_TIMESTAMP = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}):(\d{2})(?:\.\d+)?(Z|[+-]\d{2}:\d{2})?")


def watermark_second(key: bytes, minute_and_zone: str) -> int:
    digest = hashlib.blake2b(minute_and_zone.encode(), key=key, digest_size=8).digest()
    return int.from_bytes(digest, "big") % 60


def keyed_seconds(key: bytes) -> Callable[[str], int]:
    """`watermark_second` with the key set up once: a keyed BLAKE2b compresses the key as
    a first block, and copying that state is cheaper than redoing it per timestamp."""
    keyed = hashlib.blake2b(key=key, digest_size=8)

    def second(minute_and_zone: str) -> int:
        state = keyed.copy()
        state.update(minute_and_zone.encode())
        return int.from_bytes(state.digest(), "big") % 60

    return second


def carriers(text: str) -> dict[str, int]:
    """`minute+zone` -> seconds, for every timestamp found in a string (a whole file)."""
    found: dict[str, int] = {}
    for match in _TIMESTAMP.finditer(text):
        found[match.group(1) + (match.group(3) or "")] = int(match.group(2))
    return found


def count_matches(key: bytes, found: dict[str, int]) -> int:
    return sum(1 for carrier, second in found.items() if watermark_second(key, carrier) == second)


def log10_tail(n: int, m: int, p: float = CHANCE_MATCH) -> float:
    """log10 of P[Bin(n, p) >= m] (exact, summed in log space)."""
    if m <= 0:
        return 0.0
    if m > n:
        return -math.inf
    logs = [
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
        for k in range(m, n + 1)
    ]
    top = max(logs)
    return (top + math.log(sum(math.exp(v - top) for v in logs))) / math.log(10)
