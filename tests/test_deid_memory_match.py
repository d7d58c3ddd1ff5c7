"""The in-memory clause matcher (search/memory_match.py) the facade uses on de-identified
resources, and the view policy (deid/view_search.py) that decides what it must check.

The matcher is compared with the SQLite backend on the same resources and queries: both
must say the same, or the facade would answer differently from the clinical API on data
the view does not change. Date widening is checked as a property: a stored period whose
de-identified version (moved by at most the margin) matches a value must match the
widened value in storage, or a candidate would be lost.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fhir_server.deid.rules import load_rules
from fhir_server.deid.view_search import ViewPolicy, date_margin, widen_date
from fhir_server.search.errors import UnsupportedModifier
from fhir_server.search.memory_match import clause_matches
from fhir_server.search.query import parse_search
from fhir_server.search.ranges import date_predicate
from fhir_server.search.registry import SearchParamRegistry
from fhir_server.search.values import DateValue
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage import open_storage

REGISTRY = SearchParamRegistry.default()
NOW = 1_750_000_000.0

PATIENTS = [
    {
        "resourceType": "Patient",
        "id": "p1",
        "name": [{"family": "Lefèvre", "given": ["Héloïse"]}],
        "identifier": [
            {"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "184067512345612"},
            {"value": "no-system"},
        ],
        "telecom": [{"system": "phone", "value": "+33 6 12 34 56 78"}],
        "birthDate": "1976-05-03",
        "gender": "female",
        "address": [{"city": "Saint-Étienne", "postalCode": "42000", "country": "FR"}],
    },
    {
        "resourceType": "Patient",
        "id": "p2",
        "name": [{"family": "Dubois-Martin", "given": ["Mathéo"]}],
        "identifier": [{"system": "urn:oid:1.2.250.1.999.1.1", "value": "IPP000001X"}],
        "birthDate": "1976",
        "gender": "male",
    },
    {"resourceType": "Patient", "id": "p3", "gender": "other", "birthDate": "2001-12-31"},
]
OBSERVATIONS = [
    {
        "resourceType": "Observation",
        "id": f"o{n}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": "Glucose"}]},
        "effectiveDateTime": when,
        "valueString" if n == 3 else "valueQuantity": "élevé"
        if n == 3
        else {"value": value, "system": "http://unitsofmeasure.org", "code": "mg/dL"},
    }
    for n, (code, when, value) in enumerate(
        [
            ("2339-0", "2024-03-05T08:00:00+01:00", 95),
            ("2339-0", "2024-03-06", 180),
            ("4548-4", "2024-03", 7.4),
            ("2339-0", "2023-12-31T23:59:59Z", 0),
        ]
    )
] + [
    {
        "resourceType": "Observation",
        "id": "o4",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
        "valueDateTime": "2024-03-06T10:00:00Z",
    }
]

QUERIES = {
    "Patient": [
        "name=heloise",
        "name=HÉLO",
        "name=lefevre",
        "family=dubois",
        "family=martin",
        "family:exact=Lefèvre",
        "family:exact=lefèvre",
        "family:contains=martin",
        "family:contains=EVR",
        "name:missing=true",
        "name:missing=false",
        "address-city=saint-etienne",
        "address-city:exact=Saint-Étienne",
        "identifier=184067512345612",
        "identifier=urn:oid:1.2.250.1.213.1.4.8|184067512345612",
        "identifier=urn:oid:1.2.250.1.213.1.4.8|",
        "identifier=|no-system",
        "identifier=|184067512345612",
        "identifier=IPP000001X,no-system",
        "identifier:not=IPP000001X",
        "identifier:missing=true",
        "phone=+33 6 12 34 56 78",
        "birthdate=1976",
        "birthdate=1976-05",
        "birthdate=ne1976",
        "birthdate=gt1976-05-03",
        "birthdate=ge1976-05-03",
        "birthdate=lt1976-06",
        "birthdate=le1976-05-02",
        "birthdate=sa1976",
        "birthdate=eb1977",
        "birthdate=ap2001-12",
        "gender=female,other",
        "gender:not=male",
    ],
    "Observation": [
        "date=2024-03-05",
        "date=2024-03",
        "date=ge2024-03-05T08:00:00+01:00",
        "date=gt2024-03-05",
        "date=lt2024-03-05",
        "date=le2024-03-05",
        "date=sa2024-03-05",
        "date=eb2024-03-06",
        "date=ne2024-03-06",
        "date=2023-12-31T23:59:59Z",
        "date=ap2024-03-05",
        "code=http://loinc.org|2339-0",
        "code:text=gluc",
        "value-string=ele",
        "value-string:exact=élevé",
        "code-value-date=2339-0$2024-03-06",
        "code-value-date=2339-0$ge2024-03-06",
        "code-value-string=2339-0$elev",
        "code-value-quantity=2339-0$gt100",
        "value-quantity=95||mg/dL",
        "value-quantity=ge7",
    ],
}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> FhirService:
    folder: Path = tmp_path_factory.mktemp("memory-match")
    url = f"sqlite:///{folder / 'db.sqlite'}"
    service = FhirService(open_storage(url), Settings(db_url=url))
    for resource in PATIENTS + OBSERVATIONS:
        service.resources.update(resource["resourceType"], resource["id"], dict(resource))
    return service


def in_memory(service: FhirService, rtype: str, query: str, now: float = NOW) -> list[str]:
    parsed = parse_search(rtype, [tuple(query.split("=", 1))], REGISTRY)
    (clause,) = parsed.clauses
    resources = PATIENTS if rtype == "Patient" else OBSERVATIONS
    return sorted(
        r["id"]
        for r in resources
        if clause_matches(clause, service.extractor.extract(r), now)  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("rtype", "query"), [(t, q) for t, queries in QUERIES.items() for q in queries]
)
def test_in_memory_matching_agrees_with_sqlite(
    service: FhirService, rtype: str, query: str
) -> None:
    parsed = service.search.parse(rtype, [tuple(query.split("=", 1))], strict=True)  # type: ignore[list-item]
    stored = sorted(r.id for r in service.storage.search(parsed, 100, None).matches)
    # `ap` is relative to now: the same now on both sides (to the test's precision).
    assert in_memory(service, rtype, query, time.time()) == stored


def test_some_queries_match_and_some_do_not(service: FhirService) -> None:
    """The agreement above is not vacuous."""
    assert in_memory(service, "Patient", "name=heloise") == ["p1"]
    assert in_memory(service, "Patient", "family:exact=lefèvre") == []
    assert in_memory(service, "Patient", "birthdate=1976") == ["p1", "p2"]
    assert in_memory(service, "Patient", "birthdate=ap2001-12") == ["p3"]
    assert in_memory(service, "Observation", "date=2024-03") == ["o0", "o1", "o2"]
    assert in_memory(service, "Observation", "code-value-date=2339-0$2024-03-06") == ["o4"]
    assert in_memory(service, "Observation", "code-value-string=2339-0$elev") == ["o3"]
    assert in_memory(service, "Observation", "code-value-quantity=2339-0$gt100") == ["o1"]


def test_terminology_modifiers_are_refused_not_silently_empty(service: FhirService) -> None:
    parsed = parse_search("Observation", [("code:below", "http://loinc.org|2339-0")], REGISTRY)
    with pytest.raises(UnsupportedModifier):
        clause_matches(parsed.clauses[0], [], NOW)  # type: ignore[arg-type]


# -- the view policy --------------------------------------------------------------------------

RULES = load_rules()
POLICY = ViewPolicy(RULES)


@pytest.mark.parametrize(
    ("rtype", "code", "view"),
    [
        ("Patient", "name", True),
        ("Patient", "birthdate", True),
        ("Patient", "identifier", True),
        ("Patient", "telecom", True),
        ("Patient", "_lastUpdated", True),
        ("Patient", "_security", True),
        ("Patient", "_source", True),
        ("Patient", "gender", False),
        ("Patient", "address-use", False),
        ("Patient", "organization", False),
        ("Patient", "_id", False),
        ("Patient", "_tag", True),  # meta.tag is redacted
        ("Observation", "code", False),
        ("Observation", "value-quantity", True),  # glucose values carry a watermark
        ("Observation", "subject", False),
        ("Observation", "date", True),
        # Rules-driven: the default rules redact these elements.
        ("DocumentReference", "location", True),
        ("DocumentReference", "description", True),
        ("Device", "udi-carrier", True),
        ("Immunization", "lot-number", True),
    ],
)
def test_view_parameters(rtype: str, code: str, view: bool) -> None:
    param = REGISTRY.get(rtype, code)
    assert param is not None
    assert POLICY.is_view_param(param, rtype) is view


def test_a_custom_rule_makes_a_token_a_view_parameter() -> None:
    from fhir_server.deid.rules import default_config, parse_rules

    config = default_config()
    config["fhirPathRules"].insert(0, {"path": "Observation.category", "method": "redact"})
    policy = ViewPolicy(parse_rules(config, b""))
    param = REGISTRY.get("Observation", "category")
    assert param is not None
    assert policy.is_view_param(param, "Observation")
    assert not POLICY.is_view_param(param, "Observation")


def test_the_margin_covers_shift_month_truncation_year_generalization_and_watermark() -> None:
    assert date_margin(RULES) == (365 + 367) * 86_400 + 60


PERIOD = st.tuples(
    st.integers(min_value=0, max_value=2_000_000_000), st.integers(min_value=1, max_value=10**8)
)


@given(
    stored=PERIOD,
    searched=PERIOD,
    move=st.tuples(st.floats(-1, 1), st.floats(-1, 1)),
    prefix=st.sampled_from(["eq", "gt", "lt", "ge", "le", "sa", "eb", "ne", "ap"]),
)
def test_widening_never_loses_a_candidate(
    stored: tuple[int, int], searched: tuple[int, int], move: tuple[float, float], prefix: str
) -> None:
    margin = 1_000_000.0
    low, high = float(stored[0]), float(stored[0] + stored[1])
    view_low = low + move[0] * margin
    view_high = max(view_low + 1, high + move[1] * margin)
    if abs(view_high - high) > margin:
        return  # not a move de-identification can make
    value = DateValue(prefix, float(searched[0]), float(searched[0] + searched[1]), "x", "day")
    widened = widen_date(value, margin)
    if widened is None:
        assert prefix in ("ne", "ap")  # these are dropped from storage, not widened
        return
    if date_predicate(value, NOW).matches(low=view_low, high=view_high):
        assert date_predicate(widened, NOW).matches(low=low, high=high)


def test_extracting_only_some_parameters_gives_their_entries_of_a_full_extraction(
    service: FhirService,
) -> None:
    for resource in PATIENTS + OBSERVATIONS:
        full = service.extractor.extract(resource)
        for codes in ({"date"}, {"identifier", "name"}, {"code-value-date"}, set()):
            only = service.extractor.extract(resource, frozenset(codes))
            assert only == [entry for entry in full if entry[0] in codes]
    assert service.extractor.extract(PATIENTS[0], frozenset({"name"}))  # not vacuous
