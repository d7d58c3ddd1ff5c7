"""The FHIR R4 terminology operations over HTTP (GET with query parameters, POST with a
Parameters body), at type level and, where R4 defines it, at instance level.

The logic is the terminology library's (`terminology.operations`); this module only turns
requests into inputs and results (or TerminologyErrors) into FHIR responses. It must be
included before the generic `/{type}/{id}` routes, which would otherwise take `$lookup`
for an id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from fhir_server.api.http import check_accept, fhir_response, pretty, read_body
from fhir_server.model import jsonio
from fhir_server.model.outcome import error
from fhir_server.service.fhir import FhirService
from terminology import TerminologyError, TerminologyService, parse_parameters
from terminology import operations as ops

log = logging.getLogger("diatabase.terminology")

DEFINITION = "http://hl7.org/fhir/OperationDefinition/{}"
# Query parameters that shape the response rather than feed the operation.
RESULT_PARAMS = frozenset({"_format", "_pretty"})
INTEGER_INPUTS = ("count", "offset")
FHIR_INTEGER_MAX = 2**31 - 1

# Runs an operation: (service, inputs, canonical URL of the instance or None) -> resource.
Runner = Callable[[TerminologyService, dict[str, Any], str | None], dict]


def _system_instance(runner: Runner, name: str) -> Runner:
    """CodeSystem instance operations take the instance's URL as their `system`."""

    def run(tx: TerminologyService, params: dict[str, Any], url: str | None) -> dict:
        if url is not None:
            params = {**params, name: url}
        return runner(tx, params, None)

    return run


@dataclass(frozen=True)
class Operation:
    resource_type: str
    name: str
    definition: str
    run: Runner
    instance: bool  # R4 defines it at instance level too
    inline: bool  # cheap: answer on the event loop, without a thread hop


OPERATIONS = (
    Operation("CodeSystem", "lookup", "CodeSystem-lookup",
              lambda tx, p, _url: ops.lookup(tx, p), instance=False, inline=True),
    Operation("CodeSystem", "validate-code", "CodeSystem-validate-code",
              lambda tx, p, url: ops.code_system_validate_code(tx, p, url),
              instance=True, inline=True),
    Operation("CodeSystem", "subsumes", "CodeSystem-subsumes",
              _system_instance(lambda tx, p, _url: ops.subsumes(tx, p), "system"),
              instance=True, inline=True),
    Operation("ValueSet", "expand", "ValueSet-expand",
              lambda tx, p, url: ops.expand(tx, p, url), instance=True, inline=False),
    Operation("ValueSet", "validate-code", "ValueSet-validate-code",
              lambda tx, p, url: ops.value_set_validate_code(tx, p, url),
              instance=True, inline=True),
    Operation("ConceptMap", "translate", "ConceptMap-translate",
              lambda tx, p, url: ops.translate(tx, p, url), instance=True, inline=False),
)


def register_operations(operations: dict[str, list[tuple[str, str]]]) -> None:
    """Add ours to the CapabilityStatement's list (resource type -> (name, definition))."""
    for op in OPERATIONS:
        entry = (op.name, DEFINITION.format(op.definition))
        listed = operations.setdefault(op.resource_type, [])
        if entry not in listed:
            listed.append(entry)


def _query_inputs(request: Request) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for name, value in request.query_params.multi_items():
        if name in RESULT_PARAMS:
            continue
        if name in inputs:
            previous = inputs[name]
            inputs[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            inputs[name] = value
    return inputs


async def _inputs(request: Request) -> dict[str, Any]:
    if request.method == "GET":
        inputs = _query_inputs(request)
    else:
        body = await read_body(request, request.app.state.settings.max_body_bytes)
        # Query parameters of a POST still count, as for searches (the body wins).
        inputs = {**_query_inputs(request), **parse_parameters(body)}
    _check_integers(inputs)
    if "displayLanguage" not in inputs:
        # R4: without displayLanguage, the Accept-Language header says which one.
        language = _accepted_language(request.headers.get("accept-language", ""))
        if language:
            inputs["displayLanguage"] = language
    return inputs


def _accepted_language(header: str) -> str | None:
    """The first language of an Accept-Language header (`fr-FR,fr;q=0.9` -> `fr`)."""
    for item in header.split(","):
        tag = item.split(";")[0].strip().split("-")[0].lower()
        if tag and tag != "*":
            return tag
    return None


def _check_integers(inputs: dict[str, Any]) -> None:
    """FHIR integers are 32-bit: a larger count or offset is refused, not echoed back."""
    for name in INTEGER_INPUTS:
        value = inputs.get(name)
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and value > FHIR_INTEGER_MAX:
            raise TerminologyError(f"parameter '{name}' is larger than a FHIR integer allows")


def _instance_url(svc: FhirService, resource_type: str, rid: str) -> str:
    stored = svc.resources.read(resource_type, rid)  # 404 / 410 as for a read
    resource = jsonio.loads(stored.json) if stored.json else {}
    url = resource.get("url")
    if not isinstance(url, str) or not url:
        raise error(422, "processing", f"{resource_type}/{rid} has no url to operate on")
    # A stored ValueSet or ConceptMap the service has not taken yet (written by another
    # process) is registered now.
    if not svc.terminology.knows(resource_type, url):
        svc.terminology.register(resource_type, resource)
    return url


def _call(op: Operation, svc: FhirService, inputs: dict[str, Any], url: str | None) -> dict:
    try:
        return op.run(svc.terminology.service, inputs, url)
    except TerminologyError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        # Inputs of the wrong shape the library did not anticipate: the client's fault.
        log.warning("malformed $%s input: %r", op.name, exc)
        raise TerminologyError(f"malformed input for ${op.name}: {exc}") from None


async def _answer(op: Operation, svc: FhirService, inputs: dict[str, Any],
                  url: str | None) -> dict:
    try:
        if op.inline:
            return _call(op, svc, inputs, url)
        return await run_in_threadpool(_call, op, svc, inputs, url)
    except TerminologyError as exc:
        # A ValueSet / ConceptMap stored by another process (a second worker, an import)
        # is looked for in storage and taken on first use.
        wanted = url or inputs.get("url")
        if exc.status != 404 or not isinstance(wanted, str):
            raise
        if not await run_in_threadpool(svc.terminology.refresh, op.resource_type, wanted):
            raise
        return await run_in_threadpool(_call, op, svc, inputs, url)


def _handler(op: Operation, instance: bool) -> Callable[..., Any]:
    async def handle(request: Request) -> Response:
        check_accept(request)
        svc: FhirService = request.app.state.fhir
        try:
            inputs = await _inputs(request)
            url = None
            if instance:
                rid = request.path_params["rid"]
                url = await run_in_threadpool(_instance_url, svc, op.resource_type, rid)
            result = await _answer(op, svc, inputs, url)
        except TerminologyError as exc:
            return fhir_response(exc.to_operation_outcome(), exc.status)
        return fhir_response(result, 200, None, pretty(request))

    handle.__name__ = f"{op.resource_type}_{op.name}_{'instance' if instance else 'type'}"
    return handle


def build_terminology_router() -> APIRouter:
    router = APIRouter()
    for op in OPERATIONS:
        paths = [(f"/{op.resource_type}/${op.name}", False)]
        if op.instance:
            paths.append((f"/{op.resource_type}/{{rid}}/${op.name}", True))
        for path, instance in paths:
            router.add_route(path, _handler(op, instance), methods=["GET", "POST"])
    return router
