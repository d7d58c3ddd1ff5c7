"""Which patients an export holds: the one place that decides it.

A system-level export holds everything the requester may see; a Patient-level export the
compartments of every patient (or of the `patient` ids of a POST kick-off); a Group-level
export the compartments of the group's members (its `member` entries when `actual` is
true; the latest evaluation of its definition when `actual` is false, cohorts.py).

Members come in sorted batches of ids, never as one list: a cohort of a million patients
is read from its snapshot a batch at a time. A rule that removes patients from every
export (a research objection, a legal hold) belongs in `PatientSelection.batches`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

# Patients per search: their ids go into one OR-ed reference clause, and SQLite refuses an
# expression deeper than 1,000 ("Expression tree is too large"): 500 ids failed on every
# type (450 passed), so a Group/$export of 500 members or more failed; 200 leaves room
# for the export's other clauses (`_typeFilter`, `_since`).
BATCH = 200

# group id -> member patient ids in sorted batches (the cohort store's, for actual=false)
MemberSource = Callable[[str], Iterator[list[str]]]


@dataclass(frozen=True)
class PatientSelection:
    """`everyone`: no restriction by patient (system level) or every patient's
    compartment (`compartments` True: Patient level without `patient`)."""

    everyone: bool
    compartments: bool
    _batches: Callable[[], Iterator[list[str]]] | None = None

    def batches(self) -> Iterator[list[str]]:
        """The selected patients' ids, sorted, in batches of at most BATCH."""
        if self._batches is None:
            return iter(())
        return self._batches()


SYSTEM_WIDE = PatientSelection(everyone=True, compartments=False)
EVERY_PATIENT = PatientSelection(everyone=True, compartments=True)


def of_patients(ids: Iterable[str]) -> PatientSelection:
    chosen = sorted(set(ids))
    return PatientSelection(False, True, lambda: batched(chosen))


def of_group(group_id: str, members: MemberSource) -> PatientSelection:
    """The group's members, in batches of at most BATCH whatever the source's size (the
    cohort store's are larger)."""
    return PatientSelection(
        False, True, lambda: (part for batch in members(group_id) for part in batched(batch))
    )


def batched(ids: Iterable[str], size: int = BATCH) -> Iterator[list[str]]:
    batch: list[str] = []
    for rid in ids:
        batch.append(rid)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
