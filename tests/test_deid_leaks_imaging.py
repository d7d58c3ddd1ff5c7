"""Leak scan over imaging and documents: ImagingStudy mapped from pydicom's own DICOM test
files (CT_small.dcm, MR_small.dcm, under pydicom's MIT licence), a DocumentReference with
an attachment (URL, title, inline data, hash, creation date), a Provenance (agents,
signature, policy, location) and free text: no original UID, id, name, identifier, date or
URL reaches the facade or an export; DICOM UIDs come out as keyed pseudo-UIDs 2.25.<n>."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from fhir_server.settings import Settings
from mappers.dicom import to_bundle as dicom_bundle
from tests.conftest import RunningServer, database_url
from tests.deid_data import exported_files, write_recipients

SECRET = "imaging-leak-master-secret-000000"
KEY = "imaging-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
NAME, IPP, AUTHOR, RPPS = "Héloïse Vautrin-Leclerc", "IPP-99887766", "Jean Martin", "810001234567"
SITE = "dpi.chu-lyon.example"
DOCUMENT_TEXT = f"Compte rendu de {NAME}, IPP {IPP}, rédigé par le Dr {AUTHOR}"
DOCUMENT_DATA = base64.b64encode(DOCUMENT_TEXT.encode()).decode()
WHEN = "2024-03-15"
DICOM_FILES = [get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")]
PSEUDO_UID = re.compile(r"2\.25\.(0|[1-9][0-9]*)")


def dicom_secrets() -> set[str]:
    """What the DICOM files identify: every UID of a study, series or instance, the
    patients' names and ids, and every study, series and acquisition date."""
    found: set[str] = set()
    for path in DICOM_FILES:
        ds = dcmread(path, stop_before_pixels=True)
        found |= {ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}
        found |= {f'"{ds.PatientID}"', str(ds.PatientName.family_name)}
        for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
            value = str(ds.get(keyword) or "")
            if len(value) == 8:
                found.add(f"{value[:4]}-{value[4:6]}-{value[6:]}")
    return found


def documents(patient: str, study: str) -> list[dict[str, Any]]:
    subject = {"reference": f"Patient/{patient}"}
    author = {"display": f"Dr {AUTHOR}",
              "identifier": {"system": "urn:oid:1.2.250.1.71.4.2.1", "value": RPPS}}
    url = f"https://{SITE}/documents/{IPP}/cr.txt"
    document = {
        "resourceType": "DocumentReference", "status": "current",
        "masterIdentifier": {"system": f"https://{SITE}/documents", "value": IPP},
        "identifier": [{"system": "urn:oid:1.2.250.1.999.1.3", "value": f"DOC-{IPP}"}],
        "type": {"coding": [{"system": "http://loinc.org", "code": "11488-4"}],
                 "text": f"Consultation {NAME}"},
        "subject": subject, "date": f"{WHEN}T10:30:00+01:00", "author": [author],
        "description": DOCUMENT_TEXT,
        "content": [{"attachment": {
            "contentType": "text/plain", "language": "fr", "data": DOCUMENT_DATA, "url": url,
            "size": len(DOCUMENT_TEXT.encode()), "title": f"CR {NAME}",
            "hash": base64.b64encode(hashlib.sha1(DOCUMENT_TEXT.encode()).digest()).decode(),
            "creation": f"{WHEN}T10:00:00+01:00"}}],
        "context": {"related": [{"reference": f"ImagingStudy/{study}"}],
                    "period": {"start": f"{WHEN}T09:00:00+01:00"}},
    }
    provenance = {
        "resourceType": "Provenance",
        "target": [{"reference": f"ImagingStudy/{study}"}],
        "recorded": f"{WHEN}T10:31:12.123+01:00",
        "policy": [f"https://{SITE}/policy/{IPP}"],
        "location": {"display": f"Diabétologie, {SITE}"},
        "agent": [{"who": author, "onBehalfOf": {"display": SITE}}],
        "entity": [{"role": "source",
                    "what": {"reference": f"ImagingStudy/{study}", "display": f"CR {NAME}"}}],
        "signature": [{
            "type": [{"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.1"}],
            "when": f"{WHEN}T10:31:12+01:00", "who": author, "sigFormat": "application/jose",
            "data": DOCUMENT_DATA}],
    }  # fmt: skip
    return [document, provenance]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, set[str]]]:
    """A server holding the DICOM studies and their documents; with the secrets to look
    for (the server-assigned ids of every stored resource among them)."""
    folder = tmp_path_factory.mktemp("imaging-leaks")
    recipients = write_recipients(folder / "recipients.json", {"scan": KEY},
                                  {"scan": {"kAnonymity": {"k": 1}}})  # fmt: skip
    settings = Settings(db_url=database_url(folder), deid_secret=SECRET,
                        deid_recipients=str(recipients), insecure_dev=True)  # fmt: skip
    with (
        RunningServer(settings) as running,
        httpx.Client(base_url=running.url, timeout=120) as http,
    ):
        loaded = http.post("/", json=dicom_bundle(DICOM_FILES))
        assert loaded.status_code == 200, loaded.text[:500]
        study = http.get("/ImagingStudy").json()["entry"][0]["resource"]
        patient = study["subject"]["reference"].split("/")[1]
        for resource in documents(patient, study["id"]):
            made = http.post(f"/{resource['resourceType']}", json=resource)
            assert made.status_code == 201, made.text[:500]
        secrets = dicom_secrets() | {NAME, IPP, AUTHOR, RPPS, SITE, DOCUMENT_DATA, WHEN}
        for rtype in ("Patient", "ImagingStudy", "DocumentReference", "Provenance"):
            secrets |= {e["resource"]["id"] for e in http.get(f"/{rtype}").json()["entry"]}
        yield http, secrets


def leaked(text: str, secrets: set[str]) -> list[str]:
    return sorted(s for s in secrets if s in text)


def test_no_uid_id_name_identifier_date_or_url_reaches_the_facade_or_an_export(
    server: tuple[httpx.Client, set[str]],
) -> None:
    http, secrets = server
    stored = json.dumps([http.get(f"/{t}").json() for t in ("ImagingStudy", "Provenance")])
    assert len(leaked(stored, secrets)) >= 8  # they are there, in the clinical store
    served = {}
    for rtype in ("Patient", "ImagingStudy", "DocumentReference", "Provenance"):
        response = http.get(f"/deid/{rtype}", headers=AUTH)
        assert response.status_code == 200, response.text[:300]
        served[rtype] = response.json()
        assert served[rtype].get("entry"), rtype  # served, without what identifies
        assert leaked(response.text, secrets) == [], (rtype, leaked(response.text, secrets))
    for entry in served["ImagingStudy"]["entry"]:
        study = entry["resource"]
        uids = [study["identifier"][0]["value"].removeprefix("urn:oid:")]
        uids += [s["uid"] for s in study["series"]]
        uids += [i["uid"] for s in study["series"] for i in s["instance"]]
        assert all(PSEUDO_UID.fullmatch(u) and len(u) <= 64 for u in uids), uids
    files = exported_files(http, AUTH)
    assert len(files) >= 4
    assert leaked("\n".join(files), secrets) == []


def test_pseudo_uids_are_the_same_in_the_facade_and_the_export(
    server: tuple[httpx.Client, set[str]],
) -> None:
    """Consistent within a recipient: a study's pseudo-UIDs are one value wherever served."""
    http, _ = server
    served = http.get("/deid/ImagingStudy", headers=AUTH).json()
    uids = {s["uid"] for e in served["entry"] for s in e["resource"]["series"]}
    exported = "\n".join(exported_files(http, AUTH, "?_type=ImagingStudy"))
    assert len(uids) == 2 and all(uid in exported for uid in uids)
