"""`POST [base]/$submit-cgm-bundle` (HL7 CGM IG 1.0.0): a device platform's CGM data.

The body is the CGM Data Submission Bundle itself (or Parameters with it as `resource`):
a `transaction` with a `timestamp`. Every entry is authorized as in `POST /` (SMART scopes,
a patient-context token writing its own patient only), every `POST` is made conditional
(mappers/cgm_submission.py: the submitter's `ifNoneExist`, else its identifier, else a
keyed hash of the reading), and the Bundle runs as one transaction: the answer is the
`transaction-response` (201 created, 200 matched). Under overload (more submissions waiting
than MAX_WAITING) the answer is 429 with `Retry-After`, and nothing is stored.
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from fhir_server.api.http import base_url, check_accept, fhir_response, pretty, read_body
from fhir_server.api.rest import _BUNDLE_SLOT
from fhir_server.auth.routes import authorize_bundle
from fhir_server.model.outcome import error
from mappers.cgm_submission import with_conditions

IG = "http://hl7.org/fhir/uv/cgm"
RECEIVER = f"{IG}/CapabilityStatement/cgm-data-receiver"
SUBMIT_OPERATION = ("submit-cgm-bundle", f"{IG}/OperationDefinition/submit-cgm-bundle")
MAX_WAITING = 8  # submissions in progress or queued for the write slot
RETRY_AFTER_SECONDS = 5


class _Admission:
    """Counts submissions under way; refuses one past the limit instead of queueing it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.lock = threading.Lock()

    def enter(self) -> bool:
        with self.lock:
            if self.count >= self.limit:
                return False
            self.count += 1
            return True

    def leave(self) -> None:
        with self.lock:
            self.count -= 1


def _submitted_bundle(body: Any) -> dict[str, Any]:
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        found = [p.get("resource") for p in body.get("parameter") or ()
                 if isinstance(p, dict) and p.get("name") == "resource"]
        body = found[0] if len(found) == 1 else None
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise error(400, "invalid", "$submit-cgm-bundle takes a Bundle (or Parameters with "
                    "the Bundle as `resource`)")
    if body.get("type") != "transaction":
        raise error(400, "invalid", "the CGM Data Submission Bundle must be a transaction, "
                    f"not {body.get('type')!r}", "Bundle.type")
    if not isinstance(body.get("timestamp"), str) or not body["timestamp"].strip():
        raise error(400, "required", "the CGM Data Submission Bundle needs its timestamp",
                    "Bundle.timestamp")
    return body


def build_cgm_submit_router(limit: int | None = None) -> APIRouter:
    router = APIRouter()
    admission = _Admission(MAX_WAITING if limit is None else limit)

    @router.post("/$submit-cgm-bundle")
    async def submit(request: Request) -> Response:
        check_accept(request)
        if not admission.enter():
            raise error(429, "throttled", "Too many CGM submissions at once; retry later",
                        **{"Retry-After": str(RETRY_AFTER_SECONDS)})
        try:
            body = await read_body(request, request.app.state.settings.max_body_bytes)
            bundle = _submitted_bundle(body)
            base = base_url(request, request.app.state.settings.base_url)
            authorize_bundle(request.state.access, bundle, base)
            svc = request.app.state.fhir

            def process() -> dict:
                with_conditions(bundle)

                def get(url: str, items: list[tuple[str, str]]) -> tuple[int, Any]:
                    return svc.get_for_bundle(url, items, base)

                with _BUNDLE_SLOT:
                    return svc.bundles(base).process(bundle, get, False)

            answer = await run_in_threadpool(process)
        finally:
            admission.leave()
        return fhir_response(answer, 200, None, pretty(request))

    return router
