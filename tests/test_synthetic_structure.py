"""Structure of a generated sample against the diabetes profile rules of issue 5."""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import date
from typing import Any

import pytest

from fhir_server.synthetic import codes
from fhir_server.synthetic.france import DEPARTEMENT_BY_CODE, departement_of_postal_code
from fhir_server.synthetic.generator import ckd_epi_2009
from tests.synthetic_sample import by_type, loinc_of, patient_of, sample

SECOND = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(Z|[+-]\d{2}:\d{2})$")
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


@pytest.fixture(scope="module")
def resources() -> dict[str, list[dict[str, Any]]]:
    return by_type(sample())


def _references(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return found + [r for v in node.values() for r in _references(v)]
    if isinstance(node, list):
        return [r for v in node for r in _references(v)]
    return []


def test_every_reference_resolves_and_ids_are_unique(resources) -> None:
    known: set[str] = set()
    for resource_type, items in resources.items():
        ids = [r["id"] for r in items]
        assert len(ids) == len(set(ids)), resource_type
        assert all(FHIR_ID.match(i) for i in ids)
        known.update(f"{resource_type}/{i}" for i in ids)
    refs = [ref for items in resources.values() for r in items for ref in _references(r)]
    assert len(refs) > 10_000
    assert not [ref for ref in refs if ref not in known]


def test_patients_have_test_ins_gender_birthdate_and_french_address(resources) -> None:
    patients = resources["Patient"]
    assert len(patients) == 40
    for p in patients:
        assert p["meta"]["profile"] == [codes.PROFILE_PATIENT]
        ins = [i for i in p["identifier"] if i["system"] == codes.INS_TEST_OID]
        assert len(ins) == 1
        value = ins[0]["value"]
        assert re.fullmatch(r"\d{15}", value)
        assert int(value[13:]) == 97 - int(value[:13]) % 97
        assert value[0] == ("1" if p["gender"] == "male" else "2")
        born = date.fromisoformat(p["birthDate"])
        assert value[1:5] == f"{born.year % 100:02d}{born.month:02d}"
        address = p["address"][0]
        assert address["country"] == "FR"
        dep = DEPARTEMENT_BY_CODE[departement_of_postal_code(address["postalCode"])]
        assert address["district"] == dep.name
        assert (address["postalCode"], address["city"]) in dep.towns
    names = " ".join(n for p in patients for n in [p["name"][0]["family"], *p["name"][0]["given"]])
    assert re.search(r"[éèêëàâçïîôöûüœÉ]", names), "French names with accents"


def test_cgm_readings_follow_the_cgm_profile(resources) -> None:
    devices = {d["id"] for d in resources["Device"]}
    cgm = [o for o in resources["Observation"] if loinc_of(o) == "99504-3"]
    assert len(cgm) > 20_000
    for o in cgm:
        assert o["meta"]["profile"] == [codes.PROFILE_CGM]
        assert o["status"] == "final"
        q = o["valueQuantity"]
        assert (q["unit"], q["code"], q["system"]) == ("mg/dL", "mg/dL", codes.UCUM)
        assert isinstance(q["value"], int) and 40 <= q["value"] <= 400
        assert q.get("comparator") in (None, "<", ">")
        if "comparator" in q:
            assert (q["comparator"], q["value"]) in (("<", 40), (">", 400))
        assert SECOND.match(o["effectiveDateTime"])
        assert o["device"]["reference"].removeprefix("Device/") in devices


def test_smbg_readings_use_one_unit_per_patient_and_plausible_values(resources) -> None:
    smbg = [o for o in resources["Observation"] if loinc_of(o) in ("41653-7", "15074-8")]
    assert smbg
    units: dict[str, set[str]] = defaultdict(set)
    for o in smbg:
        assert o["meta"]["profile"] == [codes.PROFILE_BLOOD_GLUCOSE]
        q = o["valueQuantity"]
        expected_unit = "mg/dL" if loinc_of(o) == "41653-7" else "mmol/L"
        assert q["unit"] == q["code"] == expected_unit
        mmol = q["value"] / codes.MGDL_PER_MMOL if expected_unit == "mg/dL" else q["value"]
        assert 0.5 <= mmol <= 60
        assert SECOND.match(o["effectiveDateTime"])
        assert o["device"]["reference"].startswith("Device/")
        units[patient_of(o)].add(expected_unit)
    assert all(len(u) == 1 for u in units.values())
    assert {u for us in units.values() for u in us} <= {"mg/dL", "mmol/L"}


def test_hba1c_and_labs(resources) -> None:
    obs = resources["Observation"]
    hba1c = [o for o in obs if loinc_of(o) == "4548-4"]
    assert {patient_of(o) for o in hba1c} == {f"Patient/{p['id']}" for p in resources["Patient"]}
    for o in hba1c:
        assert o["meta"]["profile"] == [codes.PROFILE_HBA1C]
        assert o["valueQuantity"]["code"] == "%"
        assert 3 <= o["valueQuantity"]["value"] <= 20
    found = {loinc_of(o) for o in obs}
    assert {"2160-0", "62238-1", "9318-7", "13457-7", "2085-9", "2571-8", "2093-3", "29463-7",
            "39156-5", "85354-9"} <= found
    for bp in (o for o in obs if loinc_of(o) == "85354-9"):
        parts = {c["code"]["coding"][0]["code"]: c["valueQuantity"] for c in bp["component"]}
        assert set(parts) == {"8480-6", "8462-4"}
        assert parts["8480-6"]["value"] > parts["8462-4"]["value"]
        assert parts["8480-6"]["unit"] == "mm[Hg]"


def test_egfr_is_ckd_epi_of_the_creatinine(resources) -> None:
    patients = {f"Patient/{p['id']}": p for p in resources["Patient"]}
    labs = defaultdict(dict)
    for o in resources["Observation"]:
        if loinc_of(o) in ("2160-0", "62238-1"):
            labs[(patient_of(o), o["effectiveDateTime"])][loinc_of(o)] = o["valueQuantity"]["value"]
    assert labs
    for (pid, when), values in labs.items():
        p = patients[pid]
        age = (date.fromisoformat(when[:10]) - date.fromisoformat(p["birthDate"])).days / 365.25
        expected = ckd_epi_2009(values["2160-0"], age, p["gender"] == "female")
        assert abs(values["62238-1"] - expected) <= 2


def test_conditions_are_coded_diabetes_or_complications(resources) -> None:
    diabetes_per_patient: dict[str, int] = defaultdict(int)
    for c in resources["Condition"]:
        assert c["clinicalStatus"]["coding"][0]["code"] in ("active", "resolved")
        assert c["verificationStatus"]["coding"][0]["code"] == "confirmed"
        coding = c["code"]["coding"][0]
        assert coding["system"] == codes.ICD10
        assert "onsetDateTime" in c
        if c.get("meta", {}).get("profile") == [codes.PROFILE_CONDITION]:
            assert re.fullmatch(r"E1[01]\.[2345679]", coding["code"])
            diabetes_per_patient[patient_of(c)] += 1
        else:
            assert coding["code"] in ("H36.0", "N08.3", "G63.2", "L97")
    assert len(diabetes_per_patient) == 40
    assert set(diabetes_per_patient.values()) == {1}


def test_medication_statements_are_atc_coded(resources) -> None:
    for m in resources["MedicationStatement"]:
        assert m["meta"]["profile"] == [codes.PROFILE_MEDICATION]
        coding = m["medicationCodeableConcept"]["coding"][0]
        assert coding["system"] == codes.ATC and coding["code"].startswith("A10")
        assert coding["display"]
        assert m["status"] in ("active", "completed")
        assert m["subject"]["reference"].startswith("Patient/")
        period = m["effectivePeriod"]
        assert "start" in period
        assert (m["status"] == "completed") == ("end" in period)
        if "end" in period:
            assert period["start"] <= period["end"]


def test_encounters_are_consultations_or_stays(resources) -> None:
    for e in resources["Encounter"]:
        assert e["status"] == "finished"
        assert e["class"]["code"] in ("AMB", "IMP")
        assert SECOND.match(e["period"]["start"]) and SECOND.match(e["period"]["end"])
        assert e["period"]["start"] < e["period"]["end"]
    assert any(e["class"]["code"] == "AMB" for e in resources["Encounter"])
