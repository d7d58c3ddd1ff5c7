"""`$import`: NDJSON files into the store, as a job (after the Bulk Data import proposal's
"ping and pull" kick-off: a manifest of file URLs), or files uploaded with the kick-off.

The inputs are fetched into the job's folder (https/http URLs; `file://` paths only under
the folders the operator allows, `import_dirs`), then read a line at a time and stored by
the loader of `diatabase load` (ingest/loader.py): the same validation, resources keep their
ids, chunks of 500 in one transaction each, so an import is as fast as a load. A line that
cannot be stored becomes one OperationOutcome in the job's error file, naming the input and
the line; the other lines are stored.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import orjson

from fhir_server.ingest.loader import Loader
from fhir_server.jobs.runner import JobContext
from fhir_server.model import jsonio
from fhir_server.model.outcome import FhirError, Issue, error, outcome
from fhir_server.model.resource_types import is_resource_type
from fhir_server.storage.base import instant

ERRORS = "errors.ndjson"
NDJSON_FORMATS = ("application/fhir+ndjson", "application/ndjson", "ndjson")
FETCH_TIMEOUT = 120.0


def parse_manifest(body: Any, allowed_dirs: tuple[str, ...]) -> list[dict[str, str]]:
    """The inputs of a kick-off: [{"type", "url"}], from the proposal's JSON manifest
    (`input`: [{type, url}], or an export's completion manifest with `output`) or from a
    `Parameters` body (`input` parts `type` and `url`). URLs are checked here (400)."""
    if not isinstance(body, dict):
        raise error(400, "invalid", "The $import body must be a JSON manifest or Parameters")
    if body.get("resourceType") == "Parameters":
        inputs, fmt = _from_parameters(body)
    else:
        fmt = body.get("inputFormat")
        listed = body.get("input", body.get("output"))
        if not isinstance(listed, list):
            raise error(400, "invalid", "The manifest lists no input ([{type, url}])", "input")
        inputs = [i for i in listed if isinstance(i, dict)]
    if fmt is not None and fmt not in NDJSON_FORMATS:
        raise error(400, "not-supported", f"inputFormat {fmt}: only application/fhir+ndjson "
                    "is read", "inputFormat")
    checked = []
    for index, item in enumerate(inputs):
        url, rtype = item.get("url"), item.get("type")
        if not isinstance(url, str) or not url:
            raise error(400, "invalid", f"input[{index}] has no url", f"input[{index}]")
        if rtype is not None and (not isinstance(rtype, str) or not is_resource_type(rtype)):
            raise error(400, "invalid", f"input[{index}]: {rtype!r} is not a resource type",
                        f"input[{index}]")
        check_url(url, allowed_dirs)
        checked.append({"type": rtype or "", "url": url})
    if not checked:
        raise error(400, "invalid", "The manifest lists no input", "input")
    return checked


def _from_parameters(body: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    inputs, fmt = [], None
    for parameter in body.get("parameter") or []:
        if not isinstance(parameter, dict):
            continue
        if parameter.get("name") == "inputFormat":
            fmt = parameter.get("valueCode") or parameter.get("valueString")
        if parameter.get("name") == "input":
            parts = {p.get("name"): next((v for k, v in p.items() if k.startswith("value")),
                                         None)
                     for p in parameter.get("part") or [] if isinstance(p, dict)}
            inputs.append({"type": parts.get("type"), "url": parts.get("url")})
    return inputs, fmt


def check_url(url: str, allowed_dirs: tuple[str, ...]) -> None:
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        return
    if scheme == "file":
        local_path(url, allowed_dirs)
        return
    raise error(400, "not-supported", f"{url}: only https, http and (for the operator's "
                "folders) file URLs are read", "input")


def local_path(url: str, allowed_dirs: tuple[str, ...]) -> Path:
    """A file:// URL's path, if it lies inside a folder the operator allows (403 if not:
    a client must not make the server read its own files)."""
    path = Path(unquote(urlsplit(url).path)).resolve()
    for folder in allowed_dirs:
        if path.is_relative_to(Path(folder).resolve()):
            return path
    raise error(403, "forbidden", f"{url}: file URLs are read only inside the folders the "
                "operator allows (DIATABASE_IMPORT_DIRS)", "input")


def run_import(context: JobContext, service: Any, settings: Any) -> dict[str, Any]:
    started = time.time()
    inputs = context.params["inputs"]
    errors_path = context.folder / ERRORS
    rejected = [0]
    with errors_path.open("wb") as errors:

        def on_rejected(where: str, exc: FhirError) -> None:
            rejected[0] += 1
            errors.write(outcome_line(where, exc.issues) + b"\n")

        loader = Loader(service, on_progress=context.add, on_rejected=on_rejected)
        outputs = []
        for index, item in enumerate(inputs):
            name = item["url"].rsplit("/", 1)[-1] or f"input-{index}"
            context.progress(text=f"reading {name}", force=True)
            path = Path(item["path"]) if item.get("path") else _fetch(
                item["url"], context.folder / f"input-{index}.ndjson", tuple(settings.import_dirs))
            before = loader.report.stored
            failed_before = rejected[0]
            for where, resource in ndjson_items(path, item, on_rejected):
                loader.add(where, resource)
            loader.finish()
            if path.parent == context.folder or item.get("path"):
                path.unlink(missing_ok=True)  # a fetched copy or an upload is not kept
            outputs.append({"type": item["type"] or "Resource", "inputUrl": item["url"],
                            "count": loader.report.stored - before,
                            "rejected": rejected[0] - failed_before})
    errors_list = []
    if rejected[0]:
        errors_list.append({"type": "OperationOutcome", "file": ERRORS, "count": rejected[0]})
    else:
        errors_path.unlink()
    return {
        "transactionTime": instant(started),
        "output": outputs,
        "error": errors_list,
        "created": loader.report.created,
        "updated": loader.report.updated,
    }


def _fetch(url: str, target: Path, allowed_dirs: tuple[str, ...]) -> Path:
    """A local path holding the input: an allowed file as it is, a URL downloaded (streamed
    to the job's folder, never held in memory)."""
    if urlsplit(url).scheme.lower() == "file":
        return local_path(url, allowed_dirs)
    with httpx.stream("GET", url, timeout=FETCH_TIMEOUT, follow_redirects=True) as answer:
        answer.raise_for_status()
        with target.open("wb") as handle:
            for chunk in answer.iter_bytes():
                handle.write(chunk)
    return target


def ndjson_items(path: Path, item: dict[str, str], on_rejected: Any
           ) -> Iterator[tuple[str, Any]]:
    """(where, resource) per non-empty line; a line that is not JSON of the declared type
    is rejected here."""
    label = item["url"]
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{label} line {number}"
            try:
                resource = jsonio.loads(line)
            except jsonio.JsonError as exc:
                on_rejected(where, FhirError(400, [Issue("error", "structure", str(exc))]))
                continue
            declared = item["type"]
            if declared and isinstance(resource, dict) \
                    and resource.get("resourceType") != declared:
                on_rejected(where, FhirError(400, [Issue(
                    "error", "invalid",
                    f"a {resource.get('resourceType')} in a file of {declared}")]))
                continue
            yield where, resource


def outcome_line(where: str, issues: Any) -> bytes:
    """One OperationOutcome of the error file: the input and line, then why."""
    found = [Issue(i.severity, i.code, f"{where}: {i.diagnostics}", i.expression)
             for i in issues] or [Issue("error", "exception", f"{where}: rejected")]
    return orjson.dumps(outcome(found))


def stage_upload(folder: Path) -> Path:
    """Where an uploaded file waits for its job (removed by the job)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder / f"upload-{time.time_ns()}.ndjson"
