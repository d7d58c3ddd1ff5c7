"""Fuzzing `to_bundle`: any input gives a result or a CsvMappingError, never another error."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mappers.device_csv import CsvMappingError, CsvMappingResult, to_bundle

HEADERS = [
    "Device,Serial Number,Device Timestamp,Record Type,Historic Glucose mg/dL,"
    "Scan Glucose mg/dL,Notes,Strip Glucose mg/dL,Ketone mmol/L",
    "Meter Timestamp;Record Type;Historic Glucose(mmol/L);Scan Glucose(mmol/L)",
    "Index\tTimestamp (YYYY-MM-DDThh:mm:ss)\tEvent Type\tEvent Subtype\tPatient Info\t"
    "Device Info\tSource Device ID\tGlucose Value (mg/dL)\tTransmitter ID",
    "effective,code,code_system,value,unit,patient_identifier",
    "Time (UTC),Time (Local),Glucose Reading (mg/dL),Type of Reading",
]
CELLS = st.one_of(
    st.sampled_from(["", "0", "1", "2", "3", "6", "EGV", "Low", "HI", "5,4", "7.1", "abc",
                     "2024-01-01T08:00:00", "13/01/2024 08:00", "01-13-2024 08:00 PM",
                     "31.02.2024", "99/99/99 99:99", "202401010800-0500", "\"", "\"a,b\""]),
    st.text(max_size=12),
)


def check(data, **options) -> None:
    try:
        result = to_bundle(data, patient="Patient/p1", **options)
    except CsvMappingError:
        return
    assert isinstance(result, CsvMappingResult)
    assert result.readings == sum(
        e["resource"]["resourceType"] == "Observation" for e in result.bundle["entry"]
    )
    assert result.readings + len(result.rejected) + len(result.skipped) >= 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_arbitrary_input(data) -> None:
    check(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=st.sampled_from(HEADERS),
    rows=st.lists(st.lists(CELLS, max_size=10), max_size=8),
    separator=st.sampled_from([",", ";", "\t"]),
    timezone=st.sampled_from([None, "UTC", "Europe/Paris", "+05:30", "-14:00"]),
    encoding=st.sampled_from(["utf-8", "utf-16", "latin-1"]),
)
def test_known_header_with_random_rows(header, rows, separator, timezone, encoding) -> None:
    text = "\n".join([header] + [separator.join(cells) for cells in rows])
    try:
        data = text.encode(encoding)
    except UnicodeEncodeError:
        data = text.encode("utf-8")
    check(data, timezone=timezone)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["columns", "constants", "patterns", "header",
                                        "value_type", "decimal_separator", "dayfirst",
                                        "out_of_range", "device", "optional", "delimiter"]),
                       st.one_of(st.none(), st.text(max_size=5), st.integers(),
                                 st.dictionaries(st.text(max_size=8), st.text(max_size=8)),
                                 st.lists(st.text(max_size=5), max_size=3)),
                       max_size=6))
def test_arbitrary_mapping_documents(mapping) -> None:
    check("a,b,c\n2024-01-01,1,x\n", mapping=mapping)
