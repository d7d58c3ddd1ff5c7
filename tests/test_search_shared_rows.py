"""`combo-*` parameters answered from the rows of `code`, `value-quantity` and their
`component-*` twins (SQLite stores no rows of its own for them), on a real database: every
search gives what the definitions say, and the rows are really not stored twice."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl

import orjson
import pytest

from fhir_server.model import jsonio
from fhir_server.search.registry import SearchParamRegistry
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage import open_storage

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def quantity(value: float, unit: str) -> dict:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def concept(code: str) -> dict:
    return {"coding": [{"system": LOINC, "code": code}]}


OBSERVATIONS = {
    # a glucose reading: code and value on the Observation itself
    "glucose": {"code": concept("2339-0"), "valueQuantity": quantity(150, "mg/dL")},
    # blood pressure: the values are in components only
    "bp": {
        "code": concept("85354-9"),
        "component": [
            {"code": concept("8480-6"), "valueQuantity": quantity(140, "mm[Hg]")},
            {"code": concept("8462-4"), "valueQuantity": quantity(90, "mm[Hg]")},
        ],
    },
    # both: a value and a component
    "both": {
        "code": concept("2339-0"),
        "valueQuantity": quantity(90, "mg/dL"),
        "component": [{"code": concept("8480-6"), "valueQuantity": quantity(120, "mm[Hg]")}],
    },
    "no-value": {"code": concept("4548-4")},
}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirService]:
    url = f"sqlite:///{tmp_path_factory.mktemp('shared') / 'db.sqlite'}"
    svc = FhirService(open_storage(url), Settings(db_url=url))
    for rid, body in OBSERVATIONS.items():
        resource = {"resourceType": "Observation", "id": rid, "status": "final", **body}
        svc.resources.update("Observation", rid, resource)
    yield svc
    svc.storage.close()


def ids(service: FhirService, query: str) -> list[str]:
    bundle = service.search_bundle("Observation", parse_qsl(query), "http://test", True)
    bundle = orjson.loads(jsonio.dumps(bundle))  # stored resources come as raw fragments
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (f"combo-code={LOINC}|2339-0", {"glucose", "both"}),
        (f"combo-code={LOINC}|8480-6", {"bp", "both"}),
        ("combo-code=8462-4", {"bp"}),
        (f"combo-code={LOINC}|4548-4,{LOINC}|8462-4", {"no-value", "bp"}),
        (f"combo-code:not={LOINC}|8480-6", {"glucose", "no-value"}),
        ("combo-value-quantity=gt130", {"glucose", "bp"}),
        (f"combo-value-quantity=lt100|{UCUM}|mm[Hg]", {"bp"}),
        ("combo-value-quantity=ge90&combo-value-quantity=le90", {"bp", "both"}),
        ("combo-value-quantity:missing=true", {"no-value"}),
        ("combo-value-quantity:missing=false", {"glucose", "bp", "both"}),
        (f"combo-code-value-quantity={LOINC}|8480-6$gt130", {"bp"}),
        (f"combo-code-value-quantity={LOINC}|2339-0$lt100", {"both"}),
        (f"combo-code-value-quantity={LOINC}|8480-6$lt130", {"both"}),
        # the plain parameters still see only their own branch
        (f"code={LOINC}|8480-6", set()),
        (f"component-code={LOINC}|8480-6", {"bp", "both"}),
        ("value-quantity=gt130", {"glucose"}),
    ],
)
def test_combo_searches_follow_the_definitions(
    service: FhirService, query: str, expected: set[str]
) -> None:
    found = ids(service, query)
    assert len(found) == len(set(found)), "a resource came twice"
    assert set(found) == expected


def test_sort_and_count_on_a_combo_parameter(service: FhirService) -> None:
    # Smallest value of each: both 90, bp 90, glucose 150 (ties broken by id order)
    ascending = ids(service, "combo-value-quantity:missing=false&_sort=combo-value-quantity")
    assert ascending[-1] == "glucose"
    bundle = service.search_bundle(
        "Observation", [("combo-code", f"{LOINC}|8480-6"), ("_summary", "count")], "x", True
    )
    assert bundle["total"] == 2


def test_combo_rows_are_not_stored_twice(service: FhirService) -> None:
    conn = sqlite3.connect(Path(service.storage.path))
    combo_rows = conn.execute(
        "SELECT count(*) FROM search_params p JOIN idx_token t ON t.pid = p.pid "
        "WHERE p.rtype = 'Observation' AND p.code LIKE 'combo-%'"
    ).fetchone()[0]
    code_rows = conn.execute(
        "SELECT count(*) FROM search_params p JOIN idx_token t ON t.pid = p.pid "
        "WHERE p.rtype = 'Observation' AND p.code = 'code'"
    ).fetchone()[0]
    conn.close()
    assert combo_rows == 0
    assert code_rows == len(OBSERVATIONS)


def test_only_official_parameters_share_rows() -> None:
    registry = SearchParamRegistry.default()
    assert registry.pid_codes("Observation", "combo-code") == (
        "combo-code",
        "code",
        "component-code",
    )
    assert registry.pid_codes("Observation", "code") == ("code",)
    registry.add(
        {
            "resourceType": "SearchParameter",
            "url": "https://diatabase.org/fhir/SearchParameter/any-code",
            "name": "any-code",
            "status": "active",
            "code": "any-code",
            "base": ["Observation"],
            "type": "token",
            "expression": "Observation.code | Observation.component.code",
        }
    )
    # a custom union is indexed in full: a later custom parameter cannot change its rows
    assert registry.pid_codes("Observation", "any-code") == ("any-code",)


def test_extract_only_gives_a_combo_parameter_its_whole_expression(
    service: FhirService,
) -> None:
    """In-memory matching (the de-identification facade) asks for one parameter's entries:
    it must get them all, not just the branches SQLite stores under that parameter."""
    resource = {"resourceType": "Observation", "status": "final", **OBSERVATIONS["both"]}
    stored = {entry[0] for entry in service.extractor.extract(resource)}
    assert "combo-code" not in stored and "code" in stored
    only = service.extractor.extract(resource, frozenset({"combo-code"}))
    assert {(entry.param, entry.code) for entry in only} == {
        ("combo-code", "2339-0"),
        ("combo-code", "8480-6"),
    }
