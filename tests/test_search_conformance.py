"""Table-driven search conformance over HTTP against a real server (sqlite backend).

A fixed set of 32 hand-written resources (tests/data/search/conformance_resources.json:
partial dates, time zones, accents, units, missing values, several codings, references
by relative id, absolute URL and identifier, several identifiers) is PUT once, in file
order; the server's default order is insertion order. Each row of QUERIES is a request
and the exact ids, in order, of its `match` entries (and, after `|`, of its `include`
entries).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fhir_server.settings import Settings
from tests.conftest import RunningServer, database_url

DATA = Path(__file__).parent / "data" / "search" / "conformance_resources.json"
INS = "urn:oid:1.2.250.1.213.1.4.8"
SD = "https://diatabase.org/fhir/StructureDefinition/"
TAGS = "https://diatabase.org/fhir/tags"
ICD = "http://hl7.org/fhir/sid/icd-10"
UCUM = "http://unitsofmeasure.org"

# (request path and query, expected "match ids | include ids"); empty string: no match.
# Unsorted searches come in insertion order, those filtered on a date range (and nothing
# else that leads, search/implied_order.py) latest first, as `_sort=-date` gives them.
QUERIES: list[tuple[str, str]] = [
    # -- date: prefixes, partial dates, time zones, periods ---------------------------------
    ("Observation?date=2024-03-01", "o1"),
    ("Observation?date=2024-03", "o10 o3 o2 o1"),
    ("Observation?date=eq2024", "o9 o5 o4 o10 o3 o2 o1 o8 o7"),
    ("Observation?date=2023", "o6"),
    ("Observation?date=gt2024-03-15", "o9 o5 o4 o10"),
    ("Observation?date=ge2024-03-15", "o9 o5 o4 o10 o3"),
    ("Observation?date=lt2024-01-15", "o7 o6"),
    ("Observation?date=le2023-12-31", "o6"),
    ("Observation?date=sa2024-03-31", "o9 o5 o4"),
    ("Observation?date=eb2024-01-01", "o6"),
    ("Observation?date=ne2024", "o6"),
    ("Observation?date=2024-03-01T23:30:00-05:00", "o2"),
    ("Observation?date=2024-03-02T04:30:00Z", "o2"),
    ("Observation?date=2024-03-02", "o2"),
    ("Observation?date=ge2024-03-01T08:00:00%2B01:00", "o9 o5 o4 o10 o3 o2 o1"),
    ("Observation?date=ge2024-03-01T08:31:00%2B01:00", "o9 o5 o4 o10 o3 o2"),
    ("Observation?date=ge2024-01-15&date=lt2024-02-01", "o7"),
    ("Observation?date=2024-01-15", ""),
    ("Observation?date=2024-01", "o7"),
    ("Observation?date=2024-02-29", "o8"),
    ("Observation?date=2023,2024-05", "o9 o6"),
    ("Observation?date:missing=true", ""),
    # patient + date: answered from the (owner, pid, low) index; periods widen the range
    ("Observation?patient=p1&date=ge2024-03-02&date=lt2024-03-16", "o2 o3"),
    ("Observation?patient=Patient/p2&date=gt2024-04-10T12:00:00Z", "o5"),
    ("Observation?patient=p4&date=ge2024-01-15", "o7"),
    ("Observation?patient=p4&date=lt2024-01-02&date=ge2024-01-31", "o7"),
    ("Observation?patient=p1,p2&date=ge2024-04", "o4 o5"),
    ("Condition?patient=p3&onset-date=ge2012-06", "c3"),
    ("Condition?patient=p3&onset-date=gt2012-06", ""),
    ("Condition?onset-date=ap2010", "c3"),
    ("Condition?onset-date=2011", ""),
    ("Condition?onset-date=ge2011&onset-date=le2011", "c3"),
    ("Condition?onset-date:missing=true", "c4"),
    ("Condition?onset-date=2020-02-03T11:00:00%2B01:00", "c5"),
    ("Patient?birthdate=1985", "p2"),
    ("Patient?birthdate=1985-06", ""),
    ("Patient?birthdate=ge1985-06", "p4 p2"),
    ("Patient?birthdate=lt1970", "p3"),
    ("Patient?birthdate=le1970-03-15", "p1 p3"),
    ("Patient?birthdate=1962-11", "p3"),
    ("Patient?birthdate=1962", "p3"),
    ("Patient?birthdate=1962-11-05", ""),
    ("Patient?birthdate=ne1985", "p1 p3 p4"),
    ("Patient?birthdate:missing=true", "p5"),
    ("Patient?birthdate:missing=false", "p1 p2 p3 p4"),
    ("MedicationRequest?authoredon=2024-03-01", "mr1"),
    ("Encounter?date=2024-03-01", "e1"),
    ("Encounter?date=2024-04-12", ""),
    ("Encounter?date=ge2024-04-12", "e2"),
    # -- string: prefix match, accents, case, :exact, :contains --------------------------------
    ("Patient?name=dupont", "p1"),
    ("Patient?name=Dup", "p1 p4"),
    ("Patient?name=helene", "p1"),
    ("Patient?name=H%C3%89L%C3%88NE", "p1"),
    ("Patient?family=lefevre", "p3"),
    ("Patient?given=%C3%89lo%C3%AFse", "p2"),
    ("Patient?given=eloise", "p2"),
    ("Patient?name:exact=Dupont", "p1"),
    ("Patient?name:exact=dupont", ""),
    ("Patient?given:exact=H%C3%A9l%C3%A8ne", "p1"),
    ("Patient?name:contains=pon", "p1 p4"),
    ("Patient?name:contains=ean", "p3 p5"),
    ("Patient?name=o'brien", "p5"),
    ("Patient?name=jean,marc", "p3 p4"),
    ("Patient?name=du&gender=male", "p4"),
    ("Patient?given=pierre", "p3"),
    ("Patient?name=ierre", ""),
    ("Patient?address-city=saint", "p2"),
    ("Patient?address-city=nantes", "p1"),
    ("Patient?address-city:missing=true", "p3 p4 p5"),
    ("Patient?family:missing=true", ""),
    ("Organization?name=chu", "org1"),
    ("Organization?name=clinique%20saint-etienne", "org2"),
    ("Practitioner?name=claire", "pr1"),
    ("Patient?name=%27%20OR%201%3D1", ""),
    # -- token: system|code, |code, system|, :not, :text, :missing -----------------------------
    ("Patient?gender=female", "p1 p2"),
    ("Patient?gender=male,unknown", "p3 p4 p5"),
    ("Patient?gender:not=female", "p3 p4 p5"),
    ("Patient?gender:not=male", "p1 p2 p5"),
    ("Patient?gender:missing=true", ""),
    ("Patient?active=true", "p1 p3"),
    ("Patient?active=false", "p2"),
    ("Patient?active:missing=true", "p4 p5"),
    (f"Patient?identifier={INS}|184057512345625", "p1"),
    ("Patient?identifier=184057512345625", "p1"),
    (f"Patient?identifier={INS}|", "p1 p2 p4"),
    ("Patient?identifier=http://hopital.example/mrn|MRN-4", "p4"),
    ("Patient?identifier=|MRN-4", ""),
    ("Patient?identifier:missing=true", "p3 p5"),
    ("Patient?email=helene.dupont@example.org", "p1"),
    ("Patient?telecom=helene.dupont@example.org", "p1"),
    ("Observation?code=2339-0", "o1 o7 o9"),
    ("Observation?code=http://loinc.org|2339-0", "o1 o7 o9"),
    ("Observation?code=http://snomed.info/sct|2339-0", ""),
    ("Observation?code=2339-0,15074-8", "o1 o2 o7 o9"),
    ("Observation?code=http://loinc.org|4548-4", "o3 o6"),
    ("Observation?code=http://hopital.example/codes|HBA1C", "o6"),
    ("Observation?code=http://loinc.org|4548-4&code=http://hopital.example/codes|HBA1C", "o6"),
    ("Observation?code:text=glyqu%C3%A9e", "o6"),
    ("Observation?code:text=hemoglobine", "o6"),
    ("Observation?code:not=http://loinc.org|2339-0", "o2 o3 o4 o5 o6 o8 o10"),
    ("Observation?status=final", "o1 o2 o3 o4 o6 o9 o10"),
    ("Observation?status:not=final", "o5 o7 o8"),
    ("Observation?status=final&status=preliminary", ""),
    ("Observation?category=laboratory", "o1 o2 o3 o6"),
    ("Observation?category:missing=true", "o4 o5 o7 o8 o9 o10"),
    ("Observation?value-concept=http://snomed.info/sct|260385009", "o10"),
    ("Observation?value-concept:text=negatif", "o10"),
    ("Observation?identifier=http://lab.example/obs|L-1", "o1"),
    ("Condition?code=E11.9", "c1"),
    (f"Condition?code={ICD}|", "c1 c3 c4"),
    ("Condition?code=44054006", "c1"),
    ("Condition?code=https://smt.esante.gouv.fr/terminologie-cim-10/|E10.9", "c2"),
    ("Condition?code=E10.9", "c2"),
    ("Condition?code:text=diabete", "c1 c2 c5"),
    ("Condition?code:text=type%201", "c2"),
    ("Condition?clinical-status=active", "c1 c2"),
    ("Condition?clinical-status:not=active", "c3 c4 c5"),
    (f"Patient?_tag={TAGS}|cohort-a", "p1 p3"),
    (f"Patient?_tag:not={TAGS}|cohort-a", "p2 p4 p5"),
    ("Patient?_tag:missing=true", "p4 p5"),
    ("Patient?_id=p1,p3", "p1 p3"),
    ("Patient?_id=nobody", ""),
    ("Encounter?class=AMB", "e1"),
    ("MedicationStatement?code=http://www.whocc.no/atc|A10BA02", "ms1"),
    ("MedicationRequest?code=A10BA02", "mr1"),
    ("Medication?code=A10AB05", "m1"),
    ("Device?device-name=freestyle", "d1"),
    # -- number ----------------------------------------------------------------------------
    ("RiskAssessment?probability=0.25", "ra1"),
    ("RiskAssessment?probability=0.2", ""),
    ("RiskAssessment?probability=gt0.5", "ra2"),
    ("RiskAssessment?probability=le0.25", "ra1"),
    ("RiskAssessment?probability=lt0.25", ""),
    ("RiskAssessment?probability=ap0.8", "ra2"),
    ("RiskAssessment?probability=ne0.25", "ra2"),
    ("RiskAssessment?probability=0.8", "ra2"),
    ("RiskAssessment?probability=8e-1", "ra2"),
    ("RiskAssessment?probability=ge0.25&probability=le0.8", "ra1 ra2"),
    # -- quantity --------------------------------------------------------------------------
    ("Observation?value-quantity=180", "o1"),
    ("Observation?value-quantity=gt100", "o1 o5"),
    ("Observation?value-quantity=ge100", "o1 o5 o7"),
    ("Observation?value-quantity=lt8", "o2 o3 o9"),
    ("Observation?value-quantity=le7.5", "o2 o3 o9"),
    ("Observation?value-quantity=100||mg/dL", "o7"),
    (f"Observation?value-quantity=100|{UCUM}|mg/dL", ""),
    (f"Observation?value-quantity=gt7.1|{UCUM}|mmol/L&value-quantity=lt8", "o2"),
    (f"Observation?value-quantity=5.5|{UCUM}|mmol/L", "o9"),
    (f"Observation?value-quantity=53|{UCUM}|mmol/mol", "o6"),
    ("Observation?value-quantity=ne180", "o2 o3 o4 o5 o6 o7 o9"),
    ("Observation?value-quantity=ap100", "o4 o7"),
    ("Observation?value-quantity=7.5||%25", "o3"),
    ("Observation?value-quantity:missing=true", "o8 o10"),
    ("Observation?value-quantity=1.8e2", "o1"),
    ("Observation?code-value-quantity=http://loinc.org|2339-0$gt150", "o1"),
    (f"Observation?code-value-quantity=http://loinc.org|99504-3$lt100|{UCUM}|mg/dL", "o4"),
    ("Observation?code-value-quantity=4548-4$7.5", "o3"),
    ("Observation?code-value-concept=5792-7$http://snomed.info/sct|260385009", "o10"),
    # -- reference: relative, typed, absolute, identifier, :missing ----------------------------
    ("Observation?subject=Patient/p1", "o1 o2 o3 o10"),
    ("Observation?subject=p1", "o1 o2 o3 o10"),
    ("Observation?patient=p2", "o4 o5"),
    ("Observation?subject:Patient=p4", "o7"),
    ("Observation?subject:Device=p4", ""),
    ("Observation?subject=http://other.example/fhir/Patient/x9", "o9"),
    ("Observation?subject:missing=true", ""),
    ("Observation?encounter=Encounter/e1", "o1"),
    ("Observation?performer=Practitioner/pr1", "o1"),
    ("Observation?device=Device/d1", "o4 o5"),
    ("Observation?subject=Patient/p1,Patient/p5", "o1 o2 o3 o8 o10"),
    ("Patient?organization=Organization/org1", "p1"),
    ("Patient?organization=http://other.example/fhir/Organization/ext1", "p4"),
    ("Patient?organization:missing=true", "p3 p5"),
    ("Patient?general-practitioner=pr1", "p1"),
    (f"Condition?subject:identifier={INS}|184057512345625", "c5"),
    ("Condition?subject:identifier=184057512345625", "c5"),
    ("Condition?asserter=Practitioner/pr1", "c3"),
    ("Organization?partof=org1", "org2"),
    ("MedicationStatement?medication=Medication/m1", "ms2"),
    ("Device?patient=p2", "d1"),
    # -- uri: exact, :below, :above, :missing --------------------------------------------------
    (f"Patient?_profile={SD}DiabetesPatient", "p1"),
    (f"Observation?_profile={SD}BloodGlucose", "o1 o2"),
    (f"Observation?_profile:below={SD}", "o1 o2 o3"),
    (f"Observation?_profile:below={SD}BloodGlucose", "o1 o2"),
    (f"Observation?_profile:above={SD}HbA1c/v2", "o3"),
    (f"Observation?_profile={SD}", ""),
    ("Observation?_profile:missing=true", "o4 o5 o6 o7 o8 o9 o10"),
    ("Patient?_source=http://hopital.example/his", "p1"),
    ("Patient?_source:below=http://hopital.example", "p1"),
    # -- chains ----------------------------------------------------------------------------
    ("Observation?subject:Patient.name=dupont", "o1 o2 o3 o10"),
    ("Observation?patient.name=durand", "o4 o5"),
    ("Observation?subject.name=h%C3%A9l%C3%A8ne", "o1 o2 o3 o10"),
    (f"Observation?patient.identifier={INS}|2850575000001", "o4 o5"),
    ("Observation?patient.organization.name=clinique", "o4 o5"),
    ("Observation?patient.organization.partof.name=chu", "o4 o5"),
    ("Observation?patient.organization.name=chu", "o1 o2 o3 o10"),
    ("Condition?subject:Patient.gender=male", "c3 c4"),
    ("Condition?encounter.class=AMB", "c1"),
    ("Observation?encounter.service-provider.name=chu", "o1"),
    ("Observation?patient.general-practitioner.name=martin", "o1 o2 o3 o10"),
    ("Observation?patient.birthdate=ge1980", "o4 o5 o7"),
    ("MedicationStatement?medication.code=A10AB05", "ms2"),
    ("Observation?device.device-name=freestyle&value-quantity=gt100", "o5"),
    ("Observation?patient.name=nobody", ""),
    # -- _has (reverse chaining, nested) -----------------------------------------------------
    ("Patient?_has:Observation:patient:code=4548-4", "p1 p3"),
    ("Patient?_has:Observation:subject:value-quantity=gt200", "p2"),
    ("Patient?_has:Condition:subject:code=E11.9", "p1"),
    (f"Patient?_has:Condition:patient:code={ICD}|", "p1 p3 p4"),
    (
        "Organization?_has:Patient:organization:_has:Observation:patient:code=99504-3",
        "org2",
    ),
    ("Patient?_has:Observation:patient:status=cancelled", "p5"),
    ("Patient?_has:Observation:patient:code=2339-0&gender=male", "p4"),
    ("Practitioner?_has:Condition:asserter:code=E11.65", "pr1"),
    ("Encounter?_has:Observation:encounter:code=2339-0", "e1"),
    ("Patient?_has:Observation:patient:patient.organization.name=chu", "p1"),
    # -- _include / _revinclude ------------------------------------------------------------
    ("Observation?code=99504-3&_include=Observation:patient", "o4 o5 | p2"),
    (
        "Observation?code=99504-3&_include=Observation:patient&_include=Observation:device",
        "o4 o5 | p2 d1",
    ),
    ("Observation?_id=o1&_include=Observation:*", "o1 | pr1 p1 e1"),
    ("Condition?code=E11.9&_include=Condition:subject:Patient", "c1 | p1"),
    ("Condition?code=E11.9&_include=Condition:subject:Group", "c1"),
    ("Patient?_id=p1&_revinclude=Observation:patient", "p1 | o1 o2 o3 o10"),
    (
        "Patient?_id=p2&_revinclude=Observation:patient&_revinclude=Condition:subject",
        "p2 | o4 o5 c2",
    ),
    (
        "Observation?_id=o4&_include=Observation:patient&_include:iterate=Patient:organization",
        "o4 | p2 org2",
    ),
    (
        "Observation?_id=o4&_include=Observation:patient&_include:iterate=Patient:organization"
        "&_include:iterate=Organization:partof",
        "o4 | p2 org2 org1",
    ),
    (
        "Organization?_id=org1&_revinclude=Patient:organization"
        "&_revinclude:iterate=Observation:patient",
        "org1 | p1 o1 o2 o3 o10",
    ),
    ("Condition?code=E11.65&_include=Condition:asserter", "c3 | pr1"),
    ("MedicationStatement?_id=ms2&_include=MedicationStatement:medication", "ms2 | m1"),
    ("Observation?_id=o9&_include=Observation:subject", "o9"),
    ("Observation?patient=p1&_include=Observation:patient", "o1 o2 o3 o10 | p1"),
    ("Patient?_id=p2&_revinclude=*", "p2 | d1 e2 c2 o4 o5 ms2 ra2"),
    ("Organization?_id=org1&_revinclude=*", "org1 | org2 p1 e1"),
    # -- _sort -----------------------------------------------------------------------------
    ("Patient?_sort=birthdate", "p3 p1 p2 p4 p5"),
    ("Patient?_sort=-birthdate", "p4 p2 p1 p3 p5"),
    ("Patient?_sort=family", "p4 p1 p2 p3 p5"),
    ("Patient?_sort=-family", "p5 p3 p2 p1 p4"),
    ("Patient?_sort=gender,-birthdate", "p2 p1 p4 p3 p5"),
    ("Patient?_sort=-gender,birthdate", "p5 p3 p4 p1 p2"),
    ("Observation?code=2339-0&_sort=-date", "o9 o1 o7"),
    ("Observation?patient=p1&_sort=date", "o1 o2 o3 o10"),
    ("Observation?code=99504-3,2339-0&_sort=value-quantity", "o9 o4 o7 o1 o5"),
    ("Observation?code=99504-3,2339-0&_sort=-value-quantity", "o5 o1 o7 o4 o9"),
    ("Patient?_id=p1,p2,p3&_sort=-_lastUpdated", "p3 p2 p1"),
    ("Patient?_id=p3,p1,p2&_sort=_lastUpdated", "p1 p2 p3"),
    ("Condition?_sort=-_id", "c5 c4 c3 c2 c1"),
    ("Condition?_sort=-onset-date", "c5 c1 c3 c2 c4"),
    ("Condition?_sort=clinical-status,-onset-date", "c1 c2 c4 c3 c5"),
    ("RiskAssessment?_sort=-probability", "ra2 ra1"),
    ("Observation?_sort=-_profile,date&code=2339-0,4548-4", "o3 o1 o6 o7 o9"),
    # -- _count / _summary / system level / compartments / POST are below --------------------
    ("Observation?_count=4", "o1 o2 o3 o4"),
    ("Observation?_sort=-date&_count=2", "o9 o5"),
    ("Observation?_count=1&code=4548-4", "o3"),
    ("?_type=Patient,Organization&_id=p1,org1", "org1 p1"),
    ("?_id=p1", "p1"),
    ("?_type=Observation,Condition&code=E11.9,2339-0", "c1 o1 o7 o9"),
    (f"?_tag={TAGS}|cohort-a", "p1 p3"),
    ("?_type=Condition,Patient&_sort=-_id&_id=c1,p1,p2", "p2 p1 c1"),
    (f"?_type=Patient&_profile:below={SD}", "p1"),
    ("Patient/p1/Observation", "o1 o2 o3 o10"),
    ("Patient/p1/Observation?code=2339-0", "o1"),
    ("Patient/p1/Observation?_sort=-date&_count=2", "o10 o3"),
    ("Patient/p2/Condition", "c2"),
    ("Patient/p1/Condition", "c1"),
    ("Patient/p1/Encounter", "e1"),
    ("Patient/p1/MedicationRequest", "mr1"),
    ("Patient/p2/RiskAssessment", "ra2"),
    ("Practitioner/pr1/Observation", "o1"),
    ("Practitioner/pr1/Condition", "c3"),
    ("Patient/p1/Patient", "p1"),
    ("Patient/nobody/Observation", ""),
    ("Encounter/e1/Observation", "o1"),
    ("Patient/p2/Observation?_include=Observation:device", "o4 o5 | d1"),
]


@pytest.fixture(scope="module")
def conformance_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    settings = Settings(
        db_url=database_url(tmp_path_factory.mktemp("conformance")), insecure_dev=True
    )
    with RunningServer(settings) as running, httpx.Client(base_url=running.url, timeout=30) as http:
        for resource in json.loads(DATA.read_text("utf-8")):
            response = http.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
            assert response.status_code in (200, 201), response.text
        yield http


def entry_ids(bundle: dict, mode: str) -> list[str]:
    return [
        e["resource"]["id"]
        for e in bundle.get("entry", ())
        if e.get("search", {}).get("mode") == mode
    ]


def expected_ids(expected: str) -> tuple[list[str], list[str]]:
    matches, _, included = expected.partition("|")
    return matches.split(), included.split()


def test_the_table_has_at_least_150_queries():
    assert len(QUERIES) >= 150
    assert len({path for path, _ in QUERIES}) == len(QUERIES)


@pytest.mark.parametrize(("path", "expected"), QUERIES, ids=[q for q, _ in QUERIES])
def test_search(conformance_server: httpx.Client, path: str, expected: str) -> None:
    response = conformance_server.get("/" + path)
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["type"] == "searchset"
    matches, included = expected_ids(expected)
    assert (entry_ids(bundle, "match"), entry_ids(bundle, "include")) == (matches, included)
    outcomes = [e for e in bundle.get("entry", []) if e["search"]["mode"] == "outcome"]
    assert outcomes == [], "every parameter of the table must be understood"


# -- result shaping, totals, paging, POST --------------------------------------------------


def get_bundle(http: httpx.Client, path: str) -> dict:
    response = http.get("/" + path)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(
    ("path", "total"),
    [
        ("Observation?_summary=count", 10),
        (f"Condition?code={ICD}|&_summary=count", 3),
        ("Observation?_count=0", 10),
        ("Observation?_total=accurate&_count=2", 10),
        ("Patient?name=nobody&_summary=count", 0),
        ("Patient/p1/Observation?_summary=count", 4),
        ("?_type=Patient,Condition&_summary=count", 10),
    ],
)
def test_totals(conformance_server: httpx.Client, path: str, total: int) -> None:
    bundle = get_bundle(conformance_server, path)
    assert bundle["total"] == total
    if "_summary=count" in path or "_count=0" in path:
        assert [e for e in bundle.get("entry", []) if e["search"]["mode"] == "match"] == []


def first_resource(http: httpx.Client, path: str) -> dict:
    bundle = get_bundle(http, path)
    return bundle["entry"][0]["resource"]


def test_summary_true_keeps_the_summary_elements_of_the_type(conformance_server):
    patient = first_resource(conformance_server, "Patient?_id=p1&_summary=true")
    assert set(patient) == {
        "resourceType",
        "id",
        "meta",
        "identifier",
        "active",
        "name",
        "telecom",
        "gender",
        "birthDate",
        "address",
        "managingOrganization",
    }  # generalPractitioner is not a summary element
    assert any(t["code"] == "SUBSETTED" for t in patient["meta"]["tag"])
    observation = first_resource(conformance_server, "Observation?_id=o1&_summary=true")
    assert "valueQuantity" in observation and "effectiveDateTime" in observation
    assert "category" not in observation  # not isSummary in R4
    condition = first_resource(conformance_server, "Condition?_id=c1&_summary=true")
    assert {"onsetDateTime", "recordedDate", "clinicalStatus", "code"} <= set(condition)


def test_summary_text_data_false_and_elements(conformance_server):
    text = first_resource(conformance_server, "Patient?_id=p1&_summary=text")
    # Patient.active is a modifier: R4 subsets keep modifiers and mandatory elements
    assert set(text) <= {"resourceType", "id", "meta", "text", "active"}
    data = first_resource(conformance_server, "Patient?_id=p1&_summary=data")
    assert "text" not in data and data["birthDate"] == "1970-03-15"
    full = first_resource(conformance_server, "Patient?_id=p1&_summary=false")
    assert "generalPractitioner" in full and "SUBSETTED" not in json.dumps(full)
    elements = first_resource(conformance_server, "Patient?_id=p1&_elements=name,gender")
    assert set(elements) == {"resourceType", "id", "meta", "name", "gender", "active"}


def test_paging_links_walk_every_match_once(conformance_server):
    bundle = get_bundle(conformance_server, "Observation?_count=3&_sort=-date")
    seen, pages = [], 0
    while True:
        pages += 1
        seen += entry_ids(bundle, "match")
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        assert links["self"].startswith("http") and "_count=3" in links["first"]
        if "next" not in links:
            break
        bundle = conformance_server.get(links["next"]).json()
    assert seen == ["o9", "o5", "o4", "o10", "o3", "o2", "o1", "o8", "o7", "o6"]
    assert pages == 4
    previous = {link["relation"]: link["url"] for link in bundle["link"]}["previous"]
    assert entry_ids(conformance_server.get(previous).json(), "match") == ["o1", "o8", "o7"]


def test_post_search_form_encoded(conformance_server):
    response = conformance_server.post(
        "/Observation/_search", data={"code": "2339-0", "_sort": "-date"}
    )
    assert response.status_code == 200
    assert entry_ids(response.json(), "match") == ["o9", "o1", "o7"]
    response = conformance_server.post("/Patient/_search?gender=male", data={"name": "dupond"})
    assert entry_ids(response.json(), "match") == ["p4"]


def test_compartment_self_link_is_the_compartment_path(conformance_server):
    bundle = get_bundle(conformance_server, "Patient/p1/Observation?code=2339-0")
    self_link = bundle["link"][0]["url"]
    assert self_link.endswith("/Patient/p1/Observation?code=2339-0")


def test_unknown_parameter_is_reported_and_left_out_of_self_link(conformance_server):
    bundle = get_bundle(conformance_server, "Patient?gender=male&colour=red")
    assert entry_ids(bundle, "match") == ["p3", "p4"]
    outcome = [e for e in bundle.get("entry", []) if e["search"]["mode"] == "outcome"]
    assert "colour" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    assert "colour" not in bundle["link"][0]["url"]
    strict = conformance_server.get(
        "/Patient?gender=male&colour=red", headers={"Prefer": "handling=strict"}
    )
    assert strict.status_code == 400


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("Patient/p1/$everything", "p1 e1 c1 o1 o2 o3 o10 ms1 mr1 ra1"),
        ("Patient/p2/$everything", "p2 e2 c2 o4 o5 ms2 ra2"),
        ("Patient/p2/$everything?_type=Observation,Patient", "p2 o4 o5"),
        ("Patient/nobody/$everything", ""),
    ],
)
def test_everything(conformance_server: httpx.Client, path: str, expected: str) -> None:
    bundle = get_bundle(conformance_server, path)
    assert entry_ids(bundle, "match") == expected.split()


def test_everything_pages(conformance_server: httpx.Client) -> None:
    bundle = get_bundle(conformance_server, "Patient/p1/$everything?_count=4")
    seen = entry_ids(bundle, "match")
    while link := next((x["url"] for x in bundle["link"] if x["relation"] == "next"), None):
        assert "/Patient/p1/$everything?" in link
        bundle = conformance_server.get(link).json()
        seen += entry_ids(bundle, "match")
    assert seen == ["p1", "e1", "c1", "o1", "o2", "o3", "o10", "ms1", "mr1", "ra1"]
