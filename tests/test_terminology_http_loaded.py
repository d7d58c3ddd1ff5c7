"""A server started with `terminology_dir` (tables written by `diatabase terminology load`)
serves the loaded table: operations, the stored CodeSystem and :below search."""

from __future__ import annotations

from pathlib import Path

import httpx

from fhir_server.settings import Settings
from terminology.cli import main as terminology_cli
from tests.conftest import RunningServer

ATC = "http://www.whocc.no/atc"
DATA = Path(__file__).parent / "data" / "terminology"


def test_loaded_atc_table_is_served(tmp_path: Path, capsys) -> None:
    tables = tmp_path / "tables"
    assert terminology_cli(["terminology", "load", "--atc", str(DATA / "who_atc_synthetic.csv"),
                            "--into", str(tables), "--version", "test-2026"]) == 0
    capsys.readouterr()
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
                        terminology_dir=str(tables), insecure_dev=True)
    with RunningServer(settings) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        lookup = client.get("/CodeSystem/$lookup", params={"system": ATC, "code": "A10BX99"})
        assert lookup.status_code == 200, lookup.text
        (stored,) = [e["resource"] for e in
                     client.get("/CodeSystem", params={"url": ATC}).json()["entry"]]
        assert stored["version"] == "test-2026"
        statement = client.post("/MedicationStatement", json={
            "resourceType": "MedicationStatement", "status": "active",
            "subject": {"reference": "Patient/loaded"},
            "medicationCodeableConcept": {"coding": [{"system": ATC, "code": "A10BX99"}]}})
        assert statement.status_code == 201
        found = client.get("/MedicationStatement", params={"code:below": f"{ATC}|A10BX"}).json()
        assert [e["resource"]["id"] for e in found["entry"]] == [statement.json()["id"]]


def test_settings_read_the_terminology_dir_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("DIATABASE_TERMINOLOGY_DIR", "/var/lib/diatabase/terminology")
    assert Settings.from_env().terminology_dir == "/var/lib/diatabase/terminology"
    monkeypatch.delenv("DIATABASE_TERMINOLOGY_DIR")
    assert Settings.from_env().terminology_dir is None
