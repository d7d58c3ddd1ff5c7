"""Every CSV sample of tests/data/csv maps with the right reading count and exact values."""

from __future__ import annotations

from pathlib import Path

import pytest

from mappers.device_csv import CsvMappingError, detect_format, to_bundle

DATA = Path(__file__).parent / "data" / "csv"
PATIENT = "Patient/p1"


def read(name: str) -> bytes:
    return (DATA / name).read_bytes()


def observations(result) -> list[dict]:
    """The readings (not the logged events, which follow them)."""
    return [
        e["resource"] for e in result.bundle["entry"]
        if e["resource"]["resourceType"] == "Observation"
        and e["resource"]["identifier"][0]["system"].endswith("/device-reading")
    ]


def of_type(result, resource_type: str) -> list[dict]:
    return [
        e["resource"] for e in result.bundle["entry"]
        if e["resource"]["resourceType"] == resource_type
    ]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("dexcom-clarity/dexcom_clarity_g6_cgmquantify.csv", "dexcom-clarity"),
        ("freestyle-libre/libre_reader_cgmanalysis_raw.csv", "freestyle-libre"),
        ("freestyle-libre/librelink_mgdl_glucose_data_preamble.csv", "freestyle-libre"),
        ("freestyle-libre/librelink_mmol_no_preamble.csv", "freestyle-libre"),
        ("other-cgm/levels_export.csv", "levels"),
        ("lab-csv/reportstream_simplereport.csv", "simplereport"),
    ],
)
def test_format_is_detected_from_the_header(name: str, expected: str) -> None:
    assert detect_format(read(name)) == expected


def test_unknown_header_is_a_whole_file_error() -> None:
    with pytest.raises(CsvMappingError, match="unrecognised"):
        detect_format(read("lab-csv/reportstream_happy_path.csv"))


def test_dexcom_clarity_g6() -> None:
    result = to_bundle(
        read("dexcom-clarity/dexcom_clarity_g6_cgmquantify.csv"),
        patient=PATIENT, timezone="America/New_York",
    )
    assert (result.format, result.rows_read, result.readings) == ("dexcom-clarity", 2159, 2148)
    assert result.rejected == []
    # The 11 rows before the readings are metadata and alert settings.
    assert [s.row for s in result.skipped] == list(range(2, 13))
    obs = observations(result)
    first, last = obs[0], obs[-1]
    assert first["effectiveDateTime"] == "2016-10-24T11:24:17-04:00"
    assert first["valueQuantity"] == {
        "value": 103, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"
    }
    assert first["code"]["coding"][0]["code"] == "99504-3"
    assert first["meta"]["profile"] == [
        "https://diatabase.org/fhir/StructureDefinition/CGMSensorReading"
    ]
    assert last["effectiveDateTime"] == "2016-11-01T09:19:02-04:00"
    assert last["valueQuantity"]["value"] == 108
    (device,) = of_type(result, "Device")
    assert device["deviceName"][0]["name"] == "Dexcom G6 Mobile App"
    assert first["device"]["reference"] == result.bundle["entry"][0]["fullUrl"]
    # Names from the metadata rows never reach the Bundle.
    assert "Schmoe" not in repr(result.bundle)


def test_libre_reader_two_line_preamble_month_first() -> None:
    result = to_bundle(read("freestyle-libre/libre_reader_cgmanalysis_raw.csv"),
                       patient=PATIENT, timezone="UTC")
    assert (result.format, result.rows_read, result.readings) == ("freestyle-libre", 1337, 1337)
    assert result.rejected == [] and result.warnings == []
    obs = observations(result)
    assert obs[0]["effectiveDateTime"] == "2018-08-01T12:00:00+00:00"
    assert obs[0]["valueQuantity"]["value"] == 117
    assert obs[-1]["effectiveDateTime"] == "2018-08-15T09:59:00+00:00"
    assert obs[-1]["valueQuantity"]["value"] == 99
    # The reader software exports no serial: one Device keyed on format and patient.
    (device,) = of_type(result, "Device")
    assert device["identifier"][0]["system"] == "https://diatabase.org/fhir/sid/device-key"
    assert "serialNumber" not in device
    assert "Testerson" not in repr(result.bundle)


def test_libre_reader_matches_the_cgmanalysis_cleaned_series() -> None:
    """cgmanalysis' cleaned file is the same series; every cleaned point is in our bundle."""
    raw = to_bundle(read("freestyle-libre/libre_reader_cgmanalysis_raw.csv"),
                    patient=PATIENT, timezone="UTC")
    cleaned = to_bundle(
        read("freestyle-libre/libre_reader_cgmanalysis_cleaned.csv"),
        patient=PATIENT, timezone="UTC",
        mapping={"name": "cgmanalysis-cleaned",
                 "columns": {"date": "timestamp", "value": "sensorglucose"},
                 "constants": {"code": "99504-3", "system": "http://loinc.org", "unit": "mg/dL"}},
    )
    assert cleaned.readings == 1248 and cleaned.rejected == []
    ours = {(o["effectiveDateTime"], o["valueQuantity"]["value"]) for o in observations(raw)}
    theirs = [(o["effectiveDateTime"], o["valueQuantity"]["value"]) for o in observations(cleaned)]
    assert theirs[0] == ("2018-08-01T16:15:00+00:00", 92)
    assert theirs[-1] == ("2018-08-14T15:59:00+00:00", 126)
    assert set(theirs) <= ours


def test_librelink_mgdl_one_line_preamble_ampm() -> None:
    result = to_bundle(read("freestyle-libre/librelink_mgdl_glucose_data_preamble.csv"),
                       patient=PATIENT, timezone="America/Los_Angeles")
    assert result.rows_read == 3984
    assert result.readings == 3562 + 317  # historic + scan
    assert result.rejected == []
    # 3 meals logged without an amount and 3 notes are events; 99 time changes are skipped
    assert result.events == 6
    reasons = [s.reason for s in result.skipped]
    assert reasons == ["record type 6: time change or empty note"] * 99
    obs = observations(result)
    assert obs[0]["effectiveDateTime"] == "2021-05-30T16:59:00-07:00"
    assert obs[0]["valueQuantity"]["value"] == 69
    assert obs[0]["identifier"][0]["value"].endswith("/99504-3/historic")
    scans = [o for o in obs if o["identifier"][0]["value"].endswith("/scan")]
    assert len(scans) == 317
    assert scans[0]["effectiveDateTime"] == "2021-05-30T16:58:00-07:00"
    assert scans[0]["valueQuantity"]["value"] == 50
    assert obs[-1]["effectiveDateTime"] == "2021-07-20T07:59:00-07:00"
    assert obs[-1]["valueQuantity"]["value"] == 88
    (device,) = of_type(result, "Device")
    assert device["serialNumber"] == "F91A8D8B-15FF-4028-A066-F97CD2ED2660"
    assert device["identifier"] == [{
        "system": "https://diatabase.org/fhir/sid/device-serial/abbott",
        "value": "F91A8D8B-15FF-4028-A066-F97CD2ED2660",
    }]


def test_librelink_mmol_day_first_keeps_decimals() -> None:
    result = to_bundle(read("freestyle-libre/librelink_mmol_no_preamble.csv"),
                       patient=PATIENT, timezone="Europe/Paris")
    assert (result.rows_read, result.readings) == (6, 6)
    obs = observations(result)
    assert [o["valueQuantity"]["value"] for o in obs] == [6.3, 6.4, 6.5, 6.7, 6.9, 7.1]
    assert all(o["code"]["coding"][0]["code"] == "105272-9" for o in obs)
    assert all(o["valueQuantity"]["code"] == "mmol/L" for o in obs)
    # Every date reads 05-12-2019: only the 24-hour clock hints at Europe (day first).
    assert obs[0]["effectiveDateTime"] == "2019-12-05T16:25:00+01:00"
    assert any("day-first" in w for w in result.warnings)
    assert to_bundle(read("freestyle-libre/librelink_mmol_no_preamble.csv"), patient=PATIENT,
                     timezone="Europe/Paris", dayfirst=False).bundle["entry"][1]["resource"][
        "effectiveDateTime"] == "2019-05-12T16:25:00+02:00"


def test_levels_export_through_its_shipped_mapping() -> None:
    result = to_bundle(read("other-cgm/levels_export.csv"), patient=PATIENT)
    assert (result.format, result.rows_read, result.readings) == ("levels", 1456, 1456)
    assert result.warnings == []  # the UTC column carries its zone
    obs = observations(result)
    assert obs[0]["effectiveDateTime"] == "2021-06-20T19:09:59+00:00"
    assert obs[0]["valueQuantity"]["value"] == 106
    assert obs[-1]["effectiveDateTime"] == "2021-07-04T16:45:06+00:00"
    assert obs[-1]["valueQuantity"]["value"] == 108
    assert obs[0]["meta"]["profile"][0].endswith("/CGMSensorReading")
    assert of_type(result, "Device")[0]["manufacturer"] == "Levels Health"


def test_simplereport_patients_from_rows_and_coded_results() -> None:
    result = to_bundle(read("lab-csv/reportstream_simplereport.csv"))
    assert (result.format, result.rows_read, result.readings) == ("simplereport", 50, 50)
    assert result.rejected == []
    patients = of_type(result, "Patient")
    assert len(patients) == 50
    assert patients[0]["identifier"][0]["value"] == "1"
    obs = observations(result)
    assert obs[0]["code"]["coding"][0] == {"system": "http://loinc.org", "code": "94558-4"}
    assert obs[0]["valueCodeableConcept"]["coding"][0] == {
        "system": "http://snomed.info/sct", "code": "260415000"
    }
    assert obs[0]["effectiveDateTime"] == "2020-12-08"  # a bare date stays a date
    assert obs[-1]["effectiveDateTime"] == "2020-12-06T15:43:00-05:00"
    assert obs[0]["subject"]["reference"] == result.bundle["entry"][0]["fullUrl"]
    assert "Grimes" not in repr(result.bundle)


def test_reportstream_happy_path_with_a_pattern_mapping() -> None:
    """The file names no patient identifier: the test maps all rows to the given patient
    and cuts `covid-19:neg` into a code and a value with patterns."""
    mapping = {
        "name": "reportstream-happy-path",
        "columns": {"date": "test_time", "code": "observation", "value": "observation",
                    "row_key": "specimen_id"},
        "patterns": {"code": "^([^:]+):", "value": ":(.+)$"},
        "constants": {"system": "https://diatabase.org/fhir/sid/example-local-test"},
        "value_type": "string",
    }
    result = to_bundle(read("lab-csv/reportstream_happy_path.csv"), patient=PATIENT,
                       mapping=mapping)
    assert (result.format, result.readings) == ("reportstream-happy-path", 7)
    obs = observations(result)
    assert [o["valueString"] for o in obs] == ["neg", "neg", "neg", "pos", "neg", "neg", "pos"]
    assert obs[0]["code"]["coding"][0]["code"] == "covid-19"
    assert obs[0]["effectiveDateTime"] == "2020-10-10T17:42:31+00:00"
    # Same instant, code and patient on every row: only the specimen id (row_key) tells the
    # results apart in their identifiers.
    assert obs[0]["identifier"][0]["value"].endswith("/covid-19/csv-28504428")
