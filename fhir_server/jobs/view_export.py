"""`ViewDefinition/$viewdefinition-export` (SQL on FHIR) as a job of the one job store: the
rows are analytics' (`run_view` over the clinical store, written by analytics/output.py);
here they go to one file per view in the job's folder, with progress and cancellation,
under the visibility of the token that asked (the runner applies it: a patient-context
token's export holds its patient's rows only) and audited as a job.

The views are resolved and compiled at the kick-off (a stored view is copied into the
job's parameters), so the job runs what was asked even if the view changes meanwhile.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from fhir_server.analytics.output import write
from fhir_server.analytics.runner import run_view
from fhir_server.analytics.service import CountedRows, clinical_resources
from fhir_server.analytics.viewdefinition import compile_view
from fhir_server.jobs.runner import JobContext

VIEW_EXPORT = "view-export"
DEID_VIEW_EXPORT = "deid-view-export"  # a research recipient's, over the facade
EXTENSIONS = {"csv": "csv", "ndjson": "ndjson", "json": "json", "parquet": "parquet"}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def export_params(views: list[tuple[str, dict[str, Any]]], fmt: str, header: bool,
                  patient: str | None, since: str | None,
                  tracking_id: str | None) -> dict[str, Any]:  # fmt: skip
    """The job's parameters (JSON): each view with the name its output is given."""
    return {
        "views": [{"name": name, "view": view} for name, view in views],
        "format": fmt,
        "header": header,
        "patient": patient,
        "since": since,
        "clientTrackingId": tracking_id,
    }


def file_name(name: str, fmt: str, taken: set[str]) -> str:
    """A file name for a view's output: its name made safe, unique within the job."""
    stem = _UNSAFE.sub("_", name).strip("._") or "view"
    candidate, n = f"{stem}.{EXTENSIONS[fmt]}", 1
    while candidate in taken:
        n += 1
        candidate = f"{stem}-{n}.{EXTENSIONS[fmt]}"
    taken.add(candidate)
    return candidate


def run_view_export(context: JobContext, fhir: Any,
                    resources_of: Callable[[str], Iterable[dict]] | None = None
                    ) -> dict[str, Any]:  # fmt: skip
    """Each view into its file; the resources of a type from `resources_of` (a research
    recipient's: what the facade releases to it), else from the clinical store as the
    job's visibility allows."""
    params = context.params
    fmt = params["format"]
    started = time.time()
    transaction_time = datetime.now(UTC).isoformat(timespec="milliseconds")
    taken: set[str] = set()
    output = []
    exported = 0
    for item in params["views"]:
        view = compile_view(item["view"])
        resources = (
            resources_of(view.resource)
            if resources_of is not None
            else clinical_resources(fhir, view.resource, params["patient"], params["since"])
        )
        rows = CountedRows(run_view(view, resources))
        name = file_name(item["name"], fmt, taken)
        with (context.folder / name).open("wb") as handle:
            for chunk in write(fmt, view.column_types, rows, params["header"]):
                handle.write(chunk)
                # also where a cancellation or a shutdown stops the job
                context.progress(exported + rows.count, text=f"view {item['name']}")
        exported += rows.count
        output.append({"type": item["name"], "file": name, "count": rows.count})
    return {
        "transactionTime": transaction_time,
        "output": output,
        "error": [],
        "format": fmt,
        "clientTrackingId": params.get("clientTrackingId"),
        "started": started,
        "finished": time.time(),
    }
