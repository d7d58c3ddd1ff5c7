"""`POST /$convert`: HL7 v2, device / lab CSV or DICOM in, FHIR out, nothing stored.

The Content-Type says what the body is:

- `x-application/hl7-v2+er7` (HL7 v2 ER7; query `timezone`: the sender's zone for times
  without an offset). One message answers its transaction Bundle; a batch (FHS/BHS, or
  several MSH) answers a `collection` Bundle whose entries are the transaction Bundles, one
  per message, in order (each can be POSTed to `/` as it is; they are not merged because
  each message is its own unit of work, as over MLLP).
- `text/csv` (query `format` = auto or a format name, `patient` = the reference the readings
  belong to, `timezone` = the device clock's zone, `dayfirst` = true/false). Answers a
  `Parameters` resource, as a FHIR operation with more than one output does:
  `return` = the transaction Bundle, `outcome` = an OperationOutcome with one issue per
  rejected row (error) and per skipped row (information), each carrying the row's 1-based
  line number in the core extension `operationoutcome-issue-line`, plus the warnings and a
  summary; `format`, `rowsRead` and `readings` give the figures.
- `application/dicom` (query `timezone`): the transaction Bundle.

A body that cannot be mapped is a 422 OperationOutcome, wrong options a 400, an unknown
Content-Type a 415, a body over the server's limit a 413.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from fhir_server.api.http import check_accept, fhir_response, pretty, read_raw_body
from fhir_server.model.outcome import Issue, error, outcome
from fhir_server.service.ingest import (
    Conversion,
    ConversionError,
    convert_csv,
    convert_dicom,
    convert_hl7v2,
)

# Registered in the CapabilityStatement as a system-level operation. The core definition is
# the format conversion operation; ours converts other formats to FHIR in the same spirit.
CONVERT_OPERATION = ("convert", "http://hl7.org/fhir/OperationDefinition/Resource-convert")
ISSUE_LINE = "http://hl7.org/fhir/StructureDefinition/operationoutcome-issue-line"

HL7V2_TYPES = ("x-application/hl7-v2+er7", "application/hl7-v2+er7", "application/hl7-v2")
CSV_TYPES = ("text/csv",)
DICOM_TYPES = ("application/dicom",)


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _flag(request: Request, name: str) -> bool | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise error(400, "invalid", f"{name} must be true or false, not '{value}'")


def _row_issue(severity: str, row: int, reason: str) -> dict[str, Any]:
    issue = Issue(severity, "processing" if severity == "error" else "informational",
                  f"row {row}: {reason}").to_json()
    issue["extension"] = [{"url": ISSUE_LINE, "valueInteger": row}]
    return issue


def csv_parameters(result: Conversion) -> dict[str, Any]:
    """The Parameters answer to a CSV conversion: the Bundle and the row report."""
    summary = (
        f"{result.format}: {result.rows_read} rows read, {result.readings} readings mapped, "
        f"{result.events} logged events mapped, {len(result.rejected)} rows rejected, "
        f"{len(result.skipped)} rows skipped"
    )
    issues = [Issue("information", "informational", summary).to_json()]
    issues += [Issue("warning", "informational", w).to_json() for w in result.warnings]
    issues += [_row_issue("error", r.row, r.reason) for r in result.rejected]
    issues += [_row_issue("information", r.row, r.reason) for r in result.skipped]
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "return", "resource": result.bundles[0]},
            {"name": "outcome", "resource": {"resourceType": "OperationOutcome", "issue": issues}},
            {"name": "format", "valueCode": result.format},
            {"name": "rowsRead", "valueInteger": result.rows_read},
            {"name": "readings", "valueInteger": result.readings},
            {"name": "events", "valueInteger": result.events},
        ],
    }


def hl7v2_answer(result: Conversion) -> dict[str, Any]:
    if len(result.bundles) == 1:
        return result.bundles[0]
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "total": len(result.bundles),
        "entry": [{"resource": bundle} for bundle in result.bundles],
    }


def convert_body(content_type: str, raw: bytes, params: dict[str, Any]) -> dict[str, Any]:
    """The answer to a $convert body of `content_type`; ConversionError when it cannot be."""
    timezone = params.get("timezone")
    if content_type in HL7V2_TYPES:
        return hl7v2_answer(convert_hl7v2(raw, timezone=timezone))
    if content_type in CSV_TYPES:
        result = convert_csv(
            raw,
            format=params.get("format") or "auto",
            patient=params.get("patient"),
            timezone=timezone,
            dayfirst=params.get("dayfirst"),
        )
        return csv_parameters(result)
    return convert_dicom(raw, timezone=timezone).bundles[0]


def build_convert_router() -> APIRouter:
    router = APIRouter()

    @router.post("/$convert")
    async def convert(request: Request) -> Response:
        check_accept(request)
        content_type = _content_type(request)
        known = (*HL7V2_TYPES, *CSV_TYPES, *DICOM_TYPES)
        if content_type not in known:
            raise error(
                415,
                "not-supported",
                f"$convert takes HL7 v2 ({HL7V2_TYPES[0]}), CSV (text/csv) or DICOM "
                f"(application/dicom), not '{content_type or 'no Content-Type'}'",
            )
        raw = await read_raw_body(request, request.app.state.settings.max_body_bytes)
        params: dict[str, Any] = {
            "timezone": request.query_params.get("timezone") or None,
            "format": request.query_params.get("format"),
            "patient": request.query_params.get("patient"),
            "dayfirst": _flag(request, "dayfirst"),
        }
        try:
            # Mapping is CPU work (a 90-day CGM export takes seconds): off the event loop.
            body = await run_in_threadpool(convert_body, content_type, raw, params)
        except ConversionError as exc:
            code = "invalid" if exc.status == 400 else "processing"
            return fhir_response(outcome([Issue("error", code, str(exc))]), exc.status)
        return fhir_response(body, 200, None, pretty(request))

    return router
