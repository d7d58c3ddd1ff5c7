"""Terminology-aware search over HTTP against a real server (uvicorn + SQLite): token
:below, :above, :in and :not-in on ICD-10, CIM-10 and ATC, ValueSets added by POST, and
quantity searches that compare across UCUM units (glucose in mg/dL vs mmol/L)."""

from __future__ import annotations

import uuid

import httpx

ICD10 = "http://hl7.org/fhir/sid/icd-10"
CIM10 = "https://smt.esante.gouv.fr/terminologie-cim-10/"
ATC = "http://www.whocc.no/atc"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
VS_DIABETES = "https://diatabase.org/fhir/ValueSet/diabetes-conditions"
FHIR_JSON = "application/fhir+json"


def create(client: httpx.Client, resource: dict) -> str:
    response = client.post(f"/{resource['resourceType']}", json=resource)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def condition(system: str, code: str, patient: str) -> dict:
    return {
        "resourceType": "Condition",
        "subject": {"reference": f"Patient/{patient}"},
        "code": {"coding": [{"system": system, "code": code}]},
    }


def glucose(value: float, unit: str, patient: str, loinc: str = "2339-0") -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": f"Patient/{patient}"},
        "code": {"coding": [{"system": LOINC, "code": loinc}]},
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def found_ids(client: httpx.Client, path: str, **params: str) -> set[str]:
    response = client.get(path, params={**params, "_count": "200"})
    assert response.status_code == 200, response.text
    return {e["resource"]["id"] for e in response.json().get("entry", [])}


def assert_outcome(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["diagnostics"]


def test_icd10_below_and_above(client: httpx.Client) -> None:
    patient = uuid.uuid4().hex
    e11_9 = create(client, condition(ICD10, "E11.9", patient))
    e11 = create(client, condition(ICD10, "E11", patient))
    e10_9 = create(client, condition(ICD10, "E10.9", patient))
    i10 = create(client, condition(ICD10, "I10", patient))
    cim = create(client, condition(CIM10, "E11.9", patient))
    below = found_ids(client, "/Condition", subject=f"Patient/{patient}",
                      **{"code:below": f"{ICD10}|E11"})
    assert below == {e11_9, e11}
    block = found_ids(client, "/Condition", subject=f"Patient/{patient}",
                      **{"code:below": f"{ICD10}|E10-E14"})
    assert block == {e11_9, e11, e10_9}
    above = found_ids(client, "/Condition", subject=f"Patient/{patient}",
                      **{"code:above": f"{ICD10}|E11.9"})
    assert above == {e11_9, e11}
    assert i10 not in above and cim not in below


def test_cim10_below_reaches_french_extensions(client: httpx.Client) -> None:
    patient = uuid.uuid4().hex
    extension = create(client, condition(CIM10, "E11.00", patient))
    other = create(client, condition(CIM10, "E10.9", patient))
    below = found_ids(client, "/Condition", subject=f"Patient/{patient}",
                      **{"code:below": f"{CIM10}|E11"})
    assert below == {extension}
    assert other not in below


def test_atc_below_on_medication_statements(client: httpx.Client) -> None:
    patient = uuid.uuid4().hex

    def statement(code: str) -> dict:
        return {
            "resourceType": "MedicationStatement",
            "status": "active",
            "subject": {"reference": f"Patient/{patient}"},
            "medicationCodeableConcept": {"coding": [{"system": ATC, "code": code}]},
        }

    metformin = create(client, statement("A10BA02"))
    sitagliptin = create(client, statement("A10BH01"))
    insulin = create(client, statement("A10AB05"))
    statin = create(client, statement("C10AA01"))
    oral = found_ids(client, "/MedicationStatement", subject=f"Patient/{patient}",
                     **{"code:below": f"{ATC}|A10B"})
    assert oral == {metformin, sitagliptin}
    diabetes = found_ids(client, "/MedicationStatement", subject=f"Patient/{patient}",
                         **{"code:in": "https://diatabase.org/fhir/ValueSet/drugs-used-in-diabetes"})
    assert diabetes == {metformin, sitagliptin, insulin}
    assert statin not in diabetes


def test_in_and_not_in_with_shipped_value_set(client: httpx.Client) -> None:
    patient = uuid.uuid4().hex
    icd = create(client, condition(ICD10, "E11.9", patient))
    cim = create(client, condition(CIM10, "E11.00", patient))
    gestational = create(client, condition(ICD10, "O24.4", patient))
    hypertension = create(client, condition(ICD10, "I10", patient))
    inside = found_ids(client, "/Condition", subject=f"Patient/{patient}",
                       **{"code:in": VS_DIABETES})
    assert inside == {icd, cim, gestational}
    outside = found_ids(client, "/Condition", subject=f"Patient/{patient}",
                        **{"code:not-in": VS_DIABETES})
    assert outside == {hypertension}


def test_posted_value_set_serves_expand_and_in_and_follows_updates(client: httpx.Client) -> None:
    patient = uuid.uuid4().hex
    url = f"https://hospital.example.org/fhir/ValueSet/{uuid.uuid4().hex}"
    value_set = {
        "resourceType": "ValueSet", "url": url, "status": "active",
        "compose": {"include": [{"system": ICD10, "concept": [{"code": "E11.9"}]}]},
    }
    vs_id = create(client, value_set)
    expanded = client.get("/ValueSet/$expand", params={"url": url}).json()
    assert [c["code"] for c in expanded["expansion"]["contains"]] == ["E11.9"]
    type2 = create(client, condition(ICD10, "E11.9", patient))
    type1 = create(client, condition(ICD10, "E10.9", patient))
    assert found_ids(client, "/Condition", subject=f"Patient/{patient}",
                     **{"code:in": url}) == {type2}
    value_set["id"] = vs_id
    value_set["compose"]["include"][0] = {
        "system": ICD10, "filter": [{"property": "concept", "op": "is-a", "value": "E10"}]}
    updated = client.put(f"/ValueSet/{vs_id}", json=value_set)
    assert updated.status_code == 200, updated.text
    assert found_ids(client, "/Condition", subject=f"Patient/{patient}",
                     **{"code:in": url}) == {type1}
    instance = client.get(f"/ValueSet/{vs_id}/$expand", params={"count": 0}).json()
    assert instance["expansion"]["total"] == len(
        client.get("/ValueSet/$expand", params={"url": f"{ICD10}?fhir_vs=isa/E10"}).json()
        ["expansion"]["contains"])


def test_posted_value_set_in_a_transaction_is_registered(client: httpx.Client) -> None:
    url = f"https://hospital.example.org/fhir/ValueSet/{uuid.uuid4().hex}"
    bundle = {
        "resourceType": "Bundle", "type": "transaction",
        "entry": [{
            "resource": {"resourceType": "ValueSet", "url": url, "status": "active",
                         "compose": {"include": [{"system": ATC, "concept": [
                             {"code": "A10BA02"}]}]}},
            "request": {"method": "POST", "url": "ValueSet"},
        }],
    }
    assert client.post("/", json=bundle).status_code == 200
    check = client.get("/ValueSet/$validate-code",
                       params={"url": url, "system": ATC, "code": "A10BA02"}).json()
    assert check["parameter"][0] == {"name": "result", "valueBoolean": True}


def test_posted_concept_map_serves_translate(client: httpx.Client) -> None:
    url = f"https://hospital.example.org/fhir/ConceptMap/{uuid.uuid4().hex}"
    local = "https://hospital.example.org/fhir/CodeSystem/lab"
    concept_map = {
        "resourceType": "ConceptMap", "url": url, "status": "active",
        "group": [{"source": local, "target": LOINC, "element": [
            {"code": "GLY", "target": [{"code": "2345-7", "equivalence": "equivalent"}]}]}],
    }
    create(client, concept_map)
    result = client.get("/ConceptMap/$translate",
                        params={"url": url, "system": local, "code": "GLY"}).json()
    match = next(p for p in result["parameter"] if p["name"] == "match")
    concept = next(p["valueCoding"] for p in match["part"] if p["name"] == "concept")
    assert concept == {"system": LOINC, "code": "2345-7"}


def test_terminology_modifiers_with_bad_input_are_400(client: httpx.Client) -> None:
    assert_outcome(client.get("/Condition", params={"code:below": "http://example.org/x|E11"}), 400)
    assert_outcome(client.get("/Condition", params={"code:in": "http://example.org/ValueSet/x"}),
                   400)
    assert_outcome(client.get("/Condition", params={"code:below": "E11"}), 400)
    # An unknown code in a known system only matches itself (partial tables stay usable).
    assert client.get("/Condition", params={"code:below": f"{ICD10}|Z99.99"}).status_code == 200


def test_glucose_quantity_search_across_mass_and_molar_units(client: httpx.Client) -> None:
    patient = uuid.uuid4().hex
    high_mass = create(client, glucose(200, "mg/dL", patient))
    low_mass = create(client, glucose(150, "mg/dL", patient))
    high_molar = create(client, glucose(11.5, "mmol/L", patient, loinc="15074-8"))
    exact = create(client, glucose(180.156, "mg/dL", patient))
    subject = f"Patient/{patient}"
    molar = found_ids(client, "/Observation", subject=subject,
                      **{"value-quantity": f"gt10|{UCUM}|mmol/L"})
    assert molar == {high_mass, high_molar}
    mass = found_ids(client, "/Observation", subject=subject,
                     **{"value-quantity": f"gt1.9|{UCUM}|g/L"})
    assert mass == {high_mass, high_molar}
    ten = found_ids(client, "/Observation", subject=subject,
                    **{"value-quantity": f"10.00|{UCUM}|mmol/L"})
    assert ten == {exact}
    at_least = found_ids(client, "/Observation", subject=subject,
                         **{"value-quantity": f"ge180.156|{UCUM}|mg/dL"})
    assert at_least == {high_mass, high_molar, exact}
    assert low_mass not in at_least
    no_system = found_ids(client, "/Observation", subject=subject,
                          **{"value-quantity": "lt8.5||mmol/L"})
    assert no_system == {low_mass}


def test_mass_molar_bridge_is_only_for_glucose(client: httpx.Client) -> None:
    patient = uuid.uuid4().hex
    cholesterol = create(client, {
        "resourceType": "Observation", "status": "final",
        "subject": {"reference": f"Patient/{patient}"},
        "code": {"coding": [{"system": LOINC, "code": "2093-3"}]},
        "valueQuantity": {"value": 2.0, "unit": "g/L", "system": UCUM, "code": "g/L"},
    })
    subject = f"Patient/{patient}"
    assert found_ids(client, "/Observation", subject=subject,
                     **{"value-quantity": f"gt150|{UCUM}|mg/dL"}) == {cholesterol}
    # mmol/L would need cholesterol's molar mass: a 400 naming the unit, not an empty
    # Bundle that reads as "no cholesterol above 1 mmol/L"
    refused = client.get("/Observation", params={"subject": subject,
                                                 "value-quantity": f"gt1|{UCUM}|mmol/L"})
    assert refused.status_code == 400 and "'mmol/L'" in refused.text, refused.text


def test_code_value_quantity_composite_across_units(client: httpx.Client) -> None:
    patient = uuid.uuid4().hex
    high = create(client, glucose(200, "mg/dL", patient))
    create(client, glucose(150, "mg/dL", patient))
    found = found_ids(client, "/Observation", subject=f"Patient/{patient}",
                      **{"code-value-quantity": f"{LOINC}|2339-0$gt10|{UCUM}|mmol/L"})
    assert found == {high}
