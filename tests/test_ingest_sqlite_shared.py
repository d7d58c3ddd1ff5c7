"""Two processes on one SQLite file, as `diatabase import` (or `mllp`) beside a running
`diatabase serve`: what one stores, the other finds, even for search parameters that
had never been indexed when the other opened the database."""

from __future__ import annotations

from pathlib import Path

from fhir_server.model import jsonio
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage import open_storage
from tests.test_api_crud import glucose


def service(url: str) -> FhirService:
    return FhirService(open_storage(url), Settings(db_url=url))


def test_search_sees_parameters_indexed_by_another_storage(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    server, importer = service(url), service(url)
    try:
        # The server has answered a search before anything was stored...
        empty = server.search_bundle("Observation", [("subject", "Patient/shared")], "", True)
        assert not empty.get("entry")
        # ...then the importer stores the first Observation ever (new search parameters).
        importer.resources.create("Observation", glucose(patient="Patient/shared"))
        found = server.search_bundle("Observation", [("subject", "Patient/shared")], "", True)
        found = jsonio.loads(jsonio.dumps(found))  # entries hold stored JSON as fragments
        assert [e["resource"]["subject"] for e in found["entry"]] == [
            {"reference": "Patient/shared"}
        ]
    finally:
        server.storage.close()
        importer.storage.close()
