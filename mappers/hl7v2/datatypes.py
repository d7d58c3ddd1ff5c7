"""HL7 v2 data types to FHIR data types (the IG's datatype maps, kept to what we use).

Each function takes a `Value` (one repetition) and returns a FHIR element or None when
the value carries nothing usable; none of them raises on odd content.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from urllib.parse import quote
from zoneinfo import ZoneInfo

from mappers.hl7v2.parser import Value

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
# The identifier types of HL7 table 0203 that senders use in CX-5.
V2_0203_CODES = frozenset({
    "AN", "BA", "BR", "BRN", "DL", "DN", "EI", "EN", "FILL", "JHN", "LN", "MA", "MB", "MC",
    "MCN", "MR", "NH", "NI", "NIIP", "NPI", "PEN", "PI", "PLAC", "PN", "PPN", "PRN", "PT",
    "RRI", "SB", "SN", "SR", "SS", "TAX", "U", "UPIN", "VN", "VS", "WC", "WCN", "XX",
})
INS_OID = "1.2.250.1.213.1.4.8"
INS_TEST_OID = "1.2.250.1.213.1.4.10"
INS_SYSTEM = f"urn:oid:{INS_OID}"
INS_TEST_SYSTEM = f"urn:oid:{INS_TEST_OID}"
# Namespaces French senders (IHE PAM FR) put in CX-4.1 for the INS.
_INS_NAMESPACES = {"ASIP-SANTE-INS-NIR": INS_SYSTEM, "ASIP-SANTE-INS-NIR-TEST": INS_TEST_SYSTEM}

# HL7 table 0396 (coding system names) to FHIR system URIs.
CODE_SYSTEMS = {
    "LN": LOINC,
    "LOINC": LOINC,
    "SCT": SNOMED,
    "SNM": SNOMED,
    "SNOMED": SNOMED,
    "SNOMEDCT": SNOMED,
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "ICD10": "http://hl7.org/fhir/sid/icd-10",
    "ICD-10": "http://hl7.org/fhir/sid/icd-10",
    "I10C": "http://hl7.org/fhir/sid/icd-10-cm",
    "I10CM": "http://hl7.org/fhir/sid/icd-10-cm",
    "ICD10CM": "http://hl7.org/fhir/sid/icd-10-cm",
    "CIM10": "https://smt.esante.gouv.fr/terminologie-cim-10/",
    "CIM-10": "https://smt.esante.gouv.fr/terminologie-cim-10/",
    "I9": "http://hl7.org/fhir/sid/icd-9-cm",
    "I9C": "http://hl7.org/fhir/sid/icd-9-cm",
    "I9CDX": "http://hl7.org/fhir/sid/icd-9-cm",
    "ATC": "http://www.whocc.no/atc",
    "WC": "http://www.whocc.no/atc",
    "UCUM": "http://unitsofmeasure.org",
    "RXNORM": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "RXN": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "NDC": "http://hl7.org/fhir/sid/ndc",
    "CVX": "http://hl7.org/fhir/sid/cvx",
    "CPT4": "http://www.ama-assn.org/go/cpt",
    "C4": "http://www.ama-assn.org/go/cpt",
    "CDCREC": "urn:oid:2.16.840.1.113883.6.238",
}

_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+\Z")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_DTM = re.compile(
    r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?\s*(?:([+-])(\d{2})(\d{2}))?\Z"
)


def code_system(name: str) -> str | None:
    """FHIR system URI for a v2 coding-system name (HL7nnnn tables, OIDs, known names)."""
    if not name:
        return None
    upper = name.upper()
    if upper in CODE_SYSTEMS:
        return CODE_SYSTEMS[upper]
    if upper.startswith("HL7") and upper[3:].isdigit():
        return f"http://terminology.hl7.org/CodeSystem/v2-{upper[3:].zfill(4)}"
    if _OID.match(name):
        return f"urn:oid:{name}"
    if name.startswith(("http://", "https://", "urn:")):
        return name
    return None  # local (L, 99zzz) or unknown: keep the code without a system


def hd_system(hd: Value) -> str | None:
    """An HD (namespace^universal id^type) as a URI: urn:oid, urn:uuid, the URI, urn:id."""
    namespace, universal, kind = hd.c(1), hd.c(2), hd.c(3).upper()
    if namespace.upper() in _INS_NAMESPACES:
        return _INS_NAMESPACES[namespace.upper()]
    if universal:
        if kind in ("ISO", "") and _OID.match(universal):
            return f"urn:oid:{universal}"
        if kind == "UUID" or _UUID.match(universal):
            return f"urn:uuid:{universal.lower()}"
        if kind == "URI" or universal.startswith(("http://", "https://", "urn:")):
            return universal
    if namespace:
        if _OID.match(namespace):
            return f"urn:oid:{namespace}"
        return "urn:id:" + quote(namespace, safe="")
    if universal:
        return "urn:id:" + quote(universal, safe="")
    return None


def coding(code: str, display: str, system_name: str) -> dict | None:
    if not code and not display:
        return None
    result: dict = {}
    system = code_system(system_name)
    if system:
        result["system"] = system
    if code:
        result["code"] = code
    if display:
        result["display"] = display
    return result if "code" in result else None


def codeable_concept(value: Value) -> dict | None:
    """CE / CWE / CNE: primary coding (1-3), alternate (4-6), original text (9)."""
    if not value:
        return None
    codings = []
    for first in (1, 4):
        item = coding(value.c(first), value.c(first + 1), value.c(first + 2))
        if item:
            codings.append(item)
    text = value.c(9) or (value.c(2) if not codings else "")
    if not codings and not text:
        text = value.c(5)
    result: dict = {}
    if codings:
        result["coding"] = codings
    if text:
        result["text"] = text
    return result or None


def loinc_code(concept: dict | None) -> str | None:
    for item in (concept or {}).get("coding", []):
        if item.get("system") == LOINC:
            return item.get("code")
    return None


def resolve_timezone(name: str | tzinfo | None) -> tzinfo:
    if name is None:
        return UTC
    if isinstance(name, tzinfo):
        return name
    if name.upper() in ("UTC", "Z"):
        return UTC
    return ZoneInfo(name)


def date_time(text: str, tz: tzinfo = UTC) -> str | None:
    """A DTM/TS as a FHIR dateTime, keeping its precision; None when not a real date.

    FHIR needs an offset once there is a time: a DTM without one is read in `tz` (the
    sender's zone, an option of the mapper). Hours-only or minutes-only times get zero
    seconds, because FHIR dateTime has no minute precision.
    """
    match = _DTM.match(text.strip()) if text else None
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    try:
        if year == "0000":
            return None
        if month is None:
            return year
        datetime(int(year), int(month), 1)
        if day is None:
            return f"{year}-{month}"
        datetime(int(year), int(month), int(day))
        if hour is None:
            return f"{year}-{month}-{day}"
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute or 0), int(second or 0)
        )
        if sign:
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            zone = timezone(offset if sign == "+" else -offset)
        else:
            zone = tz
        moment = moment.replace(tzinfo=zone)
        stamp = moment.isoformat()
    except (ValueError, OverflowError):
        return None
    if fraction:
        stamp = stamp[:19] + "." + fraction + stamp[19:]
    return stamp.replace("+00:00", "Z") if not sign else stamp


def date_only(text: str) -> str | None:
    """A DT/DTM cut to a FHIR date (birthDate and the like)."""
    stamp = date_time(text[:8]) if text else None
    return stamp


def identifier(value: Value, fallback_system: str | None = None) -> dict | None:
    """CX to Identifier: value (1), system from the assigning authority (4), type (5).

    INS is recognised from the OID (or the IHE PAM FR namespace) of the authority. Without
    an authority the identifier is local to the sender: `fallback_system` says whose.
    """
    ident = value.c(1)
    if not ident:
        return None
    authority = value.sub_value(4)
    system = hd_system(authority) if authority else None
    if system is None:
        facility = value.sub_value(6)  # CX-6 assigning facility
        system = hd_system(facility) if facility else None
    result: dict = {}
    type_code = value.c(5).upper()
    if type_code in V2_0203_CODES:
        result["type"] = {"coding": [{"system": V2_0203, "code": type_code}]}
    elif type_code:  # a local type (INS, ...): not a v2-0203 code, keep it as text
        result["type"] = {"text": type_code}
    system = system or fallback_system
    if system:
        result["system"] = system
    result["value"] = ident
    return result


def entity_identifier(value: Value, fallback_system: str | None = None) -> dict | None:
    """EI (entity id^namespace^universal id^type) to Identifier."""
    ident = value.c(1)
    if not ident:
        return None
    hd = Value("", value.delims)
    hd.components = value.components[1:4]
    system = hd_system(hd) or fallback_system
    return {"system": system, "value": ident} if system else {"value": ident}


_NAME_USE = {
    "L": "official",
    "D": "usual",
    "M": "maiden",
    "N": "nickname",
    "A": "usual",
    "S": "anonymous",
    "B": "old",
    "BAD": "old",
    "T": "temp",
}


def human_name(value: Value) -> dict | None:
    """XPN: family (1), given (2), middle names (3), suffix (4), prefix (5), use (7)."""
    family, given, middle = value.c(1), value.c(2), value.c(3)
    suffix, prefix = value.c(4), value.c(5)
    result: dict = {}
    use = _NAME_USE.get(value.c(7).upper())
    if use:
        result["use"] = use
    if family:
        result["family"] = family
    givens = [g for g in (given, *middle.split(" ")) if g] if middle else [g for g in [given] if g]
    if givens:
        result["given"] = givens
    if prefix:
        result["prefix"] = [prefix]
    if suffix:
        result["suffix"] = [suffix]
    return result if (family or givens) else None


_ADDRESS_USE = {"H": ("home", None), "B": ("work", None), "O": ("work", None),
                "C": ("temp", None), "M": (None, "postal"), "BA": ("old", None),
                "BDL": (None, "physical"), "L": ("home", None)}


def address(value: Value) -> dict | None:
    """XAD: street (1), other designation (2), city (3), state (4), zip (5), country (6)."""
    lines = [line for line in (value.c(1), value.c(2)) if line]
    result: dict = {}
    kind = value.c(7).upper()
    use, typ = _ADDRESS_USE.get(kind, (None, None))
    if use:
        result["use"] = use
    if typ:
        result["type"] = typ
    if lines:
        result["line"] = lines
    for index, key in ((3, "city"), (9, "district"), (4, "state"), (5, "postalCode"),
                       (6, "country")):
        text = value.c(index)
        if text:
            result[key] = text
    return result if (lines or "city" in result or "postalCode" in result) else None


_TELECOM_USE = {"PRN": "home", "ORN": "home", "VHN": "home", "WPN": "work", "EMR": None,
                "ASN": None, "NET": None, "BPN": None, "PRS": "mobile"}
_TELECOM_SYSTEM = {"PH": "phone", "FX": "fax", "CP": "phone", "BP": "pager", "INTERNET": "email",
                   "X.400": "email", "MD": "other", "TDD": "other", "TTY": "other", "SAT": "phone"}


def contact_point(value: Value) -> dict | None:
    """XTN: use (2), equipment (3), email (4), country/area/local/extension (5-8), text (1)."""
    equipment = value.c(3).upper()
    use_code = value.c(2).upper()
    email = value.c(4)
    system = _TELECOM_SYSTEM.get(equipment)
    if email or use_code == "NET":
        system = "email"
    if system == "email":
        number = email or value.c(1)
    else:
        number = value.c(12)
        if not number and value.c(7):
            parts = []
            if value.c(5):
                parts.append("+" + value.c(5).lstrip("+"))
            if value.c(6):
                parts.append(f"({value.c(6)})")
            parts.append(value.c(7))
            number = " ".join(parts)
            if value.c(8):
                number += f" x{value.c(8)}"
        number = number or value.c(1)
    if not number:
        return None
    result: dict = {"system": system or "phone", "value": number}
    use = "mobile" if equipment == "CP" else _TELECOM_USE.get(use_code)
    if use:
        result["use"] = use
    return result


def person_reference(value: Value) -> dict | None:
    """XCN as a logical Reference (identifier and display): we do not create Practitioners."""
    ident = value.c(1)
    name = " ".join(part for part in (value.c(6), value.c(3), value.c(4), value.c(2)) if part)
    if not ident and not name:
        return None
    result: dict = {}
    if ident:
        authority = value.sub_value(9)
        ident_obj: dict = {"value": ident}
        system = hd_system(authority) if authority else None
        if system:
            ident_obj["system"] = system
        result["identifier"] = ident_obj
    if name:
        result["display"] = name
    return result


def number(text: str) -> int | float | None:
    """A numeric string (decimal point or comma) to int/float; None when not a number."""
    text = text.strip().replace(",", ".")
    if not text:
        return None
    try:
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        result = float(text)
    except ValueError:
        return None
    if result != result or result in (float("inf"), float("-inf")):
        return None
    return result
