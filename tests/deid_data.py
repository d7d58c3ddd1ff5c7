"""Synthetic French diabetes patients for the de-identification tests (no real person).

Each patient has an INS (and a test INS), an NIR, an IPP, phones, an e-mail, an address,
a CGM device with a serial number, CGM glucose readings every 5 minutes (with seconds),
an HbA1c, a type 2 diabetes Condition with a free-text note and a MedicationStatement.
`secrets_of` lists every string that must never leave the facade.
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

SYNTHEA = Path(__file__).parent / "data" / "fhir" / "synthea"
FAMILIES = ["Dubois-Martin", "Lefèvre", "Garnier", "Rousseau", "Fontaine", "Chevallier"]
GIVENS = ["Héloïse", "Mathéo", "Gaëlle", "Anatole", "Soizic", "Bérénice"]
CITIES = [("Lyon", "69003"), ("Marseille", "13008"), ("Rennes", "35000"), ("Lille", "59800")]
INS_SYSTEMS = ["urn:oid:1.2.250.1.213.1.4.8", "urn:oid:1.2.250.1.213.1.4.10"]


def french_patients(count: int = 12, readings: int = 30, seed: int = 7) -> list[dict[str, Any]]:
    """A transaction Bundle's worth of resources, with ids assigned (PUT-able)."""
    rnd = random.Random(seed)
    resources: list[dict[str, Any]] = []
    for n in range(count):
        pid = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
        nir = (
            f"{rnd.choice('12')}{rnd.randint(40, 99)}{rnd.randint(1, 12):02d}{rnd.randint(10, 95)}"
        )
        nir += f"{rnd.randint(100, 999)}{rnd.randint(100, 999)}{rnd.randint(10, 97):02d}"
        city, postal = CITIES[n % len(CITIES)]
        birth = f"19{rnd.randint(40, 99)}-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}"
        family, given = FAMILIES[n % 6] + str(n), GIVENS[n % 6] + str(n)
        patient = {
            "resourceType": "Patient",
            "id": pid,
            "text": {
                "status": "generated",
                "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{given} {family}</div>',
            },
            "identifier": [
                {"system": INS_SYSTEMS[n % 2], "value": nir},
                {"system": "urn:oid:1.2.250.1.71.4.2.1", "value": nir[:13] + "NIR"},
                {
                    "system": "urn:oid:1.2.250.1.999.1.1",
                    "type": {"text": "IPP"},
                    "value": f"IPP{n:06d}X",
                },
            ],
            "name": [{"family": family, "given": [given], "text": f"{given} {family}"}],
            "telecom": [
                {
                    "system": "phone",
                    "value": f"+33 6 {rnd.randint(10, 99)} {rnd.randint(10, 99)} {n + 10:02d} 57",
                },
                {"system": "email", "value": f"{given.lower()}.{n}@exemple.fr"},
            ],
            "gender": "female" if n % 2 else "male",
            "birthDate": birth,
            "address": [
                {
                    "line": [f"{n + 3} rue des Lilas{n}", "Bâtiment B"],
                    "city": city,
                    "postalCode": postal,
                    "country": "FR",
                }
            ],
            "contact": [
                {
                    "name": {"family": f"Contact{family}"},
                    "telecom": [{"system": "phone", "value": f"+33 1 45 67 89 {n:02d}"}],
                }
            ],
            "extension": [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                    "valueAddress": {"city": f"Bourg{n}"},
                }
            ],
        }
        device = {
            "resourceType": "Device",
            "id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
            "serialNumber": f"SN-CGM-{rnd.randint(10**7, 10**8)}",
            "identifier": [{"system": "urn:oid:1.2.250.1.999.2", "value": f"UDI{n:05d}Z"}],
            "patient": {"reference": f"Patient/{pid}"},
            "deviceName": [{"name": "FreeStyle Libre 2", "type": "manufacturer-name"}],
        }
        resources += [patient, device]
        start = datetime(2024, 3, 5, 8, 0, rnd.randint(0, 59), tzinfo=timezone(timedelta(hours=1)))
        for k in range(readings):
            when = start + timedelta(minutes=5 * k, seconds=rnd.randint(0, 4))
            resources.append(
                {
                    "resourceType": "Observation",
                    "id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "99504-3"}]},
                    "subject": {"reference": f"Patient/{pid}", "display": f"{given} {family}"},
                    "device": {"reference": f"Device/{device['id']}"},
                    "effectiveDateTime": when.isoformat(),
                    "valueQuantity": {
                        "value": round(rnd.uniform(60, 250), 1),
                        "unit": "mg/dL",
                        "system": "http://unitsofmeasure.org",
                        "code": "mg/dL",
                    },
                }
            )
        resources.append(
            {
                "resourceType": "Observation",
                "id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
                "subject": {"reference": f"Patient/{pid}"},
                "effectiveDateTime": "2024-02-20",
                "valueQuantity": {
                    "value": 7.40,
                    "unit": "%",
                    "system": "http://unitsofmeasure.org",
                    "code": "%",
                },
                "note": [
                    {"text": f"Vu avec {given} {family}, tel {patient['telecom'][0]['value']}"}
                ],
            }
        )
        resources.append(
            {
                "resourceType": "Condition",
                "id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
                "clinicalStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                            "code": "active",
                        }
                    ]
                },
                "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9"}]},
                "subject": {"reference": f"Patient/{pid}"},
                "onsetDateTime": "2015-06-01T09:30:00+02:00",
                "note": [{"text": f"Diagnostic posé chez {given} {family} à {city}"}],
            }
        )
        resources.append(
            {
                "resourceType": "MedicationStatement",
                "id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
                "status": "active",
                "medicationCodeableConcept": {
                    "coding": [{"system": "http://www.whocc.no/atc", "code": "A10BA02"}]
                },
                "subject": {"reference": f"Patient/{pid}"},
                "effectivePeriod": {"start": "2015-06-15"},
            }
        )
    return resources


def transaction(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in resources
        ],
    }


def write_recipients(
    path: Path, keys: dict[str, str], parameters: dict[str, dict[str, Any]] | None = None
) -> Path:
    """A recipients file: one recipient per (id, API key), with optional parameters."""
    from fhir_server.deid.recipients import api_key_hash

    recipients = [
        {
            "id": rid,
            "api_key_sha256": api_key_hash(key),
            **({"parameters": parameters[rid]} if parameters and rid in parameters else {}),
        }
        for rid, key in keys.items()
    ]
    path.write_text(json.dumps(recipients))
    return path


def exported_files(http: Any, headers: dict[str, str], query: str = "") -> list[str]:
    """Run a recipient's de-identified export through the facade (`http`: an httpx
    client of a running server) and return the text of each file it lists."""
    import time

    started = http.get(f"/deid/$export{query}", headers=headers)
    assert started.status_code == 202, started.text[:300]
    status_url = started.headers["Content-Location"]
    deadline = time.monotonic() + 120  # a job of the server: wait on its status
    while (status := http.get(status_url, headers=headers)).status_code == 202:
        assert time.monotonic() < deadline, "the export did not finish"
        time.sleep(0.2)
    assert status.status_code == 200, status.text[:300]
    return [http.get(o["url"], headers=headers).text for o in status.json()["output"]]


def synthea_bundles() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(SYNTHEA.glob("*.json"))]


def secrets_of(resource: dict[str, Any]) -> set[str]:
    """Identifying strings of one original resource: ids, identifier values, names,
    telecom, address lines and cities, full birth dates, device serials, notes."""
    found: set[str] = set()
    if resource.get("id"):
        found.add(resource["id"])
    rtype = resource.get("resourceType")

    def walk(node: Any, key: str = "") -> None:
        if isinstance(node, dict):
            if key == "identifier" and isinstance(node.get("value"), str):
                found.add(node["value"])
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, list):
            for item in node:
                walk(item, key)

    walk(resource)
    if rtype in ("Patient", "Practitioner", "RelatedPerson", "Person"):
        for name in resource.get("name", []):
            found.update(name.get("given", []))
            if name.get("family"):
                found.add(name["family"])
        for telecom in resource.get("telecom", []):
            found.add(telecom.get("value", ""))
        for address in resource.get("address", []):
            found.update(address.get("line", []))
            if address.get("city"):
                found.add(address["city"])
        if len(resource.get("birthDate", "")) == 10:
            found.add(resource["birthDate"])
    if rtype == "Device" and resource.get("serialNumber"):
        found.add(resource["serialNumber"])
    for note in resource.get("note", []):
        found.add(note.get("text", ""))
    return {s for s in found if len(s) >= 4}
