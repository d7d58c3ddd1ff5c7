"""Which interaction a request is, from its method and path, for the authorization check.

The check is made once, before routing, for every request: a route this table does not
know is refused unless the token grants the method's letters on every type (`*`), so a
new endpoint is closed until it is described here (an operation: OPERATIONS).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fhir_server.auth.access import Access, forbidden
from fhir_server.model.outcome import FhirError, Issue
from fhir_server.model.resource_types import is_resource_type

# Reachable without a token: conformance, SMART discovery, the token endpoint and its keys,
# the API docs pages. The de-identified facade (/deid/) authenticates its recipients itself.
PUBLIC_PATHS = frozenset(
    {
        "/metadata",
        "/.well-known/smart-configuration",
        "/auth/token",
        "/auth/jwks",
        "/_docs",
        "/_docs/oauth2-redirect",
        "/_openapi.json",
        "/transparency",  # the public transparency page (rights/transparency.py)
        "/transparency.json",
    }
)
PUBLIC_PREFIXES = ("/deid/",)

# Operations by name -> the interaction they amount to on the type they are called on
# (`type` in Requirement). Terminology operations read the terminology resources.
OPERATIONS = {
    "validate": "validate",
    "lookup": "operation-read",
    "validate-code": "operation-read",
    "expand": "operation-read",
    "subsumes": "operation-read",
    "translate": "operation-read",
    "closure": "operation-read",
    # reads the Measure; each population's search is then checked on its own type, and SQL
    # over the materialised views (every patient) needs an unrestricted search scope
    "evaluate-measure": "operation-read",
    "lastn": "search-type",
    "everything": "search-type",  # `Patient/$everything`: narrowed inside the query
    # a Subscription's status and stored events (api/subscriptions.py): reads of it
    "status": "read",
    "events": "read",
    "get-ws-binding-token": "read",
}
# Operations on one Patient that read its Observations (the CGM summary and AGP report):
# a search of Observation in that patient's compartment.
PATIENT_OBSERVATION_OPERATIONS = frozenset({"cgm-metrics", "agp"})
VIEW_DEFINITION = "ViewDefinition"  # SQL on FHIR: `$run` (api/analytics.py)
# Status and files of asynchronous jobs (fhir_server/jobs/): for their owner only.
JOB_PATHS = frozenset({"$export-status", "$export-file", "$import-status", "$import-file",
                       "$viewdefinition-export-status", "$viewdefinition-export-result",
                       "$viewdefinition-export-file"})
VIEW_RUNS = frozenset({"$run", "$viewdefinition-run", "$viewdefinition-export"})
# Unknown routes: the method's letters on every type.
METHOD_LETTERS = {"GET": "rs", "HEAD": "rs", "POST": "cruds", "PUT": "cruds",
                  "PATCH": "cruds", "DELETE": "cruds"}


@dataclass(frozen=True, slots=True)
class Requirement:
    """`kind`: "public" (no check), "site" (a Nightscout site's secret, checked by its
    handler, which sets the site's access), "bundle" (a valid token here, each entry checked by
    the handler), "owner" (a valid token, the handler serving the owner of the job asked
    about), "any" (some scope with `interaction`'s letter on some type), "check"
    (`interaction` on `resource_type`), or "unknown" (a route not described here: a scope
    on every type, not patient-limited, with all the letters in `interaction`)."""

    kind: str
    resource_type: str | None = None
    interaction: str | None = None
    compartment: tuple[str, str] | None = None


PUBLIC = Requirement("public")


def classify(method: str, path: str) -> Requirement:
    if method == "OPTIONS" or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
        return PUBLIC
    parts = [p for p in path.split("/") if p]
    n = len(parts)
    if n == 0:
        if method == "POST":
            return Requirement("bundle")
        if method in ("GET", "HEAD"):
            return Requirement("any", interaction="s")  # narrowed to the types allowed
    elif parts[0] == "_history" and n == 1 and method == "GET":
        return Requirement("any", interaction="s")
    elif parts[0] == "nightscout" and n >= 2:
        # The Nightscout API authenticates its uploaders by their site's secret and gives
        # them that site's patient only (api/nightscout.py).
        return Requirement("site")
    elif parts[0] == "$submit-cgm-bundle" and n == 1 and method == "POST":
        return Requirement("bundle")  # a transaction: each entry checked by the handler
    elif parts[0] == "$convert" and n == 1 and method == "POST":
        return Requirement("any", interaction="c")  # stores nothing: any ingesting client
    elif parts[0] == "ui" and n >= 2 and parts[1] == "patients" and method in ("GET", "HEAD"):
        if n == 2:  # the patient list: a search of Patient, narrowed inside the queries
            return Requirement("check", "Patient", "search-type")
        if n == 3:  # a patient's AGP page: its Observations
            return Requirement("check", "Observation", "search-compartment",
                               ("Patient", parts[2]))
    elif parts[0] == "$export" and n == 1 and method in ("GET", "POST"):
        # Each exported type is checked by the handler; the job sees what the token sees.
        return Requirement("any", interaction="s")
    elif parts[0] in JOB_PATHS and n in (2, 3) and method in ("GET", "HEAD", "DELETE"):
        return Requirement("owner")  # a valid token; the handler serves the job's owner only
    elif is_resource_type(parts[0]):
        found = _typed(method, parts)
        if found is not None:
            return found
    return Requirement("unknown", "*", METHOD_LETTERS.get(method, "cruds"))


def _typed(method: str, parts: list[str]) -> Requirement | None:
    rtype, n = parts[0], len(parts)
    if n == 1:
        interaction = {"GET": "search-type", "HEAD": "search-type", "POST": "create",
                       "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method)
        return Requirement("check", rtype, interaction) if interaction else None
    second = parts[1]
    if n == 2 and second == "_search" and method == "POST":
        return Requirement("check", rtype, "search-type")
    if n == 2 and second == "_history" and method == "GET":
        return Requirement("check", rtype, "history-type")
    if rtype == VIEW_DEFINITION and second in VIEW_RUNS and n == 2:
        # the view may read any type, or only inline data: the handler requires search
        # on the type it reads
        return Requirement("any", interaction="s")
    if rtype == VIEW_DEFINITION and n == 3 and parts[2] in VIEW_RUNS:
        return Requirement("check", rtype, "read")  # and search on its type, as above
    if second == "$export" and n == 2 and rtype == "Patient" and method in ("GET", "POST"):
        # Patient-level export: each type is checked by the handler, and a patient-context
        # token's job holds its own compartment only.
        return Requirement("check", rtype, "search-type")
    if second.startswith("$"):
        interaction = OPERATIONS.get(second[1:]) if n == 2 else None
        return Requirement("check", rtype, interaction) if interaction else None
    if n == 2:
        interaction = {"GET": "read", "HEAD": "read", "PUT": "update", "PATCH": "patch",
                       "DELETE": "delete"}.get(method)
        return Requirement("check", rtype, interaction) if interaction else None
    third = parts[2]
    if n == 3 and third == "_history" and method == "GET":
        return Requirement("check", rtype, "history-instance")
    if n == 4 and third == "_history" and method == "GET":
        return Requirement("check", rtype, "vread")
    if n == 3 and third.startswith("$"):
        name = third[1:]
        if name in PATIENT_OBSERVATION_OPERATIONS and rtype == "Patient" and method == "GET":
            return Requirement("check", "Observation", "search-compartment", (rtype, second))
        if name == "export" and rtype == "Group" and method in ("GET", "POST"):
            return Requirement("check", rtype, "read")  # and each exported type, by the handler
        if name in ("evaluate", "members") and rtype == "Group":
            # A cohort's criteria are searches: the handler checks each searched type.
            return Requirement("check", rtype, "read")
        if name == "everything" and method == "GET":
            # The compartment's own resource is read; the other types are narrowed to
            # those the token may search (inside the query).
            return Requirement("check", rtype, "read", (rtype, second))
        interaction = OPERATIONS.get(name)
        if name == "validate" and method == "GET":
            interaction = "read"  # validates the stored resource: a read
        return Requirement("check", rtype, interaction) if interaction else None
    if n == 3 and is_resource_type(third) and method == "GET":
        return Requirement("check", third, "search-compartment", (rtype, second))
    if n == 4 and is_resource_type(third) and parts[3].startswith("$") and method == "GET":
        interaction = OPERATIONS.get(parts[3][1:])  # `Patient/1/Observation/$lastn`
        return Requirement("check", third, interaction, (rtype, second)) if interaction else None
    return None


def authorize(access: Access, requirement: Requirement) -> None:
    """Raise the FhirError to answer unless `access` meets `requirement` (401 / 403)."""
    if requirement is PUBLIC or requirement.kind == "site":
        return
    access.require_authenticated()
    if requirement.kind in ("bundle", "owner"):
        return  # each entry (a Bundle's), or the job's owner, is checked by the handler
    if requirement.kind == "any":
        if not access.allows_any(requirement.interaction or ""):
            raise forbidden("The access token grants no scope for this interaction")
        return
    if requirement.kind == "unknown":
        if not access.allows_everything(requirement.interaction or "cruds"):
            raise forbidden("This request needs a scope on every resource type "
                            f"({requirement.interaction}), not limited to a patient")
        return
    if requirement.interaction is None:
        raise FhirError(404, [Issue("error", "not-found", "Nothing here")])
    access.require(requirement.resource_type or "*", requirement.interaction)


def authorize_bundle(access: Access, bundle: Any, base_url: str) -> None:
    """Every entry of a transaction or batch checked as if it came alone, before any runs:
    one forbidden entry refuses the whole Bundle (403 naming it), so nothing changes."""
    if access.unrestricted or not isinstance(bundle, dict):
        return
    entries = bundle.get("entry")
    for index, entry in enumerate(entries if isinstance(entries, list) else ()):
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(request, dict):
            continue  # malformed: the Bundle processor answers it
        method, url = request.get("method"), request.get("url")
        if not isinstance(method, str) or not isinstance(url, str):
            continue
        if url.startswith(base_url.rstrip("/") + "/"):
            url = url[len(base_url.rstrip("/")) :]
        path = "/" + urlsplit(url).path.lstrip("/")
        requirement = classify(method.upper(), path)
        if requirement.kind == "bundle" or requirement is PUBLIC:
            requirement = Requirement("unknown", "*", "cruds")  # no nested Bundles
        try:
            authorize(access, requirement)
        except FhirError as exc:
            message = "; ".join(i.diagnostics for i in exc.issues)
            raise FhirError(
                exc.status,
                [Issue("error", exc.issues[0].code, f"Bundle.entry[{index}]: {message}",
                       (f"Bundle.entry[{index}]",))],
                exc.headers,
            ) from None
