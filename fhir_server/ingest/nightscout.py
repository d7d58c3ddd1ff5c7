"""The Nightscout API v1 below HTTP: uploads stored as FHIR, queries answered from FHIR.

An upload (one document or an array) is mapped by mappers/nightscout into one transaction
Bundle of conditional creates and run like any transaction (all or nothing, audited, under
the site's access: its patient's compartment only). A query (`count`, `find[...]`) becomes
a FHIR search of the site's patient (newest first), and the resources found are answered as
Nightscout documents. Without a time condition a query covers the last 4 days, as
Nightscout's does; `entries/current` is the latest reading whatever its age.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fhir_server.model import jsonio
from fhir_server.model.outcome import FhirError, Issue, error
from fhir_server.search.visibility import Visibility, visible_as
from fhir_server.service.fhir import FhirService
from mappers import nightscout
from mappers.device_csv.resources import LOINC
from mappers.nightscout.common import extension_value
from mappers.nightscout.entries import CALIBRATION, MBG_CODES, SGV_CODES
from mappers.nightscout.treatments import SYSTEM as TREATMENT_SYSTEM
from mappers.treatments import EVENT_SYSTEM

DEFAULT_DAYS = 4
MAX_DOCUMENTS = 10_000  # in one upload
MAX_COUNT = 10_000  # documents in one answer
# What a site writes and reads (its scopes, given by the API: fhir_server/api/nightscout.py).
SITE_TYPES = ("Observation", "MedicationAdministration", "Device", "DocumentReference")
COLLECTIONS = ("entries", "treatments", "devicestatus", "profile")
_FIND = re.compile(r"^find\[([A-Za-z_]+)\](?:\[\$(gte|gt|lte|lt|eq|ne)\])?$")
_PREFIX = {"gte": "ge", "gt": "gt", "lte": "le", "lt": "lt", "eq": "eq", "ne": "ne", None: "eq"}
_TIME_FIELDS = {"date", "dateString", "sysTime", "created_at", "mills", "startDate"}
# The search parameter of each type's time (Nightscout's `date` / `created_at`).
_DATE_PARAMETER = {"MedicationAdministration": "effective-time"}
_ADD = {"entries": nightscout.add_entry, "treatments": nightscout.add_treatment,
        "devicestatus": nightscout.add_devicestatus, "profile": nightscout.add_profile}


@dataclass
class Query:
    count: int
    items: list[tuple[str, str]]  # FHIR search parameters besides subject and paging
    kind: str | None = None  # entries: sgv / mbg / cal
    event_type: str | None = None  # treatments: eventType


class NightscoutService:
    def __init__(self, fhir: FhirService, base_url: str, bundle_slot: threading.Lock) -> None:
        self.fhir = fhir
        self.base_url = base_url
        self.bundle_slot = bundle_slot

    # -- uploads -----------------------------------------------------------------------

    def prepare(self, site: str, patient: str, collection: str,
                body: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The transaction Bundle of an upload and the documents to answer (with `_id`);
        400 naming every malformed document (then nothing is stored)."""
        documents = body if isinstance(body, list) else [body]
        if len(documents) > MAX_DOCUMENTS:
            raise error(413, "too-costly", f"at most {MAX_DOCUMENTS} documents in one upload")
        upload = nightscout.Upload(site=site, patient_ref=f"Patient/{patient}")
        add = _ADD[collection]
        answered, issues = [], []
        for index, doc in enumerate(documents):
            try:
                found = add(upload, doc)
            except nightscout.SkippedDocument:
                continue  # a sensor error code: deliberately not stored as glucose
            except nightscout.DocumentError as exc:
                issues.append(Issue("error", "invalid", f"document {index}: {exc}",
                                    (f"[{index}]",)))
                continue
            if found is not None:
                answered.append(found)
        if issues:
            raise FhirError(400, issues[:100])
        return upload.bundle(), answered

    def store(self, bundle: dict[str, Any], visibility: Visibility | None) -> dict[str, Any]:
        """Run an upload's Bundle (one transaction); its transaction-response."""
        with visible_as(visibility), self.bundle_slot:
            return self.fhir.bundles(self.base_url).process(bundle, self._get, False)

    def _get(self, url: str, items: list[tuple[str, str]]) -> tuple[int, Any]:
        return self.fhir.get_for_bundle(url, items, self.base_url)

    # -- queries -----------------------------------------------------------------------

    def entries(self, patient: str, query: Query,
                visibility: Visibility | None) -> list[dict[str, Any]]:
        codes = []
        if query.kind in (None, "sgv"):
            codes += [f"{LOINC}|{c}" for c in SGV_CODES]
        if query.kind in (None, "mbg"):
            codes += [f"{LOINC}|{c}" for c in MBG_CODES]
        if query.kind in (None, "cal"):
            codes.append(f"{EVENT_SYSTEM}|{CALIBRATION}")
        items = [("code", ",".join(codes)), *query.items]
        with visible_as(visibility):
            resources = self._search("Observation", patient, items, query.count)
            names = self._device_names(resources)
        return [d for r in resources if (d := nightscout.entry_of(r, names)) is not None]

    def treatments(self, patient: str, query: Query,
                   visibility: Visibility | None) -> list[dict[str, Any]]:
        items = [("identifier", f"{TREATMENT_SYSTEM}|"), *query.items]
        wanted = query.event_type

        def keep(resource: dict[str, Any]) -> bool:
            return wanted is None or extension_value(resource, "event-type") == wanted

        # a treatment is one to three resources: read enough of them
        with visible_as(visibility):
            resources = [*self._search("MedicationAdministration", patient, items,
                                       query.count * 3, keep),
                         *self._search("Observation", patient, items, query.count * 3, keep)]
            names = self._device_names(resources)
        return nightscout.treatments_of(resources, names)[: query.count]

    def devicestatus(self, patient: str, query: Query,
                     visibility: Visibility | None) -> list[dict[str, Any]]:
        items = [("code", f"{EVENT_SYSTEM}|device-status"), *query.items]
        with visible_as(visibility):
            resources = self._search("Observation", patient, items, query.count)
            names = self._device_names(resources)
        return [nightscout.devicestatus_of(r, names) for r in resources]

    def profiles(self, patient: str, count: int,
                 visibility: Visibility | None) -> list[dict[str, Any]]:
        items = [("type", f"{EVENT_SYSTEM}|therapy-profile"), ("_sort", "-date")]
        with visible_as(visibility):
            resources = self._search("DocumentReference", patient, items, count)
        return [p for r in resources if (p := nightscout.profile_of(r)) is not None]

    def _search(self, resource_type: str, patient: str, items: list[tuple[str, str]],
                limit: int, keep: Callable[[dict[str, Any]], bool] | None = None,
                ) -> list[dict[str, Any]]:
        subject = "patient" if resource_type == "DocumentReference" else "subject"
        when = _DATE_PARAMETER.get(resource_type, "date")
        params = [(subject, f"Patient/{patient}"),
                  *((when if k == "date" else k, v) for k, v in items)]
        if not any(k == "_sort" for k, _ in params):
            params.append(("_sort", "-" + when))
        params.append(("_count", str(min(limit, 1000))))
        found: list[dict[str, Any]] = []
        while True:
            bundle = self.fhir.search_bundle(resource_type, params, self.base_url, False)
            # the stored resources are embedded as serialised JSON: parse them once
            for entry in jsonio.loads(jsonio.dumps(bundle.get("entry") or [])):
                resource = entry.get("resource")
                if resource and (keep is None or keep(resource)):
                    found.append(resource)
            following = next((link["url"] for link in bundle.get("link") or ()
                              if link.get("relation") == "next"), None)
            if following is None or len(found) >= limit:
                return found[:limit]
            params = parse_qsl(urlsplit(following).query, keep_blank_values=True)

    def _device_names(self, resources: list[dict[str, Any]]) -> dict[str, str]:
        references = set()
        for resource in resources:
            device = resource.get("device")
            for item in device if isinstance(device, list) else [device]:
                if isinstance(item, dict) and str(item.get("reference", "")).startswith(
                        "Device/"):
                    references.add(item["reference"])
        names = {}
        for reference in references:
            try:
                stored = self.fhir.resources.read("Device", reference.split("/", 1)[1])
            except FhirError:
                continue
            device = jsonio.loads(stored.json) if stored.json else {}
            for name in device.get("deviceName") or ():
                names[reference] = name.get("name")
                break
        return names


def parse_query(collection: str, params: list[tuple[str, str]], default_count: int,
                now: float | None = None) -> Query:
    """Nightscout's `count` and `find[field][$op]=value` as FHIR search parameters."""
    count = default_count
    items: list[tuple[str, str]] = []
    kind = event_type = None
    timed = False
    for key, value in params:
        if key == "count":
            try:
                count = int(value)
            except ValueError:
                raise error(400, "invalid", f"count must be a whole number, not {value!r}") \
                    from None
            if count < 1:
                raise error(400, "invalid", "count must be at least 1")
            count = min(count, MAX_COUNT)
            continue
        match = _FIND.match(key)
        if match is None:
            continue  # other parameters (secret, token, ...) are not conditions
        name, operator = match.groups()
        if name in _TIME_FIELDS:
            items.append(("date", _PREFIX[operator] + _time_text(name, value)))
            timed = True
        elif name == "type" and collection == "entries" and operator in (None, "eq"):
            if value not in nightscout.entries.TYPES:
                raise error(400, "invalid", f"find[type]: one of sgv, mbg, cal, not {value!r}")
            kind = value
        elif name == "eventType" and collection == "treatments" and operator in (None, "eq"):
            event_type = value
        elif name in ("sgv", "mbg") and collection == "entries":
            try:
                number = float(value)
            except ValueError:
                raise error(400, "invalid", f"find[{name}] must be a number") from None
            items.append(("value-quantity", f"{_PREFIX[operator]}{number:g}"))
            kind = kind or name
        else:
            raise error(400, "not-supported", f"find[{name}] is not supported here")
    if not timed:
        since = (now if now is not None else time.time()) - DEFAULT_DAYS * 86400
        items.append(("date", "ge" + datetime.fromtimestamp(since, UTC).isoformat(
            timespec="seconds")))
    return Query(count=count, items=items, kind=kind, event_type=event_type)


def _time_text(name: str, value: str) -> str:
    text = value.strip()
    try:
        if re.fullmatch(r"-?\d+(\.\d+)?", text):
            return datetime.fromtimestamp(float(text) / 1000, UTC).isoformat(
                timespec="milliseconds")
        moment = nightscout.common.parse_fhir_time(text) if "T" in text else None
    except (ValueError, OverflowError, OSError):
        raise error(400, "invalid", f"find[{name}]: not a time: {value[:40]!r}") from None
    if moment is not None:
        return moment.isoformat(timespec="milliseconds")
    if re.fullmatch(r"\d{4}(-\d{2}(-\d{2})?)?", text):
        return text
    raise error(400, "invalid", f"find[{name}]: not a time: {value[:40]!r}")
