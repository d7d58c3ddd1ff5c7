"""DICOM to Bundle, on retinal fundus photographs generated here with pydicom and on one of
pydicom's own test files."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mappers.dicom import DicomMappingError, to_bundle

OP_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.5.1"  # Ophthalmic Photography 8 Bit Image
PIXEL_MARKER = bytes([0xAB, 0xCD]) * 32  # 8x8 RGB would be 192 bytes; 64 is enough here
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"


def fundus(path: Path, *, series_uid: str, series_number: int, instance: int, side: str,
           anatomic: bool) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = OP_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = OP_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "OP"
    ds.PatientName = "Dupont^Marie^Claire"
    ds.PatientID = "1234567890123"
    ds.IssuerOfPatientID = "1.2.250.1.213.1.4.10"
    ds.PatientBirthDate = "19640620"
    ds.PatientSex = "F"
    ds.StudyDate = "20240502"
    ds.StudyTime = "101500"
    ds.SeriesDate = "20240502"
    ds.SeriesTime = "102000.123"
    ds.TimezoneOffsetFromUTC = "+0200"
    ds.StudyDescription = "Diabetic retinopathy screening"
    ds.AccessionNumber = "ACC-42"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance
    ds.ImageLaterality = side
    if anatomic:
        region = Dataset()
        region.CodeValue = "81745001"
        region.CodingSchemeDesignator = "SCT"
        region.CodeMeaning = "Eye"
        ds.AnatomicRegionSequence = Sequence([region])
    else:
        ds.BodyPartExamined = "EYE"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 8, 8, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = PIXEL_MARKER
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def screening(tmp_path: Path) -> Path:
    """Two series (right eye, left eye) of two photographs each, and a stray text file."""
    folder = tmp_path / "screening"
    (folder / "OD").mkdir(parents=True)
    (folder / "OS").mkdir()
    right, left = "1.2.826.0.1.3680043.8.498.2", "1.2.826.0.1.3680043.8.498.3"
    for number in (1, 2):
        fundus(folder / "OD" / f"img{number}.dcm", series_uid=right, series_number=1,
               instance=number, side="R", anatomic=True)
        fundus(folder / "OS" / f"img{number}.dcm", series_uid=left, series_number=2,
               instance=number, side="L", anatomic=False)
    (folder / "README.txt").write_text("not DICOM")
    return folder


def resources(bundle: dict, resource_type: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"]
            if e["resource"]["resourceType"] == resource_type]


def test_folder_to_imaging_study_with_series_and_instances(screening: Path) -> None:
    bundle = to_bundle([screening])
    assert bundle["type"] == "transaction"
    (study,) = resources(bundle, "ImagingStudy")
    assert study["numberOfSeries"] == 2 and study["numberOfInstances"] == 4
    assert study["identifier"][0] == {"use": "official", "system": "urn:dicom:uid",
                                      "value": "urn:oid:" + STUDY_UID}
    assert study["modality"] == [{"system": "http://dicom.nema.org/resources/ontology/DCM",
                                  "code": "OP"}]
    assert study["started"] == "2024-05-02T10:15:00+02:00"
    assert study["description"] == "Diabetic retinopathy screening"
    right, left = study["series"]
    assert (right["number"], left["number"]) == (1, 2)
    assert right["uid"] == "1.2.826.0.1.3680043.8.498.2"
    assert right["numberOfInstances"] == 2 and len(right["instance"]) == 2
    assert [i["number"] for i in right["instance"]] == [1, 2]
    assert right["instance"][0]["sopClass"]["code"] == "urn:oid:" + OP_IMAGE_STORAGE
    assert right["bodySite"] == {"system": "http://snomed.info/sct", "code": "81745001",
                                 "display": "Eye"}
    assert left["bodySite"]["code"] == "81745001"  # from BodyPartExamined EYE
    assert right["laterality"]["code"] == "24028007" and left["laterality"]["code"] == "7771000"
    assert right["started"] == "2024-05-02T10:20:00+02:00"
    study_entry = next(e for e in bundle["entry"]
                       if e["resource"]["resourceType"] == "ImagingStudy")
    assert study_entry["request"] == {
        "method": "PUT",
        "url": "ImagingStudy?identifier=urn:dicom:uid|urn:oid:" + STUDY_UID,
    }


def test_patient_from_the_patient_module(screening: Path) -> None:
    bundle = to_bundle([screening / "OD" / "img1.dcm"])
    (patient,) = resources(bundle, "Patient")
    assert patient["identifier"] == [{
        "system": "urn:oid:1.2.250.1.213.1.4.10", "value": "1234567890123",
        "assigner": {"display": "1.2.250.1.213.1.4.10"},
    }]
    assert patient["name"][0]["family"] == "Dupont"
    assert patient["name"][0]["given"] == ["Marie", "Claire"]
    assert patient["birthDate"] == "1964-06-20"
    assert patient["gender"] == "female"
    entry = bundle["entry"][0]
    assert entry["request"] == {
        "method": "PUT",
        "url": "Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|1234567890123",
    }
    (study,) = resources(bundle, "ImagingStudy")
    assert study["subject"]["reference"] == entry["fullUrl"]


def test_pixel_data_never_reaches_the_bundle(screening: Path) -> None:
    text = json.dumps(to_bundle([screening]))
    assert "PixelData" not in text and "7FE00010" not in text.upper()
    assert PIXEL_MARKER.hex() not in text
    assert base64.b64encode(PIXEL_MARKER).decode()[:16] not in text
    assert len(text) < 6000


def test_pixel_data_is_not_even_read(tmp_path: Path) -> None:
    """A file cut in the middle of its pixel data still maps: the mapper stops before it."""
    path = fundus(tmp_path / "cut.dcm", series_uid=generate_uid(), series_number=1,
                  instance=1, side="L", anatomic=True)
    data = path.read_bytes()
    path.write_bytes(data[: data.rindex(PIXEL_MARKER) + 10])
    (study,) = resources(to_bundle([path]), "ImagingStudy")
    assert study["numberOfInstances"] == 1


def test_bytes_input_same_file_twice_and_reimport(screening: Path) -> None:
    one = screening / "OS" / "img2.dcm"
    from_bytes = to_bundle(one.read_bytes())
    (study,) = resources(from_bytes, "ImagingStudy")
    assert study["numberOfInstances"] == 1
    twice = to_bundle([one, one])
    assert resources(twice, "ImagingStudy")[0]["numberOfInstances"] == 1
    urls = [e["request"]["url"] for e in to_bundle([screening])["entry"]]
    assert urls == [e["request"]["url"] for e in to_bundle([screening])["entry"]]


def test_pydicom_test_file_without_issuer() -> None:
    path = get_testdata_file("CT_small.dcm")
    bundle = to_bundle([path])
    (patient,) = resources(bundle, "Patient")
    assert patient["identifier"][0] == {
        "system": "https://diatabase.org/fhir/sid/dicom-patient-id", "value": "1CT1"}
    assert patient["name"][0]["family"] == "CompressedSamples"
    (study,) = resources(bundle, "ImagingStudy")
    assert study["modality"][0]["code"] == "CT"
    assert study["series"][0]["instance"][0]["sopClass"]["code"] == (
        "urn:oid:1.2.840.10008.5.1.4.1.1.2")


def test_date_only_without_zone_and_with_timezone_option(tmp_path: Path) -> None:
    path = fundus(tmp_path / "a.dcm", series_uid=generate_uid(), series_number=1, instance=1,
                  side="R", anatomic=False)
    from pydicom import dcmread

    ds = dcmread(path)
    del ds.TimezoneOffsetFromUTC
    ds.save_as(path)
    assert resources(to_bundle([path]), "ImagingStudy")[0]["started"] == "2024-05-02"
    zoned = resources(to_bundle([path], timezone="Europe/Paris"), "ImagingStudy")[0]
    assert zoned["started"] == "2024-05-02T10:15:00+02:00"


def test_errors(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DicomMappingError, match="not a readable DICOM"):
        to_bundle([tmp_path / "notes.txt"])
    with pytest.raises(DicomMappingError, match="no DICOM image instance"):
        to_bundle([tmp_path])
    with pytest.raises(DicomMappingError, match="no such file"):
        to_bundle([tmp_path / "missing.dcm"])
    with pytest.raises(DicomMappingError):
        to_bundle(b"DICM but not really")


_CT_HEADER = Path(get_testdata_file("CT_small.dcm")).read_bytes()
_CT_HEADER = _CT_HEADER[: _CT_HEADER.find(b"\xe0\x7f\x10\x00") + 16]


@settings(max_examples=150, deadline=None)
@given(
    flips=st.lists(st.tuples(st.integers(132, len(_CT_HEADER) - 1), st.integers(0, 255)),
                   min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.integers(0, len(_CT_HEADER))),
)
def test_damaged_files_give_a_bundle_or_a_clean_error(flips, cut) -> None:
    data = bytearray(_CT_HEADER)
    for position, value in flips:
        data[position] = value
    if cut is not None:
        data = data[:cut]
    try:
        bundle = to_bundle(bytes(data))
    except DicomMappingError:
        return
    json.dumps(bundle)  # serialisable: no raw pydicom objects left in it
    assert resources(bundle, "ImagingStudy")
