"""Quantity search through UCUM, over a real server (SQLite here; the MongoDB backend on
mongomock through tests/test_mongo_http.py).

Units are compared through a UCUM parser (terminology/ucum.py): any valid UCUM unit of the
same kind converts; glucose converts between mass and molar concentrations with its molar
mass, HbA1c between % and mmol/mol by the IFCC-NGSP master equation; an invalid UCUM unit,
or a valid one that cannot be compared with the stored values, is a 400 that names it.
"""

from __future__ import annotations

import itertools

import httpx
import pytest

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
_subjects = itertools.count()


def observation(subject: str, loinc: str, value: float, unit: str, system: str | None = UCUM,
                code: str | None = None) -> dict:
    quantity = {"value": value, "unit": unit}
    if system is not None:
        quantity["system"] = system
        quantity["code"] = code or unit
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": loinc}]},
        "subject": {"reference": f"Patient/{subject}"},
        "valueQuantity": quantity,
    }


@pytest.fixture
def subject() -> str:
    return f"units-{next(_subjects)}"


def store(client: httpx.Client, *resources: dict) -> list[str]:
    ids = []
    for resource in resources:
        response = client.post("/Observation", json=resource)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


def found(client: httpx.Client, subject: str, quantity: str) -> set[str]:
    response = client.get(
        "/Observation", params={"subject": f"Patient/{subject}", "value-quantity": quantity}
    )
    assert response.status_code == 200, response.text
    return {e["resource"]["id"] for e in response.json().get("entry", [])
            if e["search"]["mode"] == "match"}


def refused(client: httpx.Client, subject: str, quantity: str) -> str:
    response = client.get(
        "/Observation", params={"subject": f"Patient/{subject}", "value-quantity": quantity}
    )
    assert response.status_code == 400, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    return " ".join(issue.get("diagnostics", "") for issue in outcome["issue"])


def test_grams_per_decilitre_find_milligrams_per_decilitre(client, subject) -> None:
    """The issue's example: 0.1 g/dL is 100 mg/dL, so 200 mg/dL is greater (this one
    already passed with the unit table; it pins the behaviour through UCUM)."""
    [high] = store(client, observation(subject, "2339-0", 200, "mg/dL"))
    store(client, observation(subject, "2339-0", 80, "mg/dL"))
    assert found(client, subject, f"gt0.1|{UCUM}|g/dL") == {high}
    assert found(client, subject, f"lt0.1|{UCUM}|g/dL") != {high}


def test_any_ucum_mass_concentration_finds_glucose_stored_in_mmol_per_litre(
    client, subject
) -> None:
    """Failed before: mg/mL was not in the 26-unit table, so the search compared the value
    as written with rows in mmol/L and answered an empty Bundle. 10 mmol/L of glucose is
    180.156 mg/dL = 1.80156 mg/mL (glucose: 180.156 g/mol)."""
    [ten] = store(client, observation(subject, "15074-8", 10, "mmol/L"))
    assert found(client, subject, f"gt1.8|{UCUM}|mg/mL") == {ten}
    assert found(client, subject, f"gt1.81|{UCUM}|mg/mL") == set()
    assert found(client, subject, f"gt1801|{UCUM}|mg/L") == {ten}


def test_a_unit_of_another_kind_is_a_400_naming_it(client, subject) -> None:
    """Failed before: `kg` against glucose concentrations answered an empty Bundle (a
    silent "none") instead of saying the question cannot be answered."""
    store(client, observation(subject, "15074-8", 6.1, "mmol/L"))
    message = refused(client, subject, f"gt1|{UCUM}|kg")
    assert "'kg'" in message


def test_molar_against_mass_without_a_molar_mass_is_a_400(client, subject) -> None:
    """Failed before (empty Bundle): cholesterol (2093-3) in mg/dL cannot be compared with
    mmol/L without cholesterol's molar mass, which the project does not hold."""
    store(client, observation(subject, "2093-3", 190, "mg/dL"))
    message = refused(client, subject, f"gt4|{UCUM}|mmol/L")
    assert "'mmol/L'" in message and "molar mass" in message
    assert found(client, subject, f"gt1.5|{UCUM}|g/L")  # its own kind still compares


def test_an_invalid_ucum_unit_is_a_400(client, subject) -> None:
    """Failed before: `furlong` and `mmHg` (UCUM spells it mm[Hg]) answered an empty
    Bundle."""
    store(client, observation(subject, "8480-6", 130, "mm[Hg]"))
    assert "'furlong' is not a valid UCUM unit" in refused(client, subject, f"gt1|{UCUM}|furlong")
    assert "mm[Hg]" in refused(client, subject, f"gt1|{UCUM}|mmHg")


def test_an_empty_answer_in_a_comparable_unit_stays_a_200(client, subject) -> None:
    store(client, observation(subject, "15074-8", 6.1, "mmol/L"))
    assert found(client, subject, f"gt500|{UCUM}|mg/dL") == set()


def test_hba1c_percent_and_mmol_per_mol_meet_by_the_master_equation(client, subject) -> None:
    """Failed before: % and mmol/mol were two kinds with no bridge (empty Bundles).
    7.0 % NGSP is 53.0 mmol/mol IFCC ((7.0 - 2.152) / 0.09148)."""
    [percent] = store(client, observation(subject, "4548-4", 7.0, "%"))
    [ifcc] = store(client, observation(subject, "59261-8", 64, "mmol/mol"))  # 8.0 %
    assert found(client, subject, f"gt50|{UCUM}|mmol/mol") == {percent, ifcc}
    assert found(client, subject, f"gt60|{UCUM}|mmol/mol") == {ifcc}
    assert found(client, subject, f"gt7.5|{UCUM}|%") == {ifcc}
    assert found(client, subject, f"le7.5|{UCUM}|%") == {percent}


def test_units_outside_the_old_table_convert(client, subject) -> None:
    """Failed before: [IU]/L, 10*9/L and [degF] had no canonical form, so only the exact
    code matched."""
    [insulin] = store(client, observation(subject, "20448-7", 12, "m[IU]/L"))
    [platelets] = store(client, observation(subject, "777-3", 250, "10*9/L"))
    [fever] = store(client, observation(subject, "8310-5", 38.5, "Cel"))
    assert found(client, subject, f"gt0.01|{UCUM}|[IU]/L") == {insulin}
    assert found(client, subject, f"gt200|{UCUM}|10*3/uL") == {platelets}
    assert found(client, subject, f"gt101|{UCUM}|[degF]") == {fever}  # 38.5 Cel = 101.3 F
    assert found(client, subject, f"gt102|{UCUM}|[degF]") == set()


def test_a_unit_text_without_a_system_still_matches_as_written(client, subject) -> None:
    [written] = store(client, observation(subject, "2339-0", 99, "mg/dl", system=None))
    assert found(client, subject, "gt90||mg/dl") == {written}
