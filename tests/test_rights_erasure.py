"""Erasure (`$expunge`) over HTTP with real tokens: every version, index and full-text row
of a patient's compartment is gone, checked on the SQLite file's bytes (the database and
its -wal), not only through the API; a held resource is refused; only an operator may."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_server.rights.holds import Holds, holds_path
from tests.auth_tokens import TestIssuer, bearer
from tests.conftest import RunningServer

INS = "urn:oid:1.2.250.1.213.1.4.8"
# Values only the erased patient's resources hold: none may stay in the file's bytes.
SECRET_NAME = "Zéphyrinette"
SECRET_FAMILY = "Quintalbaud"
SECRET_INS = "2840375123456"
SECRET_NOTE = "Xylophonique"


def patient(pid: str, family: str, ins: str, given: str = "Anne") -> dict[str, Any]:
    return {
        "resourceType": "Patient", "id": pid,
        "identifier": [{"system": INS, "value": ins}],
        "name": [{"family": family, "given": [given]}],
        "gender": "female", "birthDate": "1984-03-05",
    }


def glucose(oid: str, pid: str, value: float, note: str = "fasting") -> dict[str, Any]:
    return {
        "resourceType": "Observation", "id": oid, "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": "2026-03-05T08:00:00Z",
        "valueQuantity": {"value": value, "unit": "mg/dL", "system": "http://unitsofmeasure.org",
                          "code": "mg/dL"},
        "note": [{"text": note}],
    }


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    issuer = TestIssuer.create(tmp_path)
    db = tmp_path / "store.db"
    settings = issuer.settings(db_url=f"sqlite:///{db}")
    with RunningServer(settings) as server:
        def client(scope: str, **claims: Any) -> httpx.Client:
            token = issuer.token(server.url, scope, **claims)
            return httpx.Client(base_url=server.url, timeout=120, headers=bearer(token))

        yield {"server": server, "client": client, "admin": client("system/*.cruds"),
               "db": db, "holds": Holds(holds_path(settings))}


def put(http: httpx.Client, resource: dict[str, Any]) -> None:
    answer = http.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
    assert answer.status_code in (200, 201), answer.text


def file_bytes(db: Path) -> bytes:
    wal = Path(f"{db}-wal")
    return db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def pages_outside_audit(db: Path) -> bytes:
    """The file's pages except those of the audit trail's tables (which keep the erased
    ids on purpose, never contents): free pages included."""
    conn = sqlite3.connect(db)
    try:
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        audit = {
            page for (page,) in conn.execute(
                "SELECT pageno FROM dbstat WHERE name LIKE 'audit%' "
                "OR name IN (SELECT name FROM sqlite_master WHERE tbl_name LIKE 'audit%')"
            )
        }
    finally:
        conn.close()
    data = db.read_bytes()
    return b"".join(
        data[i : i + size] for i in range(0, len(data), size) if i // size + 1 not in audit
    )


def test_patient_expunge_leaves_no_byte_of_the_compartment(world: dict[str, Any]) -> None:
    admin, db = world["admin"], world["db"]
    put(admin, patient("gone", SECRET_FAMILY, SECRET_INS, SECRET_NAME))
    put(admin, patient("kept", "Martin", "1790175000001"))
    put(admin, glucose("gone-1", "gone", 101, SECRET_NOTE))
    put(admin, glucose("gone-2", "gone", 140))
    put(admin, glucose("kept-1", "kept", 99))
    # a second version (the first stays in the history), and one deleted before the erasure
    updated = patient("gone", SECRET_FAMILY, SECRET_INS, SECRET_NAME)
    updated["gender"] = "other"
    put(admin, updated)
    put(admin, glucose("gone-3", "gone", 77, SECRET_NOTE))
    assert admin.delete("/Observation/gone-3").status_code in (200, 204)
    assert SECRET_FAMILY.encode() in file_bytes(db)  # the check below can fail

    answer = admin.post("/Patient/gone/$expunge")
    assert answer.status_code == 200, answer.text
    erased = {p["valueString"] for p in answer.json()["parameter"] if p["name"] == "erased"}
    assert erased == {"Patient/gone", "Observation/gone-1", "Observation/gone-2",
                      "Observation/gone-3"}

    for path in ("/Patient/gone", "/Patient/gone/_history/1", "/Observation/gone-1",
                 "/Observation/gone-3/_history/1"):
        assert admin.get(path).status_code == 404, path
    assert admin.get("/Observation", params={"subject": "Patient/gone"}).json().get(
        "entry", []) == []
    assert admin.get("/Patient", params={"name": SECRET_FAMILY}).json().get("entry", []) == []
    assert admin.get("/Patient", params={"_content": SECRET_NAME}).json().get("entry", []) == []
    # what was not the patient's is still there
    assert admin.get("/Observation/kept-1").status_code == 200
    assert admin.get("/Patient/kept").status_code == 200

    everything = file_bytes(db)
    for value in (SECRET_FAMILY, SECRET_NAME, SECRET_INS, SECRET_NOTE):
        for form in (value, value.lower()):
            assert form.encode() not in everything, form
    outside = pages_outside_audit(db)
    for rid in ("gone-1", "gone-2", "gone-3", "Patient/gone"):
        assert rid.encode() not in outside, rid
    # the audit trail says what was erased: the ids
    auditor = world["client"]("system/AuditEvent.rs")
    events = auditor.get("/AuditEvent", params={"entity": "Observation/gone-1"}).json()
    assert events.get("entry"), "no audit record names the erased resource"


def test_held_resources_are_refused_and_only_an_operator_erases(world: dict[str, Any]) -> None:
    admin = world["admin"]
    put(admin, patient("held", "Holder", "1111111111111"))
    put(admin, glucose("held-1", "held", 120))
    holds: Holds = world["holds"]
    holds.set("Patient", "held", "litigation 2026-17")
    for path in ("/Patient/held/$expunge", "/Observation/held-1/$expunge"):
        refused = admin.post(path)
        assert refused.status_code == 409, refused.text
        assert refused.json()["resourceType"] == "OperationOutcome"
        assert "legal hold" in refused.text
    assert admin.get("/Observation/held-1").status_code == 200
    clinician = world["client"]("user/*.rs user/Observation.d")
    assert clinician.post("/Observation/held-1/$expunge").status_code == 403
    holds.clear("Patient", "held")
    answer = admin.post("/Observation/held-1/$expunge")
    assert answer.status_code == 200, answer.text
    assert admin.get("/Observation/held-1/_history/1").status_code == 404
    assert admin.get("/Patient/held").status_code == 200  # an instance erasure: that one only
    assert admin.post("/Observation/never-was/$expunge").status_code == 404


def test_patient_erasure_on_mongodb_clears_every_collection(tmp_path: Path) -> None:
    """MongoDB through mongomock (no MongoDB server here): after the erasure no document of
    any collection (the type collections, `history`, the clinical indexes) holds the
    patient's ids or values; the audit trail names the ids only."""
    from bson import json_util

    from fhir_server.rights.erasure import Erasure
    from fhir_server.service.fhir import FhirService
    from fhir_server.settings import Settings
    from fhir_server.storage import open_storage
    from tests.storage_backends import mongomock_url

    settings = Settings(db_url=mongomock_url(), jobs_dir=str(tmp_path / "jobs"))
    service = FhirService(open_storage(settings.db_url), settings)
    resources = service.resources
    resources.update("Patient", "gone", patient("gone", SECRET_FAMILY, SECRET_INS, SECRET_NAME))
    resources.update("Patient", "kept", patient("kept", "Martin", "1790175000001"))
    cgm = glucose("gone-1", "gone", 101, SECRET_NOTE)
    cgm["code"]["coding"].append({"system": "http://loinc.org", "code": "99504-3"})
    resources.update("Observation", "gone-1", cgm)
    resources.update("Observation", "gone-2", glucose("gone-2", "gone", 140))
    resources.delete("Observation", "gone-2")
    resources.update("Observation", "kept-1", glucose("kept-1", "kept", 99))
    db = service.indexed.backend.db

    def dump(skip_audit: bool) -> str:
        return "".join(
            json_util.dumps(list(db[name].find()))
            for name in db.list_collection_names()
            if not (skip_audit and name.startswith("audit"))
        )

    assert SECRET_FAMILY in dump(False)  # the check below can fail
    erasure = Erasure(service, Holds(tmp_path / "holds.db"))
    report = erasure.erase(erasure.patient_targets("gone"))
    assert sorted(report.erased) == ["Observation/gone-1", "Observation/gone-2", "Patient/gone"]
    everything, outside_audit = dump(False), dump(True)
    for value in (SECRET_FAMILY, SECRET_NAME, SECRET_INS, SECRET_NOTE, SECRET_NOTE.lower()):
        assert value not in everything, value
    for rid in ("gone-1", "gone-2", "Patient/gone", '"gone"'):
        assert rid not in outside_audit, rid
    assert service.storage.read("Observation", "kept-1") is not None
    assert service.storage.vread("Patient", "gone", 1) is None
    service.storage.close()


def test_a_patient_records_their_own_objection_and_it_is_audited(
    world: dict[str, Any],
) -> None:
    """Through the API with a patient-context token: an objection for its own patient is
    stored (and audited as a write naming the patient); one for another patient is not."""
    from fhir_server.rights.objections import objection_consent

    admin = world["admin"]
    put(admin, patient("self", "Self", "2222222222222"))
    put(admin, patient("other", "Other", "3333333333333"))
    mine = world["client"]("launch/patient patient/Consent.cru", patient="self")
    created = mine.post("/Consent", json=objection_consent("self", "portal", "2026-12-07"))
    assert created.status_code == 201, created.text
    refused = mine.post("/Consent", json=objection_consent("other", "portal", "2026-12-07"))
    assert refused.status_code == 403, refused.text
    auditor = world["client"]("system/AuditEvent.rs")
    events = auditor.get("/AuditEvent", params={"entity": f"Consent/{created.json()['id']}"})
    [event] = [e["resource"] for e in events.json()["entry"]]
    assert event["action"] == "C"
    assert {"reference": "Patient/self"} in [e.get("what") for e in event["entity"]]


def test_erasure_reaches_the_materialized_views(tmp_path: Path) -> None:
    """The materialized views (DuckDB table and Parquet file) lose the erased readings'
    rows: their incremental update could not, the history being erased too."""
    import duckdb

    from fhir_server.analytics.materialize import Materializer, StoreSource
    from fhir_server.rights.erasure import Erasure
    from fhir_server.service.fhir import FhirService
    from fhir_server.settings import Settings
    from fhir_server.storage import open_storage
    from tests.test_analytics_materialize import VIEW

    url = f"sqlite:///{tmp_path / 'm.db'}"
    service = FhirService(open_storage(url), Settings(db_url=url))
    for resource in (patient("gone", SECRET_FAMILY, SECRET_INS), patient("kept", "K", "1"),
                     glucose("gone-1", "gone", 101), glucose("kept-1", "kept", 99)):
        service.resources.update(resource["resourceType"], resource["id"], resource)
    out = tmp_path / "views"
    materializer = Materializer(out, StoreSource(service.storage))
    materializer.materialize(VIEW)
    materializer.close()
    erasure = Erasure(service, Holds(tmp_path / "holds.db"), materialized_dir=out)
    report = erasure.erase(erasure.patient_targets("gone"))
    service.storage.close()
    assert report.materialized_rows == 1
    with duckdb.connect(str(out / "views.duckdb"), read_only=True) as db:
        assert [r[0] for r in db.execute("SELECT id FROM glucose").fetchall()] == ["kept-1"]
        parquet = db.execute(f"SELECT id FROM '{out / 'glucose.parquet'}'").fetchall()
    assert [r[0] for r in parquet] == ["kept-1"]
