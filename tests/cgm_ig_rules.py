"""The rules of the HL7 CGM implementation guide 1.0.0 profiles (input/fsh/profiles.fsh of
github.com/HL7/cgm, CC0-1.0), written as checks for the tests: the IG's package is not
installable here, and the rules are few. Each check returns the list of what breaks.
"""

from __future__ import annotations

import re
from typing import Any

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
SUMMARY = "107931-8"
RANGE_COMPONENTS = {"104642-4", "104641-6", "97510-2", "104640-8", "104639-0"}
# code -> (UCUM code of valueQuantity, profile id)
MEMBERS = {
    "106793-3": (None, "cgm-summary-times-in-ranges"),
    "97507-8": ("mg/dL", "cgm-summary-mean-glucose-mass-per-volume"),
    "105273-7": ("mmol/L", "cgm-summary-mean-glucose-moles-per-volume"),
    "97506-0": ("%", "cgm-summary-gmi"),
    "104638-2": ("%", "cgm-summary-coefficient-of-variation"),
    "104636-6": ("d", "cgm-summary-days-of-wear"),
    "104637-4": ("%", "cgm-summary-sensor-active-percentage"),
}
# The slices of CGMSummaryObservation.hasMember that are 1..1.
REQUIRED_MEMBERS = {"106793-3", "97506-0", "104638-2", "104636-6", "104637-4"}


def has_code(concept: dict[str, Any] | None, code: str) -> bool:
    return any(
        c.get("system") == LOINC and c.get("code") == code
        for c in (concept or {}).get("coding") or ()
    )


def base_problems(resource: dict[str, Any]) -> list[str]:
    """ObservationBase / CGMSummaryBase: subject 1..1, effectivePeriod start and end 1..1."""
    problems = []
    if not (resource.get("subject") or {}).get("reference"):
        problems.append("subject is required")
    period = resource.get("effectivePeriod") or {}
    for key in ("start", "end"):
        if not isinstance(period.get(key), str) or not DATE.match(period[key]):
            problems.append(f"effectivePeriod.{key} must be a date (YYYY-MM-DD)")
    return problems


def quantity_problems(quantity: dict[str, Any] | None, unit: str) -> list[str]:
    if quantity is None:
        return [f"valueQuantity ({unit}) is required"]
    if quantity.get("system") != UCUM or quantity.get("code") != unit:
        return [f"valueQuantity must be UCUM {unit}"]
    if not isinstance(quantity.get("value"), int | float):
        return ["valueQuantity.value is required"]
    return []


def member_problems(resource: dict[str, Any]) -> list[str]:
    code = next((c for c in MEMBERS if has_code(resource.get("code"), c)), None)
    if code is None:
        return ["not a CGM summary member code"]
    problems = base_problems(resource)
    unit, _ = MEMBERS[code]
    if code == "106793-3":
        components = resource.get("component") or []
        found = {
            c["code"]["coding"][0]["code"] for c in components if c.get("code", {}).get("coding")
        }
        if found != RANGE_COMPONENTS or len(components) != 5:
            problems.append("times in ranges needs the five range components, once each")
        for component in components:
            problems += quantity_problems(component.get("valueQuantity"), "%")
    else:
        problems += quantity_problems(resource.get("valueQuantity"), unit)
    return problems


def summary_problems(summary: dict[str, Any], members: list[dict[str, Any]]) -> list[str]:
    """CGMSummaryObservation with its resolved members."""
    problems = base_problems(summary)
    if not has_code(summary.get("code"), SUMMARY):
        problems.append(f"code must be LOINC {SUMMARY}")
    if len(summary.get("hasMember") or []) < 6:
        problems.append("hasMember 6..*")
    codes = [c for m in members for c in MEMBERS if has_code(m.get("code"), c)]
    for required in REQUIRED_MEMBERS:
        if codes.count(required) != 1:
            problems.append(f"hasMember needs exactly one {required}")
    if codes.count("97507-8") > 1 or codes.count("105273-7") > 1:
        problems.append("mean glucose 0..1 per unit")
    for member in members:
        problems += member_problems(member)
    return problems


def pdf_report_problems(report: dict[str, Any]) -> list[str]:
    """CGMSummaryPDF (DiagnosticReport)."""
    problems = base_problems(report)
    if not has_code(report.get("code"), SUMMARY):
        problems.append(f"code must be LOINC {SUMMARY}")
    pdfs = [
        form for form in report.get("presentedForm") or ()
        if form.get("contentType") == "application/pdf" and form.get("data")
    ]
    if not pdfs:
        problems.append("presentedForm needs an application/pdf with data")
    return problems
