"""The public transparency figures (`/transparency.json`, the page `/transparency`): what
the warehouse holds and who uses it.

- holdings: patients and resources by source and by month (holdings.py);
- research recipients and what each receives (rules, k, date shift, resource types);
- objections in force and withdrawn;
- the last de-identified exports (date, recipient, size, manifest hash).

Every count from 1 to 10 is shown as "<11" (analytics/suppression.py: the rule of French
national health data), and where cells add up to a published total (the sources, the
months), a single small one is withheld with the next smallest. Figures are computed at
most every `refresh_seconds`: a request after that gets the figures in hand while one
background thread computes new ones (the first request waits for them), so the page costs
two grouped queries every few minutes whatever the traffic.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from fhir_server.analytics.suppression import SMALL_CELL_LIMIT, is_small, suppress_strata
from fhir_server.rights.holdings import Holdings, holdings
from fhir_server.rights.objections import SCOPE_SYSTEM, Objections, objecting_patient
from fhir_server.search.visibility import visible_as
from fhir_server.storage.base import instant

log = logging.getLogger("diatabase.rights")
REFRESH_SECONDS = 300.0
LAST_EXPORTS = 10
SUPPRESSED = f"<{SMALL_CELL_LIMIT}"


def shown(count: int) -> int | str:
    return SUPPRESSED if is_small(count) else count


class Transparency:
    def __init__(
        self, service: Any, deid: Any = None, jobs: Any = None,
        refresh_seconds: float = REFRESH_SECONDS,
    ) -> None:
        self.service = service
        self.deid = deid  # the de-identification context (recipients), if configured
        self.jobs = jobs  # the job store (the exports)
        self.refresh_seconds = refresh_seconds
        self._objections = Objections(service.storage, service.search.parse)
        self._figures: dict[str, Any] | None = None
        self._made = 0.0
        self._lock = threading.Lock()
        self._refreshing = False

    def figures(self) -> dict[str, Any]:
        held = self._figures
        if held is None:
            with self._lock:
                if self._figures is None:
                    self._figures, self._made = self.compute(), time.monotonic()
                return self._figures
        if time.monotonic() - self._made > self.refresh_seconds and not self._refreshing:
            self._refreshing = True
            threading.Thread(target=self._refresh, name="transparency", daemon=True).start()
        return held

    def _refresh(self) -> None:
        try:
            figures = self.compute()
            with self._lock:
                self._figures, self._made = figures, time.monotonic()
        except Exception:  # the figures in hand stay; the next request tries again
            log.exception("the transparency figures could not be computed")
        finally:
            self._refreshing = False

    # -- the figures -----------------------------------------------------------------------

    def compute(self) -> dict[str, Any]:
        with visible_as(None):
            held = holdings(self.service.indexed.backend)
            objections = self._objections.current()
            withdrawn = self._withdrawn()
        return {
            "generated": instant(time.time()),
            "refreshSeconds": int(self.refresh_seconds),
            "smallCellLimit": SMALL_CELL_LIMIT,
            "holdings": _holdings(held),
            "recipients": self._recipients(held),
            "objections": {"inForce": shown(len(objections.patients)),
                           "withdrawn": shown(withdrawn)},
            "exports": self._exports(),
        }

    def _withdrawn(self) -> int:
        """Patients whose research opt-outs are all withdrawn (each counted once)."""
        query = self.service.search.parse("Consent", [("scope", f"{SCOPE_SYSTEM}|research")],
                                          True)
        patients: set[str] = set()
        cursor = None
        while True:
            page = self.service.storage.search(query, 1000, cursor)
            for stored in page.matches:
                consent = orjson.loads(stored.json) if stored.json else {}
                patient = objecting_patient(consent)
                if patient and consent.get("status") != "active":
                    patients.add(patient)
            cursor = page.next_cursor
            if cursor is None:
                break
        return len(patients - self._objections.current().patients)

    def _recipients(self, held: Holdings) -> list[dict[str, Any]]:
        if self.deid is None:
            return []
        from fhir_server.deid.facade import served_types

        types = sorted(set(served_types()) & held.types())
        out = []
        for recipient in self.deid.recipients:
            rules = recipient.rules
            out.append({
                "id": recipient.id,
                "rules": rules.name,
                "rulesSha256": hashlib.sha256(rules.source).hexdigest(),
                "k": rules.k,
                "dateShiftDays": rules.date_shift_days if rules.shift_dates else 0,
                "resourceTypes": types,
            })
        return out

    def _exports(self) -> list[dict[str, Any]]:
        if self.jobs is None:
            return []
        from fhir_server.jobs import DEID_EXPORT

        done = [j for j in self.jobs.completed() if j.kind == DEID_EXPORT]
        done.sort(key=lambda j: j.finished or 0, reverse=True)
        out = []
        for job in done[:LAST_EXPORTS]:
            signed = (job.result or {}).get("signed") or {}
            manifest = Path(job.folder) / "manifest.json"
            digest = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.exists() \
                else None
            out.append({
                "date": instant(job.finished or job.created),
                "recipient": job.owner.recipient,
                "bytes": sum(o.get("bytes", 0) for o in signed.get("output", ())),
                "resources": shown(sum(o.get("count", 0) for o in signed.get("output", ()))),
                "manifestSha256": digest,
            })
        return out


def _holdings(held: Holdings) -> dict[str, Any]:
    """Totals, then the cells by source and by month, each a set of strata of the totals
    (so a single small cell is hidden with the next smallest: no recovery by subtraction)."""
    by_source: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (source, rtype), count in held.by_source.items():
        # meta.source is `system#request` by convention: the system is the source
        _add(by_source[source.split("#", 1)[0]], rtype, count)
    by_month: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (month, rtype), count in held.by_month.items():
        _add(by_month[month], rtype, count)
    resources = sum(cell[0] for cell in by_month.values())
    patients = sum(cell[1] for cell in by_month.values())
    return {
        "resources": shown(resources),
        "patients": shown(patients),
        "bySource": _strata(by_source, "source"),
        "byMonth": _strata(by_month, "month"),
    }


def _add(cell: list[int], rtype: str, count: int) -> None:
    cell[0] += count
    if rtype == "Patient":
        cell[1] += count


def _strata(cells: dict[str, list[int]], name: str) -> list[dict[str, Any]]:
    hidden_resources = suppress_strata({k: c[0] for k, c in cells.items()})
    hidden_patients = suppress_strata({k: c[1] for k, c in cells.items()})
    return [
        {
            name: key or None,
            "patients": SUPPRESSED if key in hidden_patients else cells[key][1],
            "resources": SUPPRESSED if key in hidden_resources else cells[key][0],
        }
        for key in sorted(cells)
    ]
