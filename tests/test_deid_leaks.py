"""Leak scans: identifying values planted in every element that can carry them, for every
resource type the facade serves (generated from the R4 definitions), and in the free-text
fields a determined look found served unchanged, through HL7 v2 OBX TX/FT values, CSV and
direct writes; none reaches the facade, an export or a SQL on FHIR view of a recipient."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_server.deid.elements import CARRIERS, RESOURCE, elements
from fhir_server.deid.engine import Deidentifier, Suppressed
from fhir_server.deid.facade import served_types
from fhir_server.deid.keys import RecipientKeys
from fhir_server.deid.rules import load_rules
from fhir_server.settings import Settings
from mappers.device_csv import to_bundle as csv_bundle
from mappers.hl7v2 import to_bundle as hl7_bundle
from tests.conftest import RunningServer, database_url
from tests.deid_data import exported_files, write_recipients

SECRET = "leak-scan-master-secret-0000000"
KEY = "leak-key"
NAME, INS, IPP = "Héloïse Vautrin-Leclerc", "2840675123456", "IPP-99887766"
PHONE, EMAIL, STREET = "+33 6 12 34 56 78", "heloise.vautrin@exemple.fr", "17 rue des Mimosas"
BIRTH = "1984-06-02"
PLANTED = (NAME, INS, IPP, PHONE, EMAIL, STREET)
# The marker written into every generated element (one per type: short enough for an id).
MARK = "LEAKvautrin"
# What a value of each carrier type must look like to be planted (a valid one carrying
# the mark, so a rule that keeps "valid" values would let it through).
PLANT = {
    "string": f"{MARK} {NAME} {PHONE}",
    "markdown": f"**{MARK}** {NAME}",
    "xhtml": f'<div xmlns="http://www.w3.org/1999/xhtml">{MARK} {NAME}</div>',
    "uri": f"https://hopital.example/{MARK}/{IPP}",
    "url": f"https://hopital.example/{MARK}/{IPP}",
    "canonical": f"https://hopital.example/{MARK}/StructureDefinition/x",
    "id": f"{MARK}-{IPP}",
    "oid": "urn:oid:1.2.250.1.999.77.1984060217",
    "uuid": "urn:uuid:5f1d9e0a-1111-4a4a-9b9b-198406021723",
    "base64Binary": "TEVBS3ZhdXRyaW4gSMOpbG/Dr3Nl",  # "LEAKvautrin Héloïse"
    "code": MARK,
    "date": BIRTH,
    "dateTime": f"{BIRTH}T07:41:13+02:00",
    "instant": f"{BIRTH}T07:41:13.221+02:00",
    "time": "07:41:13",
}
# Carriers whose value survives by design: codes (tokens of code systems: the rules keep
# them), times of day (the shift keeps them), and the OID's shape (a pseudo-UID keeps 2.25.).
KEPT_BY_DESIGN = {"code", "time"}


# Kept by design whatever they hold: a Coding's system (the code system: a code means
# nothing without it; a local system's URL names the sender, never the patient).
KEPT_ELEMENTS = {("Coding", "system")}


def planted_paths(resource_type: str, depth: int = 3) -> list[tuple[list[str], str]]:
    """Every path (to `depth` levels) of `resource_type` ending in a carrier element,
    with the element's type; a definition is not entered again below itself."""
    found: list[tuple[list[str], str]] = []

    def visit(definition: str, path: list[str], seen: tuple[str, ...]) -> None:
        for name, element in elements(definition).items():
            if name.startswith("_") or name in ("extension", "modifierExtension", "contained"):
                continue
            if (definition, name) in KEPT_ELEMENTS:
                continue
            if element.type in CARRIERS and not element.enumerated:
                found.append(([*path, name], element.type))
            elif (
                element.type not in CARRIERS
                and element.type != RESOURCE
                and not element.is_primitive
                and len(path) + 1 < depth
                and element.type not in seen
            ):
                visit(element.type, [*path, name], (*seen, element.type))

    visit(resource_type, [], (resource_type,))
    return [(p, t) for p, t in found if p != ["id"]]


def with_value(resource_type: str, path: list[str], value: str) -> dict[str, Any]:
    """A resource holding `value` at `path` (lists where the definition has lists)."""
    resource: dict[str, Any] = {"resourceType": resource_type, "id": "r1"}
    node, definition = resource, resource_type
    for name in path[:-1]:
        element = elements(definition)[name]
        child: dict[str, Any] = {}
        node[name] = [child] if element.is_list else child
        node, definition = child, element.type
    last = elements(definition)[path[-1]]
    node[path[-1]] = [value] if last.is_list else value
    return resource


@pytest.mark.parametrize("resource_type", served_types())
def test_a_value_planted_in_any_carrier_element_never_leaves(resource_type: str) -> None:
    """One resource per element: the planted value reaches no output (or the resource is
    not released at all). Codes and times of day are kept by design and not planted."""
    engine = Deidentifier(RecipientKeys.derive(SECRET.encode(), "scan"), load_rules())
    checked = 0
    for path, etype in planted_paths(resource_type):
        if etype in KEPT_BY_DESIGN:
            continue
        resource = with_value(resource_type, path, PLANT[etype])
        try:
            out = json.dumps(engine.transform(copy.deepcopy(resource)), ensure_ascii=False)
        except Suppressed:
            continue
        checked += 1
        planted = PLANT[etype]
        leaked = [s for s in (planted, MARK, NAME, IPP, BIRTH, "1984060217") if s in out]
        if etype in ("date", "dateTime", "instant"):
            leaked = [s for s in leaked if s != BIRTH] + ([BIRTH] if BIRTH in out else [])
        assert not leaked, (resource_type, ".".join(path), leaked, out[:400])
    assert checked > 0


# -- through the server: HL7 v2, CSV and direct writes; facade, export and SQL on FHIR ---

HL7 = (
    "MSH|^~\\&|LABO|CHU-DIAB^1.2.250.1.999.1.1^ISO|DIATABASE|DIATABASE|20240315103000+0100||"
    "ORU^R01^ORU_R01|MSG-LEAK-1|P|2.5.1|||AL|NE|FRA|UNICODE UTF-8\r"
    f"PID|1||{INS}^^^ASIP-SANTE-INS-NIR-TEST&1.2.250.1.213.1.4.10&ISO^INS~{IPP}^^^CHU-DIAB"
    f"&1.2.250.1.999.1.2&ISO^PI||Vautrin-Leclerc^Héloïse^^^^^L||19840602|F|||{STREET}^^Lyon^^"
    f"69003^FRA^H||{PHONE}^PRN^PH~^NET^Internet^{EMAIL}\r"
    "OBR|1|CMD-1^DPI|LAB-1^LABO|GLYC^Bilan^L|||20240315080000+0100\r"
    "OBX|1|NM|GLU^Glycémie^L^2345-7^Glucose SerPl-mCnc^LN||126|mg/dL|70-105|H|||F|||"
    "20240315080000+0100\r"
    f"NTE|1||Vu avec {NAME}, tel {PHONE}\r"
    f"OBX|2|TX|COMMENT^Commentaire^L||Patiente {NAME} INS {INS} joignable au {PHONE}||||||F"
    "|||20240315080000+0100\r"
    f"OBX|3|FT|CR^Compte rendu^L||{STREET}\\.br\\{EMAIL} née le 02/06/1984||||||F|||"
    "20240315080000+0100\r"
)
LAB_CSV = (
    "effective,code,code_system,display,value,unit,patient_identifier,patient_identifier_system\n"
    f"2024-03-16T08:00:00+01:00,2345-7,http://loinc.org,Glucose,7.1,mmol/L,{INS},"
    "urn:oid:1.2.250.1.213.1.4.10\n"
    f"2024-03-16T08:05:00+01:00,8251-1,http://loinc.org,{NAME},rappeler au {PHONE},,{INS},"
    "urn:oid:1.2.250.1.213.1.4.10\n"
)


def direct_writes(patient: str) -> list[dict[str, Any]]:
    """The fifteen free-text fields found served unchanged, each holding identifying text."""
    subject = {"reference": f"Patient/{patient}"}
    text = f"{NAME} INS {INS} {IPP} {PHONE} {EMAIL} {STREET} né le {BIRTH}"
    concept = {"coding": [{"system": "http://snomed.info/sct", "code": "73211009"}], "text": text}
    component = {"coding": [{"system": "http://loinc.org", "code": "8480-6"}], "text": text}
    return [
        {"resourceType": "Observation", "status": "final", "code": concept, "subject": subject,
         "valueString": text, "component": [{"code": component, "valueString": text}],
         "meta": {"tag": [{"system": "https://hopital.example/tags", "code": "x",
                           "display": text}]}},
        {"resourceType": "Condition", "code": concept, "subject": subject},
        {"resourceType": "Encounter", "status": "finished", "subject": subject,
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                   "code": "AMB"}, "reasonCode": [concept]},
        {"resourceType": "MedicationStatement", "status": "active", "subject": subject,
         "medicationCodeableConcept": {"coding": [{"system": "http://www.whocc.no/atc",
                                                   "code": "A10BA02"}]},
         "dosage": [{"text": text}]},
        {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
         "subject": subject, "code": component, "orderDetail": [concept]},
        {"resourceType": "Device", "patient": subject,
         "deviceName": [{"name": text, "type": "user-friendly-name"}]},
        {"resourceType": "FamilyMemberHistory", "status": "completed", "patient": subject,
         "name": text, "relationship": {"coding": [{
             "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "MTH"}]}},
        {"resourceType": "CareTeam", "subject": subject, "name": text},
        {"resourceType": "Goal", "lifecycleStatus": "active", "subject": subject,
         "description": concept},
        {"resourceType": "Coverage", "status": "active", "beneficiary": subject,
         "payor": [subject], "class": [{"type": concept, "value": text, "name": text}]},
        {"resourceType": "Flag", "status": "active", "subject": subject, "code": concept},
        {"resourceType": "AllergyIntolerance", "patient": subject, "clinicalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                        "allergyintolerance-clinical", "code": "active"}]},
         "reaction": [{"manifestation": [concept], "description": text}]},
    ]  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("leaks")
    recipients = write_recipients(folder / "recipients.json", {"scan": KEY},
                                  {"scan": {"kAnonymity": {"k": 1}}})  # fmt: skip
    settings = Settings(
        db_url=database_url(folder),
        deid_secret=SECRET,
        deid_recipients=str(recipients),
        insecure_dev=True,
    )
    with (
        RunningServer(settings) as running,
        httpx.Client(base_url=running.url, timeout=120) as http,
    ):
        hl7 = http.post("/", json=hl7_bundle(HL7))
        assert hl7.status_code == 200, hl7.text[:500]
        patient = next(
            e["response"]["location"].split("/")[1]
            for e in hl7.json()["entry"]
            if e["response"]["location"].startswith("Patient/")
        )
        lab = csv_bundle(LAB_CSV.encode(), format="lab-result", timezone="Europe/Paris")
        assert http.post("/", json=lab.bundle).status_code == 200
        for resource in direct_writes(patient):
            response = http.post(f"/{resource['resourceType']}", json=resource)
            assert response.status_code == 201, response.text[:500]
        yield http, folder


def leaks(text: str) -> list[str]:
    return [s for s in (*PLANTED, BIRTH, "02/06/1984") if s in text]


def test_nothing_planted_reaches_the_facade_an_export_or_a_view(
    server: tuple[httpx.Client, Path],
) -> None:
    http, folder = server
    auth = {"Authorization": f"Bearer {KEY}"}
    stored = json.dumps(
        [http.get(f"/{t}").json() for t in ("Observation", "Patient", "Goal", "Coverage")],
        ensure_ascii=False,
    )
    assert set(leaks(stored)) >= {NAME, INS, PHONE}  # they are there, in the clinical store
    served = []
    for rtype in (
        "Patient",
        "Observation",
        "Condition",
        "Encounter",
        "MedicationStatement",
        "ServiceRequest",
        "Device",
        "FamilyMemberHistory",
        "CareTeam",
        "Goal",
        "Coverage",
        "Flag",
        "AllergyIntolerance",
        "DiagnosticReport",
    ):
        response = http.get(f"/deid/{rtype}?_count=100", headers=auth)
        assert response.status_code == 200
        served.append(response.text)
        assert response.json().get("entry"), rtype  # served, without what identifies
    text = "\n".join(served)
    found = leaks(text)
    assert found == [], [text[max(0, text.find(s) - 300) : text.find(s) + 80] for s in found]
    # An export.
    files = exported_files(http, auth)
    assert len(files) >= 10 and leaks("\n".join(files)) == []
    # A SQL on FHIR view over what the recipient is released.
    view = {
        "resourceType": "ViewDefinition", "status": "active", "resource": "Observation",
        "select": [{"column": [
            {"name": "id", "path": "getResourceKey()"},
            {"name": "text", "path": "code.text"},
            {"name": "value", "path": "value.ofType(string)"},
            {"name": "tags", "path": "meta.tag.display", "collection": True},
        ]}],
    }  # fmt: skip
    rows = http.post(
        "/deid/ViewDefinition/$run",
        headers=auth,
        json={"resourceType": "Parameters", "parameter": [
            {"name": "viewResource", "resource": view},
            {"name": "_format", "valueCode": "ndjson"}]},
    )  # fmt: skip
    assert rows.status_code == 200, rows.text[:300]
    assert rows.text.count("\n") >= 3 and leaks(rows.text) == []
