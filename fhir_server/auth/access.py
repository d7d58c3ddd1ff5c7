"""`Access`: who is asking and what they may do, decided once per request.

The auth middleware (auth/middleware.py) builds one from the bearer token (or the
`--insecure-dev` switch) and puts it on `request.state.access` for every request,
refused ones included (then `authenticated` is False and `failure` says why, so that the
audit trail can still say who tried: the client id as the token claimed it, the address).
Routers and services ask it:

- `access.require("Observation", "search")` raises the FhirError to answer (401 without a
  valid token, 403 without a scope granting the interaction);
- `access.patient_compartment`: the patient id a patient-context token is limited to;
- `access.visibility`: the same decision as search criteria for storage (search/
  visibility.py), which the middleware also binds for the time of the request.

`SYSTEM` is the Access of the operator's own work (CLI, jobs): everything allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fhir_server.auth.scopes import Scope, ScopeSet, parse_scopes
from fhir_server.model.outcome import FhirError, Issue
from fhir_server.search.visibility import Grant, Visibility

# FHIR interaction -> the SMART letters of which one suffices.
INTERACTION_LETTERS = {
    "read": "r",
    "vread": "r",
    "history-instance": "r",
    "search": "s",
    "search-type": "s",
    "search-system": "s",
    "search-compartment": "s",
    "history-type": "s",
    "history-system": "s",
    "create": "c",
    "update": "u",
    "patch": "u",
    "delete": "d",
    # $validate is a dry run of a write.
    "validate": "cu",
    # Terminology operations and other reads through an operation.
    "operation-read": "r",
}

ISSUE_LOGIN = "login"
NO_TOKEN = "An access token is required"
ISSUE_FORBIDDEN = "forbidden"


@dataclass(frozen=True)
class Access:
    """One request's access, immutable. `insecure_dev`: the server runs with
    --insecure-dev and every check passes (`unrestricted`)."""

    client_id: str | None = None
    subject: str | None = None  # the user (`sub`) when not the client itself
    source: str | None = None  # the peer address of the request
    issuer: str | None = None
    token_id: str | None = None  # `jti`, for the audit trail
    scopes: ScopeSet = field(default_factory=ScopeSet)
    patient: str | None = None  # patient context (`patient` or `fhirContext` claim)
    insecure_dev: bool = False
    system: bool = False  # the operator's own work (CLI, jobs): everything allowed
    authenticated: bool = False
    # Why a request was refused before any scope check (a missing, expired, forged token).
    failure: str | None = None

    # -- constructors ----------------------------------------------------------------------

    @classmethod
    def insecure(cls, source: str | None = None) -> Access:
        return cls(source=source, insecure_dev=True)

    @classmethod
    def anonymous(cls, source: str | None, failure: str, client_id: str | None = None) -> Access:
        return cls(client_id=client_id, source=source, failure=failure)

    @classmethod
    def from_claims(cls, claims: dict[str, Any], source: str | None) -> Access:
        """From the validated claims of an access token."""
        scope_claim = claims.get("scope", claims.get("scp"))
        client_id = claims.get("client_id") or claims.get("azp") or claims.get("cid")
        subject = claims.get("sub")
        return cls(
            client_id=str(client_id) if client_id else (str(subject) if subject else None),
            subject=str(subject) if subject and subject != client_id else None,
            source=source,
            issuer=claims.get("iss"),
            token_id=claims.get("jti"),
            scopes=parse_scopes(scope_claim),
            patient=patient_context(claims),
            authenticated=True,
        )

    # -- questions -------------------------------------------------------------------------

    @property
    def unrestricted(self) -> bool:
        return self.insecure_dev or self.system

    @property
    def patient_compartment(self) -> str | None:
        """The patient whose compartment limits this access: the token's patient context
        when all its resource scopes are patient-level (a user/ or system/ scope beside
        them reaches beyond; per type, `visibility` says exactly what is seen)."""
        if self.unrestricted or self.patient is None:
            return None
        if any(s.level != "patient" for s in self.usable_scopes()):
            return None
        return self.patient

    def allows_everything(self, letters: str) -> bool:
        """A scope on every type (`*`) with all of `letters`, not limited to a patient or by
        search parameters: what a route this server does not describe needs."""
        if self.unrestricted:
            return True
        return self.authenticated and any(
            s.resource_type == "*" and s.level != "patient" and not s.params
            and all(c in s.letters for c in letters)
            for s in self.usable_scopes()
        )

    def usable_scopes(self) -> tuple[Scope, ...]:
        """The resource scopes that grant something: patient/ ones only with a patient
        context (without one they would mean every patient)."""
        return tuple(
            s for s in self.scopes.resource if s.level != "patient" or self.patient is not None
        )

    def allows(self, resource_type: str, interaction: str) -> bool:
        if self.unrestricted:
            return True
        if not self.authenticated:
            return False
        letters = INTERACTION_LETTERS.get(interaction, interaction)
        return any(
            scope.grants(resource_type, letter)
            for scope in self._usable_for_writes(letters)
            for letter in letters
        )

    def _usable_for_writes(self, letters: str) -> tuple[Scope, ...]:
        # A granular scope's parameters are applied inside reads and searches only; for a
        # write they would have to be checked against the new content and the old, which
        # this server does not do: such a scope grants no write (closed, not guessed).
        scopes = self.usable_scopes()
        if set(letters) & set("cud"):
            scopes = tuple(s for s in scopes if not s.params)
        return scopes

    def allows_any(self, letter: str) -> bool:
        """Some scope grants `letter` on some type (operations that store nothing)."""
        if self.unrestricted:
            return True
        return self.authenticated and any(
            letter in s.letters for s in self._usable_for_writes(letter)
        )

    def require(self, resource_type: str, interaction: str) -> None:
        """Raise the FhirError to answer unless `interaction` on `resource_type` is allowed:
        401 without a valid token, 403 without a scope for it."""
        self.require_authenticated()
        if not self.allows(resource_type, interaction):
            raise forbidden(f"The access token grants no scope for {interaction} on "
                            f"{resource_type}")

    def require_authenticated(self) -> None:
        if self.unrestricted or self.authenticated:
            return
        failure = self.failure or NO_TOKEN
        raise unauthorized(failure, invalid_token=failure != NO_TOKEN)

    @property
    def visibility(self) -> Visibility | None:
        """Reads and searches as criteria for storage; None: everything is visible."""
        if self.unrestricted:
            return None
        grants: dict[str, dict[str, list[Grant]]] = {letter: {} for letter in "cruds"}
        for scope in self.usable_scopes():
            grant = Grant(self.patient if scope.level == "patient" else None, scope.params)
            for letter in "cruds":
                if letter in scope.letters:
                    grants[letter].setdefault(scope.resource_type, []).append(grant)
        frozen = {
            letter: {rtype: tuple(g) for rtype, g in by_type.items()}
            for letter, by_type in grants.items()
        }
        return Visibility(frozen, self.patient)

    def who(self) -> dict[str, str]:
        """Who, for logs and the audit trail (nothing identifying a patient)."""
        found = {
            "client": self.client_id,
            "user": self.subject,
            "address": self.source,
            "issuer": self.issuer,
        }
        return {k: v for k, v in found.items() if v}


SYSTEM = Access(system=True, authenticated=True, client_id="diatabase-system")


def patient_context(claims: dict[str, Any]) -> str | None:
    """The patient id of a SMART launch context: `patient`, or a Patient reference in
    `fhirContext` (SMART 2.1)."""
    patient = claims.get("patient")
    if isinstance(patient, str) and patient:
        return patient.removeprefix("Patient/")
    for item in claims.get("fhirContext") or ():
        reference = item.get("reference") if isinstance(item, dict) else None
        if isinstance(reference, str) and reference.startswith("Patient/"):
            return reference.removeprefix("Patient/")
    return None


def unauthorized(message: str, invalid_token: bool) -> FhirError:
    """401 with the challenge RFC 6750 asks for (`error="invalid_token"` when a token was
    given and refused)."""
    challenge = 'Bearer realm="diatabase"'
    if invalid_token:
        quoted = message.replace('"', "'")
        challenge += f', error="invalid_token", error_description="{quoted}"'
    return FhirError(401, [Issue("error", ISSUE_LOGIN, message)], {"WWW-Authenticate": challenge})


def forbidden(message: str) -> FhirError:
    challenge = 'Bearer realm="diatabase", error="insufficient_scope"'
    return FhirError(
        403, [Issue("error", ISSUE_FORBIDDEN, message)], {"WWW-Authenticate": challenge}
    )
