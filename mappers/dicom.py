"""DICOM files (e.g. retinal fundus photographs of diabetic retinopathy screening) to a FHIR
R4 transaction Bundle: the Patient (from the DICOM patient module) and one ImagingStudy per
study, with its series and instances.

Pixel data is never read: files are opened with `stop_before_pixels=True`, so neither the
image nor anything after it reaches the Bundle.

Conditional entries, so that importing the same files again creates nothing new:
- Patient: `PUT Patient?identifier=...` on PatientID qualified by its issuer. The issuer
  (IssuerOfPatientID, or the Universal Entity ID of its qualifiers) becomes the identifier
  system: an OID gives `urn:oid:<oid>` (the INS OIDs included), a URI stays as it is, and
  any other issuer name gives `https://diatabase.org/fhir/sid/dicom-issuer/<name>`. Without
  an issuer the system is `https://diatabase.org/fhir/sid/dicom-patient-id` (an unqualified
  PatientID is only unique within the sending site). Without a PatientID the Patient is
  created unconditionally.
- ImagingStudy: `PUT ImagingStudy?identifier=urn:dicom:uid|urn:oid:<StudyInstanceUID>`: the
  last import describes the study (import all of a study's files together).
`started` carries the time with the DICOM TimezoneOffsetFromUTC, else with the `timezone`
option; without either, only the date is given (a FHIR dateTime with a time needs a zone).
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.valuerep import PersonName

from mappers.bundle import TransactionBuilder, identifier_query

DICOM_UID_SYSTEM = "urn:dicom:uid"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED = "http://snomed.info/sct"
SID = "https://diatabase.org/fhir/sid/"
ISSUER_SYSTEM = SID + "dicom-issuer/"
UNQUALIFIED_PATIENT_ID_SYSTEM = SID + "dicom-patient-id"

_CODING_SCHEMES = {
    "SCT": SNOMED,
    "SRT": "http://snomed.info/srt",
    "DCM": DCM,
    "LN": "http://loinc.org",
    "UCUM": "http://unitsofmeasure.org",
}
# BodyPartExamined (DICOM PS3.16 Annex L) to SNOMED CT, for the sites diabetes care images.
_BODY_PARTS = {
    "EYE": ("81745001", "Eye"),
    "RETINA": ("5665001", "Retina"),
    "FOOT": ("56459004", "Foot"),
    "HEAD": ("69536005", "Head"),
    "CHEST": ("51185008", "Thorax"),
    "ABDOMEN": ("113345001", "Abdomen"),
    "KIDNEY": ("64033007", "Kidney"),
}
_LATERALITY = {
    "R": ("24028007", "Right"),
    "L": ("7771000", "Left"),
    "B": ("51440002", "Right and left"),
}
_SEX = {"M": "male", "F": "female", "O": "other"}


class DicomMappingError(ValueError):
    """No DICOM data could be read from the input, or a named file is not DICOM."""


@dataclass
class _Series:
    uid: str
    first: Dataset
    instances: dict[str, Dataset] = field(default_factory=dict)


@dataclass
class _Study:
    uid: str
    first: Dataset
    series: dict[str, _Series] = field(default_factory=dict)


def _first(ds: Dataset, keyword: str) -> Any:
    """The value of an element, or its first value when a file repeats a single value."""
    value = ds.get(keyword)
    if isinstance(value, MultiValue | list):
        return value[0] if value else None
    return value


def _text(ds: Dataset, keyword: str) -> str:
    value = _first(ds, keyword)
    if value is None or isinstance(value, Dataset | Sequence):
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1", errors="replace").strip("\x00 ")
    return str(value).strip()


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        return int(_text(ds, keyword))
    except ValueError:
        return None


def _read(source: Path | bytes, name: str) -> Dataset:
    """Read a file's header (never its pixel data) and decode every element now.

    pydicom decodes element values lazily, so a corrupt value would otherwise raise later,
    anywhere; decoding them all here turns any damage into one DicomMappingError. The
    parser sees untrusted bytes and can raise many exception types, hence the broad catch.
    """
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on every non-conformant value
            ds = pydicom.dcmread(stream, stop_before_pixels=True)
            ds.walk(lambda dataset, element: None)
        return ds
    except InvalidDicomError as exc:
        raise DicomMappingError(f"{name}: not a readable DICOM file ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - see the docstring
        raise DicomMappingError(f"{name}: damaged DICOM file ({type(exc).__name__})") from None


def _datasets(paths: Iterable[str | Path]) -> Iterable[Dataset]:
    for given in paths:
        path = Path(given)
        if path.is_dir():
            # Folders (a DICOMDIR export, a PACS dump) hold other files too: skip them.
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                if child.name.upper() == "DICOMDIR":
                    continue
                try:
                    yield _read(child, str(child))
                except DicomMappingError:
                    continue
        elif path.is_file():
            yield _read(path, str(path))
        else:
            raise DicomMappingError(f"{path}: no such file or folder")


def _timezone(value: str | None) -> tzinfo | None:
    if not value:
        return None
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise DicomMappingError(f"unknown time zone {value!r}") from None


def _date(text: str) -> str | None:
    match = re.fullmatch(r"(\d{4})(\d{2})?(\d{2})?", text.strip())
    if not match:
        return None
    return "-".join(part for part in match.groups() if part)


def _datetime(ds: Dataset, date_kw: str, time_kw: str, zone: tzinfo | None) -> str | None:
    day = _date(_text(ds, date_kw))
    if day is None:
        return None
    time = re.match(r"(\d{2})(\d{2})?(\d{2})?", _text(ds, time_kw))
    offset = re.fullmatch(r"([+-])(\d{2})(\d{2})", _text(ds, "TimezoneOffsetFromUTC"))
    if time is None or len(day) != 10 or (offset is None and zone is None):
        return day
    hour, minute, second = (int(part or 0) for part in time.groups())
    try:
        if offset is not None:
            sign, hh, mm = offset.groups()
            return f"{day}T{hour:02d}:{minute:02d}:{second:02d}{sign}{hh}:{mm}"
        moment = datetime.fromisoformat(day).replace(
            hour=hour, minute=minute, second=second, tzinfo=zone
        )
    except ValueError:
        return day
    return moment.isoformat(timespec="seconds")


def _issuer(ds: Dataset) -> str | None:
    qualifiers = ds.get("IssuerOfPatientIDQualifiersSequence")
    if qualifiers:
        universal = _text(qualifiers[0], "UniversalEntityID")
        if universal:
            return universal
    return _text(ds, "IssuerOfPatientID") or None


def _identifier_system(issuer: str | None) -> str:
    if issuer is None:
        return UNQUALIFIED_PATIENT_ID_SYSTEM
    if re.fullmatch(r"[0-2](\.(0|[1-9]\d*))+", issuer):
        return "urn:oid:" + issuer
    if re.match(r"^(urn:|https?://)", issuer):
        return issuer
    return ISSUER_SYSTEM + quote(issuer, safe="")


def _human_name(ds: Dataset) -> dict[str, Any] | None:
    name = _first(ds, "PatientName")
    if not name or not str(name).strip():
        return None
    if not isinstance(name, PersonName):  # a damaged file may give the name another VR
        return {"text": _text(ds, "PatientName")}
    result: dict[str, Any] = {"text": str(name).replace("^", " ").strip()}
    if name.family_name:
        result["family"] = name.family_name
    given = [part for part in (name.given_name, name.middle_name) if part]
    if given:
        result["given"] = given
    if name.name_prefix:
        result["prefix"] = [name.name_prefix]
    if name.name_suffix:
        result["suffix"] = [name.name_suffix]
    return result


def _patient(ds: Dataset) -> tuple[dict[str, Any], str | None]:
    """The Patient resource and its conditional search (None: no PatientID to match on)."""
    patient: dict[str, Any] = {"resourceType": "Patient"}
    patient_id = _text(ds, "PatientID")
    search = None
    if patient_id:
        issuer = _issuer(ds)
        system = _identifier_system(issuer)
        identifier: dict[str, Any] = {"system": system, "value": patient_id}
        if issuer:
            identifier["assigner"] = {"display": issuer}
        patient["identifier"] = [identifier]
        search = identifier_query(system, patient_id)
    name = _human_name(ds)
    if name:
        patient["name"] = [name]
    sex = _text(ds, "PatientSex").upper()
    patient["gender"] = _SEX.get(sex, "unknown") if sex else "unknown"
    birth = _date(_text(ds, "PatientBirthDate"))
    if birth:
        patient["birthDate"] = birth
    return patient, search


def _body_site(ds: Dataset) -> dict[str, Any] | None:
    regions = ds.get("AnatomicRegionSequence")
    if regions:
        item = regions[0]
        code = _text(item, "CodeValue")
        scheme = _text(item, "CodingSchemeDesignator")
        if code:
            coding = {"system": _CODING_SCHEMES.get(scheme, f"urn:dicom:scheme:{scheme}"),
                      "code": code}
            if _text(item, "CodeMeaning"):
                coding["display"] = _text(item, "CodeMeaning")
            return coding
    part = _text(ds, "BodyPartExamined").upper()
    if not part:
        return None
    if part in _BODY_PARTS:
        code, display = _BODY_PARTS[part]
        return {"system": SNOMED, "code": code, "display": display}
    return {"display": part}


def _laterality(ds: Dataset) -> dict[str, Any] | None:
    side = (_text(ds, "ImageLaterality") or _text(ds, "Laterality")).upper()
    if side in _LATERALITY:
        code, display = _LATERALITY[side]
        return {"system": SNOMED, "code": code, "display": display}
    return None


def _modality(code: str) -> dict[str, Any]:
    return {"system": DCM, "code": code}


def _instance(ds: Dataset) -> dict[str, Any]:
    instance: dict[str, Any] = {
        "uid": _text(ds, "SOPInstanceUID"),
        "sopClass": {"system": "urn:ietf:rfc:3986", "code": "urn:oid:" + _text(ds, "SOPClassUID")},
    }
    number = _int(ds, "InstanceNumber")
    if number is not None and number >= 0:
        instance["number"] = number
    return instance


def _series(series: _Series, zone: tzinfo | None) -> dict[str, Any]:
    ds = series.first
    result: dict[str, Any] = {"uid": series.uid}
    number = _int(ds, "SeriesNumber")
    if number is not None and number >= 0:
        result["number"] = number
    result["modality"] = _modality(_text(ds, "Modality") or "OT")
    if _text(ds, "SeriesDescription"):
        result["description"] = _text(ds, "SeriesDescription")
    result["numberOfInstances"] = len(series.instances)
    site = _body_site(ds)
    if site:
        result["bodySite"] = site
    side = _laterality(ds)
    if side:
        result["laterality"] = side
    started = _datetime(ds, "SeriesDate", "SeriesTime", zone)
    if started:
        result["started"] = started
    result["instance"] = [
        _instance(instance)
        for instance in sorted(
            series.instances.values(), key=lambda d: (_int(d, "InstanceNumber") or 0)
        )
    ]
    return result


def _imaging_study(study: _Study, subject: str, zone: tzinfo | None) -> dict[str, Any]:
    ds = study.first
    series = sorted(study.series.values(), key=lambda s: (_int(s.first, "SeriesNumber") or 0))
    modalities = sorted({_text(s.first, "Modality") or "OT" for s in series})
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "identifier": [
            {"use": "official", "system": DICOM_UID_SYSTEM, "value": "urn:oid:" + study.uid}
        ],
        "status": "available",
        "modality": [_modality(code) for code in modalities],
        "subject": {"reference": subject},
    }
    started = _datetime(ds, "StudyDate", "StudyTime", zone)
    if started:
        resource["started"] = started
    if _text(ds, "AccessionNumber"):
        resource["identifier"].append(
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                  "code": "ACSN"}]},
             "value": _text(ds, "AccessionNumber")}
        )
    resource["numberOfSeries"] = len(series)
    resource["numberOfInstances"] = sum(len(s.instances) for s in series)
    if _text(ds, "StudyDescription"):
        resource["description"] = _text(ds, "StudyDescription")
    resource["series"] = [_series(s, zone) for s in series]
    return resource


def to_bundle(paths: list[str | Path] | bytes, *, timezone: str | None = None) -> dict[str, Any]:
    """Map DICOM files (paths to files or folders, or the bytes of one file) to a Bundle."""
    zone = _timezone(timezone)
    if isinstance(paths, bytes | bytearray):
        datasets: Iterable[Dataset] = [_read(bytes(paths), "the given bytes")]
    elif isinstance(paths, str | Path):
        datasets = _datasets([paths])
    else:
        datasets = _datasets(paths)

    studies: dict[str, _Study] = {}
    for ds in datasets:
        study_uid = _text(ds, "StudyInstanceUID")
        series_uid = _text(ds, "SeriesInstanceUID")
        instance_uid = _text(ds, "SOPInstanceUID")
        if not (study_uid and series_uid and instance_uid):
            continue  # not a composite image instance (e.g. a DICOMDIR or a raw dataset)
        study = studies.setdefault(study_uid, _Study(study_uid, ds))
        series = study.series.setdefault(series_uid, _Series(series_uid, ds))
        series.instances.setdefault(instance_uid, ds)
    if not studies:
        raise DicomMappingError("no DICOM image instance found")

    builder = TransactionBuilder()
    patients: dict[str, str] = {}
    for study in studies.values():
        patient, search = _patient(study.first)
        key = search or f"unmatched:{study.uid}"
        if key not in patients:
            patients[key] = (
                builder.upsert(patient, search) if search else builder.create(patient)
            )
        resource = _imaging_study(study, patients[key], zone)
        builder.upsert(resource, identifier_query(DICOM_UID_SYSTEM, "urn:oid:" + study.uid))
    return builder.bundle()
