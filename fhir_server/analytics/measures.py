"""`Measure/$evaluate-measure`: a FHIR R4 Measure evaluated into a MeasureReport.

Populations (`group.population`, codes of the R4 measure-population system) are sets of
patients, each given by its `criteria`:

- `application/x-fhir-query`: a search, `Observation?code=http://loinc.org|4548-4&date=ge
  {{%periodStart}}`, run through the server's search under the caller's visibility; its
  population is the patients the matches are about (a Patient's id; another resource's
  `subject` or `patient` reference to a Patient).
- `text/x-sql`: a DuckDB query over the materialised views (each `<view>.parquet` of the
  views folder is a table named after the view), whose first column holds patient ids;
  `$periodStart` and `$periodEnd` are bound as ISO dates. R4 allows three codes in
  `Expression.language` (the official JSON Schema makes them an enum), so this one is said
  by the extension LANGUAGE_EXTENSION on the element (`_language`), which R4 permits on
  a primitive without a value.

`{{%periodStart}}` and `{{%periodEnd}}` in a query are replaced by the period's bounds.
Proportion scoring follows the Measure's semantics: the denominator is counted within the
initial population, the numerator within the denominator less its exclusions and
exceptions; the score is (numerator - numerator exclusions) / (denominator - denominator
exclusions - exceptions). Stratifiers (`group.stratifier.code`, system STRATIFIER_SYSTEM)
split every population by `age-band` (age at the period's end: 0-17, 18-39, 40-59, 60-74,
75+), `sex` (Patient.gender), `departement` (from the first address's postal code; 2A/2B
for Corsica, three digits overseas), `source` (the Patient's meta.source) and `period`
(each calendar year of the period, every population evaluated again over that year).

For a research recipient, the populations are mapped to the recipient's pseudonyms and
kept to the patients the de-identification facade releases to it, and every count from 1
to SMALL_CELL_LIMIT - 1 is suppressed (`suppression.py`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson

from fhir_server.model.outcome import error
from fhir_server.search.query import parse_search

MEASURE_POPULATION = "http://terminology.hl7.org/CodeSystem/measure-population"
STRATIFIER_SYSTEM = "https://diatabase.org/fhir/CodeSystem/measure-stratifier"
FHIR_QUERY = "application/x-fhir-query"
SQL_LANGUAGES = frozenset({"text/x-sql"})
POPULATION_ORDER = ("initial-population", "denominator", "denominator-exclusion",
                    "denominator-exception", "numerator", "numerator-exclusion")  # fmt: skip
AGE_BANDS = ((0, 17), (18, 39), (40, 59), (60, 74), (75, 200))
PAGE = 1_000
LANGUAGE_EXTENSION = "https://diatabase.org/fhir/StructureDefinition/expression-language"

Subjects = set[str]


@dataclass(frozen=True)
class Period:
    start: str  # YYYY-MM-DD
    end: str

    def years(self) -> list[Period]:
        first, last = int(self.start[:4]), int(self.end[:4])
        return [Period(max(self.start, f"{y}-01-01"), min(self.end, f"{y}-12-31"))
                for y in range(first, last + 1)]  # fmt: skip


def parse_period(start: str | None, end: str | None) -> Period:
    pattern = re.compile(r"^\d{4}-\d{2}-\d{2}$")
    if not start or not end:
        raise error(400, "required", "$evaluate-measure needs periodStart and periodEnd")
    start, end = start[:10], end[:10]
    if not pattern.match(start) or not pattern.match(end) or start > end:
        raise error(400, "invalid", "periodStart and periodEnd are dates, start <= end")
    return Period(start, end)


class Criteria:
    """Evaluates population criteria into sets of patient ids."""

    def __init__(self, fhir: Any, views_dir: str | None) -> None:
        self.fhir = fhir
        self.views_dir = views_dir
        self._db: Any = None  # one DuckDB connection for all of an evaluation's SQL

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _views(self) -> Any:
        import duckdb

        if self._db is None:
            if not self.views_dir or not Path(self.views_dir).is_dir():
                raise error(
                    400,
                    "not-supported",
                    "SQL criteria need the materialised views "
                    "(DIATABASE_VIEWS_DIR, written by `diatabase views materialize`)",
                )
            self._db = duckdb.connect()
            for parquet in sorted(Path(self.views_dir).glob("*.parquet")):
                self._db.execute(f"CREATE VIEW \"{parquet.stem}\" AS SELECT * FROM "
                                 f"read_parquet('{parquet}')")  # fmt: skip
        return self._db

    def subjects(self, expression: dict, period: Period) -> Subjects:
        language = expression.get("language") or _extended_language(expression)
        text = expression.get("expression")
        if not isinstance(text, str) or not text.strip():
            raise error(400, "invalid", "a population criteria has no expression")
        if language == FHIR_QUERY:
            return self._query(_substitute(text, period))
        if language in SQL_LANGUAGES:
            return self._sql(text, period)
        raise error(400, "not-supported",
                    f"criteria language {language!r}: use {FHIR_QUERY} or text/x-sql")  # fmt: skip

    def _query(self, text: str) -> Subjects:
        rtype, _, query = text.lstrip("/").partition("?")
        self.fhir.resources.check_type(rtype)
        parsed = parse_search(rtype, parse_qsl(query, keep_blank_values=True),
                              self.fhir.registry)  # fmt: skip
        found: Subjects = set()
        cursor = None
        while True:
            page = self.fhir.storage.search(parsed, PAGE, cursor)
            for stored in page.matches:
                if stored.json is not None:
                    found.update(_patients_of(orjson.loads(stored.json)))
            cursor = page.next_cursor
            if cursor is None:
                return found

    def _sql(self, text: str, period: Period) -> Subjects:
        import duckdb

        db = self._views()
        bounds = (("periodStart", period.start), ("periodEnd", period.end))
        parameters = {k: v for k, v in bounds if f"${k}" in text}
        try:
            rows = db.execute(text, parameters).fetchall()
        except duckdb.Error as exc:
            raise error(400, "invalid", f"SQL criteria failed: {exc}") from None
        return {str(row[0]) for row in rows if row and row[0] is not None}


def _extended_language(expression: dict) -> str | None:
    element = expression.get("_language")
    for extension in (element or {}).get("extension", []) if isinstance(element, dict) else []:
        if isinstance(extension, dict) and extension.get("url") == LANGUAGE_EXTENSION:
            return extension.get("valueCode")
    return None


def _substitute(text: str, period: Period) -> str:
    return text.replace("{{%periodStart}}", period.start).replace("{{%periodEnd}}", period.end)


def _patients_of(resource: dict) -> Iterable[str]:
    if resource.get("resourceType") == "Patient":
        return [resource["id"]]
    found = []
    for key in ("subject", "patient"):
        reference = resource.get(key)
        if isinstance(reference, dict) and isinstance(reference.get("reference"), str):
            ref = reference["reference"]
            if ref.startswith("Patient/"):
                found.append(ref.removeprefix("Patient/").split("/")[0])
    return found


# -- stratifiers ------------------------------------------------------------------------------


def age_band(patient: dict, at: str) -> str:
    born = patient.get("birthDate")
    if not isinstance(born, str) or len(born) < 4:
        return "unknown"
    end = date.fromisoformat(at)
    year = int(born[:4])
    month = int(born[5:7]) if len(born) >= 7 else 1
    day = int(born[8:10]) if len(born) >= 10 else 1
    age = end.year - year - ((end.month, end.day) < (month, day))
    for low, high in AGE_BANDS:
        if low <= age <= high:
            return f"{low}-{high}" if high < 200 else f"{low}+"
    return "unknown"


def departement(patient: dict) -> str:
    for address in patient.get("address", []) or []:
        code = address.get("postalCode") if isinstance(address, dict) else None
        if isinstance(code, str) and re.match(r"^\d{5}$", code):
            if code.startswith("20"):
                return "2A" if code < "20200" else "2B"
            return code[:3] if code.startswith("97") or code.startswith("98") else code[:2]
    return "unknown"


STRATIFIERS: dict[str, Callable[[dict, Period], str]] = {
    "age-band": lambda p, period: age_band(p, period.end),
    "sex": lambda p, period: p.get("gender") or "unknown",
    "departement": lambda p, period: departement(p),
    "source": lambda p, period: (p.get("meta") or {}).get("source") or "unknown",
}


# -- evaluation -------------------------------------------------------------------------------


@dataclass
class GroupResult:
    populations: dict[str, Subjects]
    # stratifier code -> stratum value -> population code -> subjects
    strata: dict[str, dict[str, dict[str, Subjects]]] = field(default_factory=dict)


def _code(element: dict) -> str | None:
    for coding in (element.get("code") or {}).get("coding", []) or []:
        if isinstance(coding, dict) and isinstance(coding.get("code"), str):
            return coding["code"]
    return None


def evaluate_populations(group: dict, period: Period, criteria: Criteria) -> dict[str, Subjects]:
    raw: dict[str, Subjects] = {}
    for population in group.get("population", []) or []:
        code = _code(population)
        if code not in POPULATION_ORDER:
            raise error(400, "not-supported", f"population code {code!r}")
        raw[code] = criteria.subjects(population.get("criteria") or {}, period)
    if "initial-population" not in raw:
        raise error(400, "invalid", "a Measure group needs an initial-population")
    initial = raw["initial-population"]
    out = {"initial-population": initial}
    if "denominator" in raw or "numerator" in raw:
        denominator = raw.get("denominator", initial) & initial
        out["denominator"] = denominator
        excluded = raw.get("denominator-exclusion", set()) & denominator
        excepted = raw.get("denominator-exception", set()) & denominator - excluded
        if "denominator-exclusion" in raw:
            out["denominator-exclusion"] = excluded
        if "denominator-exception" in raw:
            out["denominator-exception"] = excepted
        numerator = raw.get("numerator", set()) & (denominator - excluded - excepted)
        out["numerator"] = numerator
        if "numerator-exclusion" in raw:
            out["numerator-exclusion"] = raw["numerator-exclusion"] & numerator
    return out


def score(populations: dict[str, int | None]) -> float | None:
    def n(code: str) -> int | None:
        return populations.get(code, 0)

    parts = [n("numerator"), n("numerator-exclusion"), n("denominator"),
             n("denominator-exclusion"), n("denominator-exception")]  # fmt: skip
    if "numerator" not in populations or any(p is None for p in parts):
        return None
    numerator = parts[0] - parts[1]  # type: ignore[operator]
    denominator = parts[2] - parts[3] - parts[4]  # type: ignore[operator]
    return round(numerator / denominator, 6) if denominator > 0 else None


class MeasureEvaluator:
    def __init__(self, fhir: Any, views_dir: str | None,
                 read_patients: Callable[[Iterable[str]], dict[str, dict]] | None = None
                 ) -> None:  # fmt: skip
        self.fhir = fhir
        self.criteria = Criteria(fhir, views_dir)
        self.read_patients = read_patients or self._read_patients

    def _read_patients(self, ids: Iterable[str]) -> dict[str, dict]:
        found = {}
        for pid in ids:
            stored = self.fhir.storage.read("Patient", pid)
            if stored is not None and not stored.deleted and stored.json is not None:
                found[pid] = orjson.loads(stored.json)
        return found

    def evaluate(self, measure: dict, period: Period) -> list[GroupResult]:
        try:
            return self._evaluate(measure, period)
        finally:
            self.criteria.close()

    def _evaluate(self, measure: dict, period: Period) -> list[GroupResult]:
        results = []
        for group in measure.get("group", []) or []:
            populations = evaluate_populations(group, period, self.criteria)
            result = GroupResult(populations)
            everyone = populations["initial-population"]
            patients: dict[str, dict] | None = None
            for stratifier in group.get("stratifier", []) or []:
                code = _code(stratifier)
                if code == "period":
                    result.strata[code] = {
                        f"{year.start[:4]}": evaluate_populations(group, year, self.criteria)
                        for year in period.years()
                    }
                    continue
                classify = STRATIFIERS.get(code or "")
                if classify is None:
                    raise error(400, "not-supported", f"stratifier {code!r}: use one of "
                                f"{', '.join([*STRATIFIERS, 'period'])}")  # fmt: skip
                if patients is None:
                    patients = self.read_patients(everyone)
                values = {pid: classify(patients.get(pid, {}), period) for pid in everyone}
                strata: dict[str, dict[str, Subjects]] = {}
                for value in sorted(set(values.values())):
                    members = {pid for pid, v in values.items() if v == value}
                    strata[value] = {c: s & members for c, s in populations.items()}
                result.strata[code] = strata
            results.append(result)
        return results
