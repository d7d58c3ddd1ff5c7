"""k-anonymity of an extract on the patients' quasi-identifiers.

Quasi-identifiers (configurable subset): birth year, gender, postal prefix, read from the
already pseudonymized Patient. Records in equivalence classes smaller than k are
generalized step by step, and only what is still too rare is suppressed:

1. the postal prefix is removed (the class becomes year/gender/*),
2. then the birth year as well (*/gender/*),
3. then the patient (and every resource of that patient) is left out of the extract.

A record whose field was removed only shares a class with records where it was removed
too, so every class released is checked with the fields as released.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

REMOVAL_ORDER = ("postalPrefix", "birthYear")


def quasi_identifiers(patient: dict[str, Any]) -> dict[str, str | None]:
    birth = patient.get("birthDate")
    postal = None
    for address in patient.get("address") or ():
        if isinstance(address, dict) and address.get("postalCode"):
            postal = str(address["postalCode"])
            break
    return {
        "birthYear": birth[:4] if isinstance(birth, str) else None,
        "gender": patient.get("gender"),
        "postalPrefix": postal,
    }


@dataclass
class KAnonymityReport:
    k: int
    quasi_identifiers: tuple[str, ...]
    patients: int = 0
    generalized: dict[str, int] = field(default_factory=dict)
    suppressed: list[str] = field(default_factory=list)  # patient keys (not reported)
    smallest_class: int = 0
    removed: dict[str, tuple[str, ...]] = field(default_factory=dict)  # key -> fields cut
    classes: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # key -> its class

    def to_json(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "quasiIdentifiers": list(self.quasi_identifiers),
            "patients": self.patients,
            "released": self.patients - len(self.suppressed),
            "generalized": self.generalized,
            "suppressed": len(self.suppressed),
            "smallestReleasedClass": self.smallest_class,
        }


def enforce(
    patients: dict[str, dict[str, Any]], k: int, quasi: tuple[str, ...]
) -> KAnonymityReport:
    """Generalize (in place) or suppress patients so that every class has >= k records."""
    report = KAnonymityReport(k, quasi, patients=len(patients))
    removed: dict[str, set[str]] = {pid: set() for pid in patients}
    values = {pid: quasi_identifiers(p) for pid, p in patients.items()}

    def key(pid: str) -> tuple[Any, ...]:
        return tuple("*" if q in removed[pid] else values[pid][q] for q in quasi)

    for step in [q for q in REMOVAL_ORDER if q in quasi]:
        sizes = Counter(key(pid) for pid in patients)
        rare = [pid for pid in patients if sizes[key(pid)] < k]
        if not rare:
            break
        for pid in rare:
            removed[pid].add(step)
            _remove(patients[pid], step)
        report.generalized[step] = len(rare)
    sizes = Counter(key(pid) for pid in patients)
    report.suppressed = [pid for pid in patients if sizes[key(pid)] < k]
    kept = [sizes[key(pid)] for pid in patients if sizes[key(pid)] >= k]
    report.smallest_class = min(kept) if kept else 0
    report.removed = {pid: tuple(sorted(fields)) for pid, fields in removed.items() if fields}
    report.classes = {pid: key(pid) for pid in patients if sizes[key(pid)] >= k}
    return report


def generalize(patient: dict[str, Any], fields: tuple[str, ...]) -> None:
    """Remove quasi-identifiers from a released Patient (in place), as `enforce` did."""
    for name in fields:
        _remove(patient, name)


def l_diversity(classes: dict[str, tuple[Any, ...]], sensitive: dict[str, str]) -> dict[str, Any]:
    """Distinct l-diversity of a sensitive attribute over the released classes: for each
    class, how many distinct values its patients have (a patient without one counts as
    the value "none"). `classes`: patient -> class; `sensitive`: patient -> value."""
    values: dict[tuple[Any, ...], set[str]] = {}
    for pid, cls in classes.items():
        values.setdefault(cls, set()).add(sensitive.get(pid, "none"))
    sizes = sorted(len(v) for v in values.values())
    return {
        "classes": len(sizes),
        "smallestL": sizes[0] if sizes else 0,
        "classesWithOneValue": sum(1 for n in sizes if n == 1),
    }


def _remove(patient: dict[str, Any], field_name: str) -> None:
    if field_name == "birthYear":
        patient.pop("birthDate", None)
    elif field_name == "postalPrefix":
        for address in patient.get("address") or ():
            if isinstance(address, dict):
                address.pop("postalCode", None)
        patient["address"] = [a for a in patient.get("address") or () if a]
        if not patient["address"]:
            del patient["address"]
