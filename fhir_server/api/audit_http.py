"""The REST door of the audit trail: one activity per request (fhir_server/audit/).

A plain ASGI middleware (no extra task, unlike Starlette's BaseHTTPMiddleware, so the
activity's context variable reaches the endpoint and its worker threads). It names the
interaction from the method and path, lets the request run, and records it with the
response's status when no write transaction has already done so. Who asked is read when
the event is made, from `request.state.access` (set by authorization, fhir_server/auth/).
"""

from __future__ import annotations

from typing import Any

from fhir_server.audit import Activity, Agent, AuditTrail, opened

# Not patient data: the public conformance documents and the API's own docs. The
# de-identification facade (/deid/) records its own events, with its recipients.
UNAUDITED_FIRST_SEGMENTS = frozenset(
    {"metadata", ".well-known", "_docs", "_openapi.json", "favicon.ico", "deid"}
)
FORM_LIMIT = 64 * 1024  # of a POST _search body kept as the query
# Terminology and conformance resources: not patient data. Their interactions (a
# `$validate-code` or `$expand` by an app, a profile read) are recorded only when they
# reached patient data after all (an `_include`, a `_revinclude`), were refused (401 / 403:
# a failed authorization is always recorded), or wrote; otherwise every code check of every
# app would be an event in a trail meant for access to patient data.
DEFINITIONAL_TYPES = frozenset(
    {
        "CodeSystem",
        "ValueSet",
        "ConceptMap",
        "NamingSystem",
        "StructureDefinition",
        "StructureMap",
        "SearchParameter",
        "OperationDefinition",
        "CompartmentDefinition",
        "CapabilityStatement",
        "ImplementationGuide",
        "TerminologyCapabilities",
    }
)


def classify(method: str, path: str) -> tuple[str, str | None] | None:
    """(restful-interaction code, the resource it is about) of a request; None when the
    request is not audited."""
    parts = [p for p in path.split("/") if p]
    if method == "OPTIONS" or (parts and parts[0] in UNAUDITED_FIRST_SEGMENTS):
        return None
    if parts and parts[0] == "auth":
        # a token asked of the built-in endpoint (who, refused or not); its keys are public
        return ("operation", None) if method == "POST" else None
    if any(p.startswith("$") for p in parts):
        instance = f"{parts[0]}/{parts[1]}" if len(parts) > 2 else None
        return "operation", instance
    instance = f"{parts[0]}/{parts[1]}" if len(parts) >= 2 else None
    if method in ("GET", "HEAD"):
        if not parts:
            return "search-system", None
        if parts == ["_history"]:
            return "history-system", None
        if len(parts) == 1:
            return "search-type", None
        if parts[1] == "_history":
            return "history-type", None
        if len(parts) == 2:
            return "read", instance
        if parts[2] == "_history":
            return ("vread" if len(parts) > 3 else "history-instance"), instance
        return "search-type", None  # a compartment search: /Patient/1/Observation
    if method == "POST":
        if not parts:
            return "transaction", None  # or batch: the Bundle processor says which
        if parts[-1] == "_search":
            return ("search-type" if len(parts) > 1 else "search-system"), None
        return "create", None
    interaction = {"PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method)
    return (interaction, instance if len(parts) >= 2 else None) if interaction else None


def agent_of(scope: dict[str, Any]) -> Agent:
    """Who made the request, from the authorization decision (fhir_server/auth/access.py)
    the auth middleware leaves on `request.state.access`, refused requests included."""
    client = scope.get("client")
    access = (scope.get("state") or {}).get("access")
    address = getattr(access, "source", None) or (client[0] if client else None)
    if access is None:
        return Agent(address=address, display="unauthenticated client")
    if getattr(access, "insecure_dev", False):
        return Agent(address=address, display="development mode (--insecure-dev)")
    client_id = getattr(access, "client_id", None)
    if not getattr(access, "authenticated", False):
        # A refused token's client id is only a claim: shown, never indexed as the agent
        # (anyone could fill another client's trail with it).
        claimed = f" claiming to be client {client_id}" if client_id else ""
        return Agent(address=address, display=f"unauthenticated client{claimed}")
    return Agent(client_id=client_id, user=getattr(access, "subject", None), address=address)


class AuditMiddleware:
    def __init__(self, app: Any, trail: AuditTrail) -> None:
        self.app = app
        self.trail = trail

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        kind = classify(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if kind is None or not self.trail.enabled:
            await self.app(scope, receive, send)
            return
        interaction, data = kind
        query = scope.get("query_string", b"").decode("latin-1")
        request = f"{scope['method']} {scope['path']}" + (f"?{query}" if query else "")
        activity = Activity(
            lambda: agent_of(scope),
            interaction,
            request,
            data,
            definitional=_first_segment(scope["path"]) in DEFINITIONAL_TYPES,
        )
        status = 500
        if scope["method"] == "POST" and interaction.startswith("search"):
            receive = _keeping_form(receive, activity)

        finished = False

        def finish() -> None:
            nonlocal finished
            if finished:
                return
            finished = True
            if status >= 400:
                failure = getattr((scope.get("state") or {}).get("access"), "failure", None)
                activity.outcome_text = f"HTTP {status}" + (f": {failure}" if failure else "")
            self.trail.finish(activity, status)

        async def sending(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # queued before the client has the whole answer: what it does next (another
                # request, a shutdown) comes after the event
                finish()
            await send(message)

        try:
            with opened(activity):
                await self.app(scope, receive, sending)
        finally:
            finish()  # no complete answer was sent (an error, a client gone)


def _first_segment(path: str) -> str:
    return path.lstrip("/").split("/", 1)[0]


def _keeping_form(receive: Any, activity: Activity) -> Any:
    """A POST _search's parameters are in its body: keep them (up to FORM_LIMIT) as part
    of the query recorded."""
    kept = bytearray()

    async def receiving() -> dict:
        message = await receive()
        if message["type"] == "http.request" and len(kept) < FORM_LIMIT:
            kept.extend(message.get("body", b"")[: FORM_LIMIT - len(kept)])
            if not message.get("more_body") and kept:
                activity.request = f"{activity.request}\n\n{kept.decode('latin-1')}"
        return message

    return receiving
