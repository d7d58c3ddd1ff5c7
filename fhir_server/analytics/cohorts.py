"""Cohorts as FHIR Groups defined by criteria (`actual` false), evaluated by the search engine.

A definition is a Group with:
- `modifierExtension` member-filter (Bulk Data Access IG): a FHIR search
  (`Condition?code:below=http://hl7.org/fhir/sid/icd-10|E11`); several are AND-ed;
- `characteristic` entries, each AND-ed, or AND NOT-ed when `exclude` is true:
  - a search: `code` cohort-characteristic#fhir-query, `valueBoolean` true, the search in
    the extension `cohort-criterion` (`valueExpression.expression`);
  - age in years at the evaluation date: `code` LOINC 30525-0, `valueRange` (low / high,
    inclusive, whole years);
  - sex: `code` LOINC 46098-0, `valueCodeableConcept` an administrative-gender code.

A search on another type than Patient selects the patients in whose compartment a matching
resource is (the member-filter's meaning): an Observation of Patient/1 with
`value-quantity=gt8` makes Patient/1 match. Searches on Patient, age and sex select
patients directly. Only patients that exist (and that the requester may see) are members.

Evaluation streams each criterion's matches a page at a time into a scratch table of the
cohort store and combines them there (INTERSECT, EXCEPT): a cohort of a million patients is
never a million ids in memory. The members are recorded with the evaluation date, so that a
cohort can be re-run, compared with an earlier run, counted, and exported.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson

from fhir_server.analytics.cohort_store import CohortStore, Evaluation
from fhir_server.model import jsonio
from fhir_server.model.outcome import error
from fhir_server.model.resource_types import is_resource_type
from fhir_server.search.compartment import compartment_params
from fhir_server.search.errors import SearchError
from fhir_server.search.query import parse_search

MEMBER_FILTER = "http://hl7.org/fhir/uv/bulkdata/StructureDefinition/member-filter"
CRITERION_EXTENSION = "https://diatabase.org/fhir/StructureDefinition/cohort-criterion"
CHARACTERISTIC_SYSTEM = "https://diatabase.org/fhir/CodeSystem/cohort-characteristic"
LOINC = "http://loinc.org"
AGE, SEX = "30525-0", "46098-0"
GENDER_SYSTEM = "http://hl7.org/fhir/administrative-gender"
FHIR_QUERY = "application/x-fhir-query"
PAGE = 1000
ID_BATCH = 100  # ids in one `_id` search (the default DIATABASE_MAX_OR_VALUES)
# Result parameters select nothing: a criterion carrying one is refused.
NOT_CRITERIA = ("_count", "_sort", "_include", "_revinclude", "_summary", "_elements",
                "_total", "_contained", "_containedType", "_cursor")
_PATIENT_REF = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})$")
_WHERE = re.compile(r"\.where\((?:[^()]|\([^()]*\))*\)")  # one level of nested calls


@dataclass(frozen=True)
class Criterion:
    resource_type: str
    items: tuple[tuple[str, str], ...]
    exclude: bool
    text: str  # as written, for messages


def definition_of(group: dict[str, Any], today: date) -> list[Criterion]:
    """The criteria of a Group definition (400 naming what cannot be evaluated)."""
    criteria = []
    for extension in group.get("modifierExtension") or []:
        if extension.get("url") != MEMBER_FILTER:
            raise error(400, "not-supported", f"Group.modifierExtension {extension.get('url')}"
                        " is not understood: the cohort cannot be evaluated")
        criteria.append(_query(extension.get("valueExpression"), False, "member-filter"))
    for index, characteristic in enumerate(group.get("characteristic") or []):
        where = f"Group.characteristic[{index}]"
        exclude = characteristic.get("exclude") is True
        codes = {(c.get("system"), c.get("code"))
                 for c in (characteristic.get("code") or {}).get("coding") or []}
        if (CHARACTERISTIC_SYSTEM, "fhir-query") in codes:
            expression = next((e.get("valueExpression") for e in
                               characteristic.get("extension") or []
                               if e.get("url") == CRITERION_EXTENSION), None)
            criteria.append(_query(expression, exclude, where))
        elif (LOINC, AGE) in codes:
            criteria.append(_age(characteristic.get("valueRange"), exclude, today, where))
        elif (LOINC, SEX) in codes:
            criteria.append(_sex(characteristic.get("valueCodeableConcept"), exclude, where))
        else:
            raise error(400, "not-supported", f"{where}: only searches ({CHARACTERISTIC_SYSTEM}"
                        f"#fhir-query), age (LOINC {AGE}) and sex (LOINC {SEX}) are evaluated",
                        where)
    if not criteria:
        raise error(400, "invalid", "The Group defines no criterion (member-filter or "
                    "characteristic): nothing to evaluate")
    return criteria


def _query(expression: Any, exclude: bool, where: str) -> Criterion:
    if not isinstance(expression, dict) or expression.get("language") != FHIR_QUERY \
            or not isinstance(expression.get("expression"), str):
        raise error(400, "invalid", f"{where}: a valueExpression in {FHIR_QUERY} is needed",
                    where)
    text = expression["expression"]
    rtype, mark, query = text.partition("?")
    if not is_resource_type(rtype):
        raise error(400, "invalid", f"{where}: {text} does not start with a resource type",
                    where)
    items = tuple(parse_qsl(query, keep_blank_values=True))
    bad = [k for k, _ in items if k.split(":")[0] in NOT_CRITERIA]
    if bad:
        raise error(400, "invalid", f"{where}: {bad[0]} selects no resource", where)
    if rtype != "Patient" and not compartment_params("Patient", rtype):
        raise error(400, "not-supported", f"{where}: {rtype} is not in the Patient "
                    "compartment, so it says nothing of a patient", where)
    return Criterion(rtype, items, exclude, text)


def _age(value: Any, exclude: bool, today: date, where: str) -> Criterion:
    if not isinstance(value, dict):
        raise error(400, "invalid", f"{where}: an age needs a valueRange (years)", where)
    items = []
    for bound in ("low", "high"):
        quantity = value.get(bound)
        if quantity is None:
            continue
        years = quantity.get("value") if isinstance(quantity, dict) else None
        unit = quantity.get("code", quantity.get("unit", "a")) if isinstance(quantity,
                                                                               dict) else None
        if not isinstance(years, int | float) or years != int(years) or unit not in ("a", "yr",
                                                                                    "years"):
            raise error(400, "invalid", f"{where}: age bounds are whole years (unit a)", where)
        if bound == "low":  # at least `years` old: born on or before today - years
            items.append(("birthdate", f"le{_years_before(today, int(years))}"))
        else:  # at most `years` old: born after today - (years + 1)
            items.append(("birthdate", f"gt{_years_before(today, int(years) + 1)}"))
    if not items:
        raise error(400, "invalid", f"{where}: the age range has no bound", where)
    return Criterion("Patient", tuple(items), exclude, f"age {value}")


def _sex(value: Any, exclude: bool, where: str) -> Criterion:
    codes = [c.get("code") for c in (value or {}).get("coding") or []
             if c.get("system") in (GENDER_SYSTEM, None)]
    if not codes or not all(isinstance(c, str) for c in codes):
        raise error(400, "invalid", f"{where}: sex needs an administrative-gender code", where)
    return Criterion("Patient", (("gender", ",".join(codes)),), exclude, f"sex {codes}")


def _years_before(today: date, years: int) -> str:
    try:
        return today.replace(year=today.year - years).isoformat()
    except ValueError:  # 29 February
        return today.replace(year=today.year - years, day=28).isoformat()


def definition_hash(group: dict[str, Any]) -> str:
    parts = {k: group.get(k) for k in ("modifierExtension", "characteristic")}
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()


class Cohorts:
    def __init__(self, service: Any, store: CohortStore) -> None:
        self.service = service
        self.store = store

    # -- evaluation ----------------------------------------------------------------------

    def evaluate(self, group_id: str, group: dict[str, Any],
                 now: datetime | None = None) -> Evaluation:
        """Evaluate the definition now (with the caller's visibility) and record it."""
        if group.get("actual") is not False:
            raise error(400, "invalid", f"Group/{group_id} is not a definition (actual is "
                        "not false): its members are listed in it")
        moment = now or datetime.now(UTC)
        criteria = definition_of(group, moment.date())
        for criterion in criteria:
            self._check(criterion)
        tables = []
        patient_items: list[tuple[str, str]] = []
        positives, negatives = [], []
        try:
            for n, criterion in enumerate(criteria):
                if criterion.resource_type == "Patient" and not criterion.exclude:
                    patient_items.extend(criterion.items)  # applied when members are checked
                    continue
                name = f"c{n}"
                tables.append(name)
                self.store.scratch(name, self._patients_of(criterion))
                (negatives if criterion.exclude else positives).append(name)
            if not positives:
                # Only Patient criteria and exclusions: every patient is a candidate.
                tables.append("everyone")
                self.store.scratch("everyone", self._patient_ids(patient_items, None))
                positives.append("everyone")
            tables.append("candidates")
            self.store.combine("candidates", positives, negatives)
            members = self._existing(self.store.scratch_batches("candidates", ID_BATCH),
                                     patient_items)
            tables.append("final")
            self.store.scratch("final", (pid for batch in members for pid in batch))
            return self.store.record(group_id, definition_hash(group), "final",
                                     moment.timestamp())
        finally:
            self.store.drop_scratch(tables)

    def _check(self, criterion: Criterion) -> None:
        try:
            parse_search(criterion.resource_type, list(criterion.items),
                         self.service.registry, True)
        except SearchError as exc:
            raise error(400, exc.code, f"{criterion.text}: {exc}") from None

    def _pages(self, rtype: str, items: list[tuple[str, str]], bodies: bool
               ) -> Iterator[list[Any]]:
        query = parse_search(rtype, items, self.service.registry, True)
        cursor = None
        while True:
            page = self.service.storage.search(query, PAGE, cursor, bodies)
            yield page.matches
            cursor = page.next_cursor
            if cursor is None:
                return

    def _patients_of(self, criterion: Criterion) -> Iterator[str]:
        """The patients a criterion selects: Patients matching it, or the patients in whose
        compartment a matching resource is."""
        rtype = criterion.resource_type
        if rtype == "Patient":
            yield from self._patient_ids(list(criterion.items), None)
            return
        paths = compartment_paths(self.service.registry, rtype)
        for page in self._pages(rtype, list(criterion.items), True):
            for stored in page:
                if stored.json is not None:
                    yield from patient_references(jsonio.loads(stored.json), paths)

    def _patient_ids(self, items: list[tuple[str, str]], ids: list[str] | None
                     ) -> Iterator[str]:
        if ids is not None:
            items = [*items, ("_id", ",".join(ids))]
        for page in self._pages("Patient", items, False):
            for stored in page:
                yield stored.id

    def _existing(self, batches: Iterable[list[str]], items: list[tuple[str, str]]
                  ) -> Iterator[list[str]]:
        """Of each batch, the patients that exist, are visible and match the Patient
        criteria (one search per batch), sorted."""
        for batch in batches:
            found = sorted(self._patient_ids(items, batch))
            if found:
                yield found

    # -- snapshots -----------------------------------------------------------------------

    def member_batches(self, group_id: str, group: dict[str, Any]) -> Iterator[list[str]]:
        """The members of the latest evaluation (evaluated now if it never was)."""
        evaluation = self.store.evaluation(group_id)
        if evaluation is None:
            evaluation = self.evaluate(group_id, group)
        return self.store.member_batches(evaluation)


def compartment_paths(registry: Any, rtype: str) -> list[list[str]]:
    """The element paths of the parameters linking `rtype` to a patient's compartment, as
    lists of JSON keys (`Observation.subject` -> ["subject"])."""
    paths = []
    for code in compartment_params("Patient", rtype):
        param = registry.get(rtype, code)
        if param is None or not param.expression:
            continue
        for part in param.expression.split("|"):
            part = _WHERE.sub("", part.strip()).strip("() ")
            steps = part.split(".")
            if steps and steps[0] == rtype and all(s.isidentifier() for s in steps[1:]):
                paths.append(steps[1:])
    return paths


def patient_references(resource: dict[str, Any], paths: list[list[str]]) -> set[str]:
    found: set[str] = set()
    for path in paths:
        nodes: list[Any] = [resource]
        for step in path:
            nodes = [child for node in nodes if isinstance(node, dict)
                     for child in _as_list(node.get(step))]
        for node in nodes:
            reference = node.get("reference") if isinstance(node, dict) else None
            match = _PATIENT_REF.search(reference) if isinstance(reference, str) else None
            if match:
                found.add(match.group(1))
    return found


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]

