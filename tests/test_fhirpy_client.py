"""The server through a real FHIR client library (fhirpy), using the client's own API."""

from __future__ import annotations

import uuid

from fhirpy import SyncFHIRClient

from tests.conftest import RunningServer


def test_fhirpy_create_read_update_search_page_delete(server: RunningServer) -> None:
    client = SyncFHIRClient(server.url)
    family = f"Fhirpy{uuid.uuid4().hex[:8]}"
    patient = client.resource(
        "Patient",
        name=[{"family": family, "given": ["Zoé"]}],
        gender="female",
        birthDate="1970-02-03",
    )
    patient.save()
    assert patient.id
    assert patient["meta"]["versionId"] == "1"

    fetched = client.reference("Patient", patient.id).to_resource()
    assert fetched["name"][0]["family"] == family

    fetched["gender"] = "other"
    fetched.save()
    assert client.reference("Patient", patient.id).to_resource()["gender"] == "other"
    assert fetched["meta"]["versionId"] == "2"

    for i in range(12):
        client.resource(
            "Observation",
            status="final",
            code={"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
            subject={"reference": f"Patient/{patient.id}"},
            valueQuantity={
                "value": 100 + i,
                "unit": "mg/dL",
                "system": "http://unitsofmeasure.org",
                "code": "mg/dL",
            },
        ).save()
    search = client.resources("Observation").search(subject=f"Patient/{patient.id}").limit(5)
    first_page = search.fetch()
    assert len(first_page) == 5
    everything = search.fetch_all()  # follows the absolute `next` links
    assert len(everything) == 12
    assert sorted(o["valueQuantity"]["value"] for o in everything) == list(range(100, 112))
    assert search.count() == 12

    observation = everything[0]
    observation.delete()
    remaining = client.resources("Observation").search(subject=f"Patient/{patient.id}").fetch_all()
    assert len(remaining) == 11
