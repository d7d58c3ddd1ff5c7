"""A patient-context token (SMART `patient` claim + patient/ scopes) sees and writes only
its patient's compartment: reads, searches (includes, chains, `_has`, `$everything`,
history, `_summary=count` totals), writes and transactions over another patient's data
return or change nothing. Granular scopes (`?category=laboratory`) are applied inside the
query. Real tokens (tests/auth_tokens.py), a real server on 127.0.0.1; also run on the
MongoDB backend (mongomock) by tests/test_mongo_http.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.auth_tokens import TestIssuer, bearer
from tests.conftest import RunningServer, database_url

ADMIN_SCOPE = "system/*.cruds"
PATIENT_SCOPE = "launch/patient patient/*.cruds openid"
LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"


def _observation(patient: str, category: str, performer: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": category,
        }]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "valueQuantity": {"value": 110, "unit": "mg/dL", "system": "http://unitsofmeasure.org",
                          "code": "mg/dL"},
    }
    if performer:
        resource["performer"] = [{"reference": performer}]
    return resource


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    issuer = TestIssuer.create(tmp_path_factory.mktemp("issuer"))
    settings = issuer.settings(db_url=database_url(tmp_path_factory.mktemp("db")))
    with RunningServer(settings) as server:
        admin = httpx.Client(base_url=server.url, timeout=60,
                             headers=bearer(issuer.token(server.url, ADMIN_SCOPE)))
        tag = uuid.uuid4().hex[:8]
        ids: dict[str, Any] = {"tag": tag}
        for who, family in (("a", f"Alpha{tag}"), ("b", f"Beta{tag}")):
            made = admin.post("/Patient", json={"resourceType": "Patient",
                                                "name": [{"family": family}]})
            assert made.status_code == 201, made.text
            ids[who] = made.json()["id"]
        practitioner = admin.post("/Practitioner", json={"resourceType": "Practitioner"})
        ids["practitioner"] = practitioner.json()["id"]
        for who in ("a", "b"):
            performer = f"Practitioner/{ids['practitioner']}"
            lab = admin.post("/Observation", json=_observation(ids[who], "laboratory", performer))
            vital = admin.post("/Observation", json=_observation(ids[who], "vital-signs"))
            assert lab.status_code == vital.status_code == 201
            ids[f"{who}_lab"], ids[f"{who}_vital"] = lab.json()["id"], vital.json()["id"]
        patient_token = issuer.token(server.url, PATIENT_SCOPE, patient=ids["a"])
        mine = httpx.Client(base_url=server.url, timeout=60, headers=bearer(patient_token))
        yield {"server": server, "issuer": issuer, "admin": admin, "mine": mine, **ids}
        admin.close()
        mine.close()


def _ids(bundle: dict[str, Any], rtype: str | None = None) -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", ())
        if e["resource"]["resourceType"] != "OperationOutcome"
        and (rtype is None or e["resource"]["resourceType"] == rtype)
    }


def test_reads_of_another_patients_data_answer_404(world: dict[str, Any]) -> None:
    mine = world["mine"]
    assert mine.get(f"/Patient/{world['a']}").status_code == 200
    assert mine.get(f"/Observation/{world['a_lab']}").status_code == 200
    for path in (f"/Patient/{world['b']}", f"/Observation/{world['b_lab']}",
                 f"/Observation/{world['b_lab']}/_history/1",
                 f"/Observation/{world['b_lab']}/_history"):
        response = mine.get(path)
        assert response.status_code == 404, (path, response.text)
        assert response.json()["resourceType"] == "OperationOutcome"
    # Not patient data: visible under the patient's scope for the type.
    assert mine.get(f"/Practitioner/{world['practitioner']}").status_code == 200


def test_searches_stay_inside_the_compartment(world: dict[str, Any]) -> None:
    mine, a, b = world["mine"], world["a"], world["b"]
    own = {f"Observation/{world['a_lab']}", f"Observation/{world['a_vital']}"}
    found = mine.get("/Observation", params={"_total": "accurate"}).json()
    assert _ids(found) == own and found["total"] == 2
    counted = mine.get("/Observation", params={"_summary": "count"}).json()
    assert counted["total"] == 2
    assert mine.get("/Patient", params={"_summary": "count"}).json()["total"] == 1
    # Paging: one per page, two pages, nothing of B's on either.
    first = mine.get("/Observation", params={"_count": 1}).json()
    next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    second = mine.get(next_url).json()
    assert _ids(first) | _ids(second) == own
    # Asking for B directly finds nothing.
    assert _ids(mine.get("/Observation", params={"subject": f"Patient/{b}"}).json()) == set()
    assert _ids(mine.get("/Patient", params={"_id": b}).json()) == set()
    assert _ids(mine.get(f"/Patient/{b}/Observation").json()) == set()
    # System search: only A's of each type.
    system = mine.get("/", params={"_type": "Patient,Observation"}).json()
    assert _ids(system) == own | {f"Patient/{a}"}


def test_include_revinclude_chain_and_has_never_leave_it(world: dict[str, Any]) -> None:
    mine, a, tag = world["mine"], world["a"], world["tag"]
    included = mine.get("/Observation", params={"_include": "Observation:subject"}).json()
    assert _ids(included, "Patient") == {f"Patient/{a}"}
    reverse = mine.get("/Practitioner", params={
        "_id": world["practitioner"], "_revinclude": "Observation:performer"}).json()
    assert _ids(reverse, "Observation") == {f"Observation/{world['a_lab']}"}
    revinclude = mine.get("/Patient", params={"_revinclude": "Observation:subject"}).json()
    assert _ids(revinclude, "Observation") == {
        f"Observation/{world['a_lab']}", f"Observation/{world['a_vital']}"}
    assert _ids(revinclude, "Patient") == {f"Patient/{a}"}
    # A chain to B's name matches nothing; to A's, A's observations.
    chained = mine.get("/Observation", params={"subject:Patient.family": f"Beta{tag}"}).json()
    assert _ids(chained) == set()
    chained = mine.get("/Observation", params={"subject:Patient.family": f"Alpha{tag}"}).json()
    assert len(_ids(chained)) == 2
    # _has through B's observations cannot select anything (nor reveal B).
    has = mine.get("/Patient", params={"_has:Observation:subject:category": "laboratory"}).json()
    assert _ids(has) == {f"Patient/{a}"}
    # From the practitioner's side, _has sees only A's observations: A's lab performer.
    has = mine.get("/Practitioner", params={
        "_id": world["practitioner"], "_has:Observation:performer:subject": f"Patient/{world['b']}"
    }).json()
    assert _ids(has) == set()


def test_everything_and_history(world: dict[str, Any]) -> None:
    mine, a, b = world["mine"], world["a"], world["b"]
    everything = mine.get(f"/Patient/{a}/$everything").json()
    assert f"Patient/{a}" in _ids(everything)
    assert not any(b in i or world["b_lab"] in i for i in _ids(everything))
    other = mine.get(f"/Patient/{b}/$everything")
    assert other.status_code in (200, 404)
    if other.status_code == 200:
        assert _ids(other.json()) == set()
    assert mine.get(f"/Observation/{world['a_lab']}/_history").status_code == 200
    for path in ("/Observation/_history", "/_history"):
        refused = mine.get(path)
        assert refused.status_code == 403, path
        assert refused.json()["resourceType"] == "OperationOutcome"


def test_writes_into_another_patients_compartment_are_refused(world: dict[str, Any]) -> None:
    mine, admin, a, b = world["mine"], world["admin"], world["a"], world["b"]
    before = admin.get("/Observation", params={"subject": f"Patient/{b}",
                                               "_summary": "count"}).json()["total"]
    # Create into B's compartment; move one of A's into B's; touch B's directly.
    assert mine.post("/Observation", json=_observation(b, "laboratory")).status_code == 403
    moved = {**_observation(b, "laboratory"), "id": world["a_vital"]}
    assert mine.put(f"/Observation/{world['a_vital']}", json=moved).status_code == 403
    b_lab = admin.get(f"/Observation/{world['b_lab']}").json()
    assert mine.put(f"/Observation/{world['b_lab']}",
                    json={**b_lab, "status": "cancelled"}).status_code == 404
    assert mine.delete(f"/Observation/{world['b_lab']}").status_code == 404
    assert mine.post("/Patient", json={"resourceType": "Patient"}).status_code == 403
    # Own data: allowed.
    created = mine.post("/Observation", json=_observation(a, "vital-signs"))
    assert created.status_code == 201, created.text
    # A transaction with one entry in B's compartment changes nothing at all.
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {**_observation(a, "laboratory"), "note": [{"text": "tx-marker"}]},
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": _observation(b, "laboratory"),
         "request": {"method": "POST", "url": "Observation"}},
    ]}
    refused = mine.post("/", json=tx)
    assert refused.status_code == 403, refused.text
    tx_delete = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": f"Observation/{world['b_lab']}"}},
    ]}
    assert mine.post("/", json=tx_delete).status_code == 404
    after = admin.get("/Observation", params={"subject": f"Patient/{b}",
                                              "_summary": "count"}).json()["total"]
    assert after == before
    assert admin.get(f"/Observation/{world['b_lab']}").json()["status"] == "final"
    assert admin.get(f"/Observation/{world['a_vital']}").json()["subject"]["reference"] \
        == f"Patient/{a}"
    markers = admin.get("/Observation", params={"subject": f"Patient/{a}"}).json()
    assert not any("tx-marker" in str(e["resource"].get("note")) for e in markers["entry"])


def test_granular_scope_is_applied_inside_the_query(world: dict[str, Any]) -> None:
    server, issuer = world["server"], world["issuer"]
    token = issuer.token(server.url, "user/Observation.rs?category=laboratory")
    with httpx.Client(base_url=server.url, headers=bearer(token), timeout=60) as http:
        found = http.get("/Observation", params={"_total": "accurate"}).json()
        assert found["total"] == len(_ids(found)) >= 2
        for entry in found["entry"]:
            codes = [c["code"] for cat in entry["resource"]["category"] for c in cat["coding"]]
            assert codes == ["laboratory"]
        assert http.get(f"/Observation/{world['a_vital']}").status_code == 404
        assert http.get(f"/Observation/{world['a_lab']}").status_code == 200
        # Granular read scopes grant no write.
        assert http.post("/Observation", json=_observation(world["a"], "laboratory")
                         ).status_code == 403
        assert LAB  # the category searched on
