"""MeasureReport (R4) from evaluated populations: summary or subject-list, with the
small-cell suppression of research outputs marked on every withheld cell and said once on
the report."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fhir_server.analytics.measures import (
    MEASURE_POPULATION,
    POPULATION_ORDER,
    STRATIFIER_SYSTEM,
    GroupResult,
    Period,
    score,
)
from fhir_server.analytics.suppression import SMALL_CELL_LIMIT, is_small, suppress_strata

SUPPRESSED = "https://diatabase.org/fhir/StructureDefinition/small-cell-suppressed"
SUPPRESSION_RULE = "https://diatabase.org/fhir/StructureDefinition/small-cell-suppression"


class _Cells:
    """Counts as released: withheld ones are None, and counted for the report's note."""

    def __init__(self, suppress: bool) -> None:
        self.suppress = suppress
        self.withheld = 0

    def population(self, code: str, count: int | None, extra: dict | None = None) -> dict:
        element: dict[str, Any] = {"code": {"coding": [{"system": MEASURE_POPULATION,
                                                        "code": code}]}}  # fmt: skip
        if count is None:
            self.withheld += 1
            element["extension"] = [{"url": SUPPRESSED, "valueBoolean": True}]
        else:
            element["count"] = count
        if extra:
            element.update(extra)
        return element

    def released(self, count: int) -> int | None:
        return None if self.suppress and is_small(count) else count


def _ordered(populations: dict[str, Any]) -> list[str]:
    return [code for code in POPULATION_ORDER if code in populations]


def measure_report(
    measure: dict[str, Any],
    period: Period,
    results: list[GroupResult],
    report_type: str,
    suppress: bool,
    subject_reference: Callable[[str], str] = lambda pid: f"Patient/{pid}",
) -> dict[str, Any]:
    cells = _Cells(suppress)
    contained: list[dict[str, Any]] = []
    groups = []
    for index, (group, result) in enumerate(zip(measure.get("group", []) or [], results,
                                                strict=True)):  # fmt: skip
        released = {c: cells.released(len(s)) for c, s in result.populations.items()}
        out: dict[str, Any] = {}
        if group.get("code"):
            out["code"] = group["code"]
        populations = []
        for code in _ordered(result.populations):
            extra = None
            if report_type == "subject-list" and released[code] is not None:
                list_id = f"g{index}-{code}"
                contained.append({
                    "resourceType": "List", "id": list_id, "status": "current",
                    "mode": "snapshot",
                    "entry": [{"item": {"reference": subject_reference(pid)}}
                              for pid in sorted(result.populations[code])],
                })  # fmt: skip
                extra = {"subjectResults": {"reference": f"#{list_id}"}}
            populations.append(cells.population(code, released[code], extra))
        out["population"] = populations
        value = score(released)
        if value is not None:
            out["measureScore"] = {"value": value}
        stratifiers = []
        for stratifier in group.get("stratifier", []) or []:
            code = (stratifier.get("code") or {}).get("coding", [{}])[0].get("code")
            strata = result.strata.get(code, {})
            withheld: dict[str, set[str]] = {}
            if suppress:
                for population in _ordered(result.populations):
                    counts = {v: len(p.get(population, ())) for v, p in strata.items()}
                    withheld[population] = suppress_strata(counts)
            stratum_elements = []
            for value_text, stratum_populations in strata.items():
                counts = {c: (None if value_text in withheld.get(c, set())
                              else len(stratum_populations.get(c, ())))
                          for c in _ordered(result.populations)}  # fmt: skip
                element: dict[str, Any] = {
                    "value": {"coding": [{"system": STRATIFIER_SYSTEM, "code": value_text}],
                              "text": value_text},
                    "population": [cells.population(c, n) for c, n in counts.items()],
                }  # fmt: skip
                stratum_score = score(counts)
                if stratum_score is not None:
                    element["measureScore"] = {"value": stratum_score}
                stratum_elements.append(element)
            stratifiers.append({"code": [stratifier.get("code")], "stratum": stratum_elements})
        if stratifiers:
            out["stratifier"] = stratifiers
        groups.append(out)
    canonical = measure.get("url") or f"Measure/{measure.get('id')}"
    report: dict[str, Any] = {
        "resourceType": "MeasureReport",
        "status": "complete",
        "type": "subject-list" if report_type == "subject-list" else "summary",
        "measure": canonical,
        "date": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "period": {"start": period.start, "end": period.end},
        "group": groups,
    }
    if contained:
        report["contained"] = contained
    if suppress:
        report["extension"] = [{"url": SUPPRESSION_RULE, "valueString": (
            f"Small-cell rule: counts of 1 to {SMALL_CELL_LIMIT - 1} patients are withheld "
            "(a cell with extension small-cell-suppressed has no count), and the next "
            "smallest stratum of a population where only one was withheld; scores that "
            f"would need a withheld count are left out. {cells.withheld} cell(s) withheld."
        )}]  # fmt: skip
    return report
