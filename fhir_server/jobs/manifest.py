"""The one status and manifest shape of every job (Bulk Data Access IG 2.0, async pattern).

- queued or running: 202 with `X-Progress` (a few words and a percentage) and
  `Retry-After` (seconds);
- failed: 500 with an OperationOutcome saying why;
- completed: 200 with the completion manifest (`transactionTime`, `request`,
  `requiresAccessToken`, `output` and `error` file lists with their URLs and counts) and
  `Expires` (when the files are deleted).

A job's result holds file names relative to its folder; the URLs are made here, from the
base the client reached the server by.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from fhir_server.jobs.store import COMPLETED, FAILED, Job
from fhir_server.model.outcome import Issue, outcome

RETRY_AFTER_SECONDS = 2


@dataclass(frozen=True)
class StatusAnswer:
    status: int
    headers: dict[str, str]
    body: dict[str, Any] | None


def progress_text(job: Job) -> str:
    if job.status != "running":
        return "queued"
    what = f"{job.progress}: " if job.progress else ""
    if job.total:
        percent = min(100, int(100 * job.done / job.total))
        return f"{what}{percent}% ({job.done}/{job.total})"
    return f"{what}{job.done} done"


def status_answer(
    job: Job,
    files_url: str,
    requires_access_token: bool,
    extension: dict[str, Any] | None = None,
) -> StatusAnswer:
    if job.status == FAILED:
        issue = Issue("error", "exception", job.error or "the job failed")
        return StatusAnswer(500, {}, outcome([issue]))
    if job.status != COMPLETED or job.result is None:
        return StatusAnswer(
            202,
            {"X-Progress": progress_text(job), "Retry-After": str(RETRY_AFTER_SECONDS)},
            None,
        )
    result = job.result
    manifest: dict[str, Any] = {
        "transactionTime": result["transactionTime"],
        "request": job.request,
        "requiresAccessToken": requires_access_token,
        "output": [_file(item, files_url) for item in result.get("output", [])],
        "error": [_file(item, files_url) for item in result.get("error", [])],
    }
    if extension:
        manifest["extension"] = extension
    headers = {}
    if job.expires is not None:
        expires = datetime.fromtimestamp(job.expires, UTC)
        headers["Expires"] = format_datetime(expires, usegmt=True)
    return StatusAnswer(200, headers, manifest)


def _file(item: dict[str, Any], files_url: str) -> dict[str, Any]:
    """A manifest entry: the file's URL (an export's output, an error file) and, for an
    import's inputs, the URL read."""
    entry: dict[str, Any] = {"type": item["type"]}
    if "file" in item:
        entry["url"] = f"{files_url}/{item['file']}"
    for key in ("inputUrl", "count"):
        if key in item:
            entry[key] = item[key]
    return entry


def listed_files(job: Job) -> set[str]:
    """The names of the files a completed job may serve."""
    if job.status != COMPLETED or job.result is None:
        return set()
    items = [*job.result.get("output", []), *job.result.get("error", [])]
    return {item["file"] for item in items if "file" in item} | set(
        job.result.get("extra_files", []))
