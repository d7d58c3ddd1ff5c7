"""CodeSystem, ValueSet and ConceptMap as resources of a real server (uvicorn + SQLite):
the shipped ones stored at start (once), readable and searchable; operators' ValueSets
registered on commit only (a rolled-back transaction registers nothing) and again after a
restart; untouched stored copies of older shipped tables refreshed, edited ones kept."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx

from fhir_server.model import jsonio
from fhir_server.service.terminology import SHIPPED_SOURCE, content_hash
from fhir_server.settings import Settings
from fhir_server.storage import open_storage
from tests.conftest import RunningServer

ICD10 = "http://hl7.org/fhir/sid/icd-10"
ATC = "http://www.whocc.no/atc"
VS_GLUCOSE = "https://diatabase.org/fhir/ValueSet/glucose-codes"
VS_DRUGS = "https://diatabase.org/fhir/ValueSet/drugs-used-in-diabetes"
CM_ATC_PARENT = "https://diatabase.org/fhir/ConceptMap/atc-parent"


def search(client: httpx.Client, path: str, **params: str) -> list[dict]:
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    return [entry["resource"] for entry in response.json().get("entry", [])]


def test_shipped_code_systems_are_searchable_by_url(client: httpx.Client) -> None:
    (icd10,) = search(client, "/CodeSystem", url=ICD10)
    assert icd10["count"] > 12000
    assert icd10["content"] == "not-present"  # too big to inline
    assert icd10["meta"]["source"].startswith(SHIPPED_SOURCE)
    (atc,) = search(client, "/CodeSystem", url=ATC)
    assert atc["content"] == "fragment" and atc["concept"]
    read = client.get(f"/CodeSystem/{atc['id']}")
    assert read.status_code == 200 and read.json()["url"] == ATC
    names = {cs["url"] for cs in search(client, "/CodeSystem", _count="50")}
    assert {ICD10, ATC, "http://loinc.org", "http://unitsofmeasure.org"} <= names


def test_shipped_value_sets_and_concept_maps_are_readable(client: httpx.Client) -> None:
    read = client.get("/ValueSet/glucose-codes")
    assert read.status_code == 200
    assert read.json()["url"] == VS_GLUCOSE
    (drugs,) = search(client, "/ValueSet", url=VS_DRUGS)
    assert drugs["id"] == "drugs-used-in-diabetes"
    (atc_map,) = search(client, "/ConceptMap", url=CM_ATC_PARENT)
    assert atc_map["group"][0]["element"]
    assert len(search(client, "/ValueSet", _count="50")) >= 5


def test_rolled_back_transaction_registers_nothing(client: httpx.Client) -> None:
    url = f"https://hospital.example.org/fhir/ValueSet/{uuid.uuid4().hex}"
    bundle = {
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"resource": {"resourceType": "ValueSet", "url": url, "status": "active",
                          "compose": {"include": [{"system": ATC, "concept": [
                              {"code": "A10BA02"}]}]}},
             "request": {"method": "POST", "url": "ValueSet"}},
            {"resource": {"resourceType": "Observation", "status": "not-a-status"},
             "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    assert client.post("/", json=bundle).status_code >= 400
    assert search(client, "/ValueSet", url=url) == []
    expand = client.get("/ValueSet/$expand", params={"url": url})
    assert expand.status_code == 404, expand.text


def test_value_set_without_compose_is_stored_but_not_expandable(client: httpx.Client) -> None:
    url = f"https://hospital.example.org/fhir/ValueSet/{uuid.uuid4().hex}"
    created = client.post("/ValueSet", json={"resourceType": "ValueSet", "url": url,
                                             "status": "draft"})
    assert created.status_code == 201
    response = client.get(f"/ValueSet/{created.json()['id']}/$expand")
    assert response.status_code in (400, 404), response.text
    assert response.json()["resourceType"] == "OperationOutcome"


def _start(db: Path) -> RunningServer:
    return RunningServer(Settings(db_url=f"sqlite:///{db}", insecure_dev=True))


def test_restart_keeps_operator_value_sets_and_does_not_duplicate_shipped(
    tmp_path: Path,
) -> None:
    db = tmp_path / "restart.db"
    url = f"https://hospital.example.org/fhir/ValueSet/{uuid.uuid4().hex}"
    with _start(db) as first, httpx.Client(base_url=first.url, timeout=60) as client:
        created = client.post("/ValueSet", json={
            "resourceType": "ValueSet", "url": url, "status": "active",
            "compose": {"include": [{"system": ICD10, "concept": [{"code": "E11.9"}]}]}})
        assert created.status_code == 201
    with _start(db) as second, httpx.Client(base_url=second.url, timeout=60) as client:
        expanded = client.get("/ValueSet/$expand", params={"url": url})
        assert expanded.status_code == 200, expanded.text
        assert [c["code"] for c in expanded.json()["expansion"]["contains"]] == ["E11.9"]
        (glucose,) = search(client, "/ValueSet", url=VS_GLUCOSE)
        assert glucose["meta"]["versionId"] == "1"


def _store(db: Path, resource: dict) -> None:
    storage = open_storage(f"sqlite:///{db}")
    try:
        with storage.transaction() as tx:
            current = tx.read(resource["resourceType"], resource["id"])
            version = current.version + 1 if current else 1
            tx.put(resource["resourceType"], resource["id"], version, 1.0e9,
                   jsonio.dumps(resource), [], "PUT")
    finally:
        storage.close()


def test_untouched_old_shipped_copy_is_refreshed_and_edited_copy_kept(tmp_path: Path) -> None:
    db = tmp_path / "refresh.db"
    with _start(db) as first, httpx.Client(base_url=first.url, timeout=60) as client:
        shipped = client.get("/ValueSet/glucose-codes").json()
        drugs = client.get("/ValueSet/drugs-used-in-diabetes").json()
    # A copy the server wrote from older tables: its recorded hash matches its content.
    old = {**shipped, "description": "older tables"}
    old["meta"] = {"source": SHIPPED_SOURCE + content_hash(old)}
    _store(db, old)
    # A copy an operator edited: its content no longer matches the recorded hash.
    edited = {**drugs, "description": "our local drug list", "meta": drugs["meta"]}
    _store(db, edited)
    with _start(db) as second, httpx.Client(base_url=second.url, timeout=60) as client:
        refreshed = client.get("/ValueSet/glucose-codes").json()
        assert refreshed["description"] == shipped["description"]
        assert refreshed["meta"]["source"] == shipped["meta"]["source"]
        kept = client.get("/ValueSet/drugs-used-in-diabetes").json()
        assert kept["description"] == "our local drug list"


def test_deleted_value_set_and_concept_map_are_no_longer_used(client: httpx.Client) -> None:
    url = f"https://hospital.example.org/fhir/ValueSet/{uuid.uuid4().hex}"
    kept_url = f"https://hospital.example.org/fhir/ValueSet/{uuid.uuid4().hex}"
    include = {"include": [{"system": ICD10, "concept": [{"code": "E11.9"}]}]}
    doomed = client.post("/ValueSet", json={"resourceType": "ValueSet", "url": url,
                                            "status": "active", "compose": include})
    client.post("/ValueSet", json={"resourceType": "ValueSet", "url": kept_url,
                                   "status": "active", "compose": include})
    map_url = f"https://hospital.example.org/fhir/ConceptMap/{uuid.uuid4().hex}"
    concept_map = client.post("/ConceptMap", json={
        "resourceType": "ConceptMap", "url": map_url, "status": "active",
        "group": [{"source": ICD10, "target": ATC, "element": [
            {"code": "E11.9", "target": [{"code": "A10BA02", "equivalence": "relatedto"}]}]}]})
    assert client.get("/ValueSet/$expand", params={"url": url}).status_code == 200
    assert client.delete(f"/ValueSet/{doomed.json()['id']}").status_code in (200, 204)
    assert client.delete(f"/ConceptMap/{concept_map.json()['id']}").status_code in (200, 204)
    assert client.get("/ValueSet/$expand", params={"url": url}).status_code == 404
    assert client.get("/Condition", params={"code:in": url}).status_code == 400
    assert client.get("/ConceptMap/$translate", params={
        "url": map_url, "system": ICD10, "code": "E11.9"}).status_code == 404
    # the others are still there after the rebuild
    assert client.get("/ValueSet/$expand", params={"url": kept_url}).status_code == 200
    assert client.get("/ValueSet/$expand", params={"url": VS_GLUCOSE}).status_code == 200


def test_value_set_stored_by_another_process_is_taken_on_first_use(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    url = f"https://hospital.example.org/fhir/ValueSet/{uuid.uuid4().hex}"
    with _start(db) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        condition = client.post("/Condition", json={
            "resourceType": "Condition", "subject": {"reference": "Patient/other-process"},
            "code": {"coding": [{"system": ICD10, "code": "E11.9"}]}})
        assert client.get("/ValueSet/$expand", params={"url": url}).status_code == 404
        # as a second worker or `diatabase import` would: straight into the database
        _store(db, {"resourceType": "ValueSet", "id": "from-elsewhere", "url": url,
                    "status": "active", "compose": {"include": [
                        {"system": ICD10, "concept": [{"code": "E11.9"}]}]}})
        other = url + "-search"
        _store(db, {"resourceType": "ValueSet", "id": "from-elsewhere-2", "url": other,
                    "status": "active", "compose": {"include": [
                        {"system": ICD10, "concept": [{"code": "E11.9"}]}]}})
        expanded = client.get("/ValueSet/$expand", params={"url": url})
        assert expanded.status_code == 200, expanded.text
        found = client.get("/Condition", params={"code:in": other})
        assert found.status_code == 200, found.text
        assert [e["resource"]["id"] for e in found.json()["entry"]] == [condition.json()["id"]]
