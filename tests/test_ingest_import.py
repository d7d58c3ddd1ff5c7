"""`diatabase import` (through `fhir_server.cli.main`) into the database of a running server,
then the data searched back over HTTP; importing the same files again creates nothing."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid

from fhir_server.cli import main
from tests.conftest import RunningServer
from tests.test_dicom_mapping import fundus
from tests.test_ingest_convert import GLUCOSE_ORU, libre_export

DATA = Path(__file__).parent / "data"
CSV = DATA / "csv"
INS_TEST = "urn:oid:1.2.250.1.213.1.4.10"
LOINC = "http://loinc.org"
# The other device samples map the same way (tests/test_device_csv_samples.py); these two
# cover both CGM vendors, mg/dL and mmol/L, while keeping the test short.
DEVICE_FILES = [
    CSV / "dexcom-clarity" / "dexcom_clarity_g6_cgmquantify.csv",
    CSV / "freestyle-libre" / "librelink_mmol_no_preamble.csv",
]


def total(client: httpx.Client, path: str, **params: str) -> int:
    response = client.get(path, params={**params, "_total": "accurate", "_count": "0"})
    assert response.status_code == 200, response.text
    return response.json()["total"]


def run_import(server: RunningServer, capsys: pytest.CaptureFixture, *args: str) -> tuple[
    int, str
]:
    code = main(["import", *args, "--db", server.app.state.settings.db_url])
    captured = capsys.readouterr()
    assert "it/s" not in captured.err  # no progress bar when stderr is not a terminal
    return code, captured.out


def totals_line(output: str) -> list[int]:
    """msgs, rows, readings, created, updated, unchanged, rejected of the `total` line."""
    line = next(line for line in output.splitlines() if line.startswith("total "))
    return [int(n) for n in re.findall(r"\d+", line)]


def create_patient(client: httpx.Client, ins: str) -> str:
    response = client.post("/Patient", json={
        "resourceType": "Patient", "identifier": [{"system": INS_TEST, "value": ins}]})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_device_exports_are_stored_and_found_then_reimport_creates_nothing(
    server: RunningServer, client: httpx.Client, capsys: pytest.CaptureFixture
) -> None:
    patient_id = create_patient(client, "IMPORT-DEVICES")
    options = ["--patient", f"Patient?identifier={INS_TEST}|IMPORT-DEVICES",
               "--timezone", "Europe/Paris"]
    code, output = run_import(server, capsys, *map(str, DEVICE_FILES), *options)
    assert code == 0, output
    # rows read, readings, created (readings + one Device per file), nothing rejected
    assert totals_line(output) == [0, 2159 + 6, 2148 + 6, 2154 + 2, 0, 0, 0]
    assert "dexcom_clarity_g6_cgmquantify.csv: 11 rows skipped" in output

    subject = f"Patient/{patient_id}"
    assert total(client, "/Observation", subject=subject, code=f"{LOINC}|99504-3") == 2148
    assert total(client, "/Observation", subject=subject, code=f"{LOINC}|105272-9") == 6
    assert total(client, "/Device") == 2
    first = client.get("/Observation", params={
        "subject": subject, "code": f"{LOINC}|99504-3", "date": "2016-10-24T11:24:17+02:00"})
    [entry] = first.json()["entry"]
    assert entry["resource"]["valueQuantity"]["value"] == 103
    meta = entry["resource"]["meta"]

    code, output = run_import(server, capsys, *map(str, DEVICE_FILES), *options)
    assert code == 0, output
    assert totals_line(output)[3:] == [0, 0, 2154 + 2, 0]  # created, updated, unchanged
    assert total(client, "/Observation", subject=subject) == 2154
    again = client.get(f"/Observation/{entry['resource']['id']}").json()
    assert again["meta"] == meta  # not even a new version


def test_lab_export_with_its_own_patients(
    server: RunningServer, client: httpx.Client, capsys: pytest.CaptureFixture
) -> None:
    sample = str(CSV / "lab-csv" / "reportstream_simplereport.csv")
    code, output = run_import(server, capsys, sample)
    assert code == 0, output
    assert totals_line(output) == [0, 50, 50, 100, 0, 0, 0]
    assert total(client, "/Observation", code=f"{LOINC}|94558-4") == 32
    assert total(client, "/Observation", code=f"{LOINC}|94534-5") == 18
    code, output = run_import(server, capsys, sample, "--format", "simplereport")
    assert totals_line(output)[3:] == [0, 0, 100, 0]


def test_hl7v2_samples_then_reimport_creates_nothing(
    server: RunningServer, client: httpx.Client, capsys: pytest.CaptureFixture
) -> None:
    code, output = run_import(server, capsys, str(DATA / "hl7v2"))
    assert code == 0, output
    counts = totals_line(output)
    assert counts[0] == 41  # 42 files; the empty FHS/BHS batch holds no message
    assert counts[3] > 100 and counts[6] == 0
    [patient] = client.get("/Patient", params={
        "identifier": f"{INS_TEST}|1234567890123"}).json()["entry"]
    subject = f"Patient/{patient['resource']['id']}"
    assert total(client, "/Observation", subject=subject, code=f"{LOINC}|2345-7") == 1
    hba1c = client.get("/Observation", params={"subject": subject, "code": f"{LOINC}|4548-4"})
    [entry] = hba1c.json()["entry"]
    assert entry["resource"]["valueQuantity"]["value"] == 7.8
    before = {t: total(client, f"/{t}") for t in ("Patient", "Observation", "DiagnosticReport",
                                                 "Encounter")}

    code, output = run_import(server, capsys, str(DATA / "hl7v2"))
    assert code == 0, output
    # Replaying ADT A01 then A08 updates the patient again, but nothing is created.
    assert totals_line(output)[3] == 0
    assert {t: total(client, f"/{t}") for t in before} == before


def test_rejected_rows_and_failed_messages_are_reported(
    server: RunningServer, client: httpx.Client, capsys: pytest.CaptureFixture,
    tmp_path: Path,
) -> None:
    export = tmp_path / "libre.csv"
    export.write_bytes(libre_export())
    batch = tmp_path / "batch.hl7"
    unsupported = GLUCOSE_ORU.replace(b"ORU^R01^ORU_R01", b"MFN^M02").replace(
        b"MSG-GLU-0001", b"MSG-MFN")
    batch.write_bytes(GLUCOSE_ORU.strip() + b"\r" + unsupported.strip() + b"\r")
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("when,what\n2024-01-01,5\n")
    code, output = run_import(server, capsys, str(export), str(batch), str(unknown),
                              "--patient", "Patient/rejects", "--timezone", "Europe/Paris")
    assert code == 1  # a message and a file could not be stored
    assert re.search(r"libre\.csv: 1 rejected\n  row 5: ", output), output
    assert "message 2 (MSG-MFN): MSH-9: unsupported message type MFN" in output
    assert "unrecognised CSV export" in output
    assert total(client, "/Observation", subject="Patient/rejects") == 3


def test_dicom_folder_import(
    server: RunningServer, client: httpx.Client, capsys: pytest.CaptureFixture,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "screening"
    folder.mkdir()
    series = generate_uid()
    for number in (1, 2):
        fundus(folder / f"img{number}", series_uid=series, series_number=1,
               instance=number, side="R", anatomic=True)
    code, output = run_import(server, capsys, str(folder), "--timezone", "Europe/Paris")
    assert code == 0, output
    # one study; its Patient and ImagingStudy written (the Patient may exist: same INS as
    # the HL7 v2 sample's)
    assert totals_line(output)[0] == 1 and sum(totals_line(output)[3:5]) == 2
    [study] = client.get("/ImagingStudy").json()["entry"]
    assert study["resource"]["numberOfInstances"] == 2
    # More files of the same study later: the study is updated, not duplicated.
    shutil.copy(folder / "img1", tmp_path / "img1")
    fundus(folder / "img3", series_uid=series, series_number=1, instance=3, side="R",
           anatomic=True)
    code, output = run_import(server, capsys, str(folder))
    assert totals_line(output)[3:5] == [0, 1]
    [study] = client.get("/ImagingStudy").json()["entry"]
    assert study["resource"]["numberOfInstances"] == 3


def test_missing_file_and_missing_patient(
    server: RunningServer, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    with pytest.raises(SystemExit, match="no such file"):
        main(["import", str(tmp_path / "nope.csv"), "--db", server.app.state.settings.db_url])
    export = tmp_path / "libre.csv"
    export.write_bytes(libre_export())
    code, output = run_import(server, capsys, str(export))
    assert code == 1
    assert "give the patient" in output
