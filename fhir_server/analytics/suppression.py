"""Small-cell suppression of counts released to research recipients.

The rule of French national health data (SNDS): no released cell may count from 1 to 10
patients. A count in that range is withheld; and where a stratifier's strata add up to a
released total, a single withheld stratum could be recovered by subtraction, so the next
smallest stratum of that population is withheld too (secondary suppression). Zero is
released (it identifies nobody).
"""

from __future__ import annotations

SMALL_CELL_LIMIT = 11  # counts below this (and above 0) are withheld


def is_small(count: int) -> bool:
    return 0 < count < SMALL_CELL_LIMIT


def suppress_strata(counts: dict[str, int]) -> set[str]:
    """The strata (keys) of one population whose counts are withheld."""
    withheld = {key for key, count in counts.items() if is_small(count)}
    if len(withheld) == 1:
        others = sorted((count, key) for key, count in counts.items()
                        if key not in withheld and count > 0)  # fmt: skip
        if others:
            withheld.add(others[0][1])
    return withheld
