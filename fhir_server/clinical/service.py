"""The Python API of CGM care: a patient's glucose readings, their metrics, their FHIR
summary (stored on request) and the AGP report.

    cgm = CgmService(fhir_service)
    metrics = cgm.metrics("pat-1", start="2024-05-01", end="2024-05-14")
    bundle = cgm.summary_bundle("pat-1", metrics, base_url, persist=True)

Readings are read through the service's storage, so the caller's access (SMART scopes,
patient context) applies inside the search, as for any search, and reads are audited as
such. Only the period's glucose Observations are read: a search on subject, the glucose
codes and the date window, which the date index serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fhir_server.clinical import cgm_fhir
from fhir_server.clinical.glucose import GLUCOSE_CODES, LOINC, Reading, reading_from
from fhir_server.clinical.metrics import CgmMetrics, Period, compute
from fhir_server.clinical.period import reporting_period
from fhir_server.clinical.ranges import POPULATIONS
from fhir_server.model import jsonio
from fhir_server.search.errors import SearchError
from fhir_server.storage.base import instant, now_millis

# Pages of the internal read: each page plans its query again (a count per candidate
# index), so 90 days of 5-minute readings (26,000) read in 3 pages rather than 26.
PAGE = 10_000
UNITS = ("mg/dL", "mmol/L")


@dataclass(frozen=True, slots=True)
class CgmRequest:
    """What a caller asks for: a period, a population's targets, a display unit."""

    start: str | None = None
    end: str | None = None
    tz: str | None = None
    population: str = "general"
    unit: str = "mg/dL"

    @classmethod
    def from_items(cls, items: list[tuple[str, str]]) -> CgmRequest:
        known = {"start", "end", "tz", "population", "unit"}
        values: dict[str, str] = {}
        for key, value in items:
            if key in known:
                if key in values:
                    raise SearchError(f"{key} may be given once", key)
                values[key] = value
        population = values.get("population", "general")
        if population not in POPULATIONS:
            raise SearchError(f"population must be one of {', '.join(POPULATIONS)}", "population")
        unit = values.get("unit", "mg/dL")
        if unit not in UNITS:
            raise SearchError("unit must be mg/dL or mmol/L", "unit")
        return cls(values.get("start"), values.get("end"), values.get("tz"), population, unit)

    def period(self, now: datetime | None = None) -> Period:
        return reporting_period(self.start, self.end, self.tz, now)


class CgmService:
    def __init__(self, fhir: Any) -> None:
        self.fhir = fhir

    def readings(self, patient_id: str, period: Period) -> list[Reading]:
        """The patient's glucose readings (CGM and meter) inside `period`."""
        codes = ",".join(f"{LOINC}|{code}" for code in GLUCOSE_CODES)
        items = [
            ("subject", f"Patient/{patient_id}"),
            ("code", codes),
            ("date", "ge" + period.start.astimezone(UTC).isoformat().replace("+00:00", "Z")),
            ("date", "lt" + period.end.astimezone(UTC).isoformat().replace("+00:00", "Z")),
        ]
        query = self.fhir.search.parse("Observation", items, False)
        found: list[Reading] = []
        cursor: str | None = None
        while True:
            page = self.fhir.storage.search(query, PAGE, cursor)
            for stored in page.matches:
                if stored.json is None:
                    continue
                reading = reading_from(jsonio.loads(stored.json))
                if reading is not None:
                    found.append(reading)
            cursor = page.next_cursor
            if not cursor:
                return found

    def metrics(
        self,
        patient_id: str,
        request: CgmRequest | None = None,
        now: datetime | None = None,
    ) -> CgmMetrics:
        request = request or CgmRequest()
        period = request.period(now)
        return compute(self.readings(patient_id, period), period, request.population)

    def summary_bundle(
        self,
        patient_id: str,
        metrics: CgmMetrics,
        base_url: str,
        unit: str = "mg/dL",
        persist: bool = False,
        pdf: tuple[bytes, str] | None = None,
    ) -> dict[str, Any]:
        """The collection Bundle of the summary (and, with `pdf` = (bytes, "lang|title"),
        the PDF DiagnosticReport). With `persist` the resources are stored first, all in
        one transaction, each under its own id (a new version when the figures changed)."""
        builder = cgm_fhir.SummaryBuilder(patient_id, metrics, unit, persisted=persist)
        resources = builder.resources()
        if pdf is not None:
            resources.append(builder.pdf_report(resources[0], *pdf))
        if persist:
            resources = self._store(resources)
        entries = [builder.entry(resource, base_url) for resource in resources]
        return cgm_fhir.collection(entries, instant(now_millis()))

    def _store(self, resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        service = self.fhir.resources
        stored = []
        with service.storage.transaction() as tx:
            for resource in resources:
                result = service.update_in(tx, resource["resourceType"], resource["id"], resource)
                stored.append(result.stored)
        return [jsonio.loads(s.json) for s in stored]
