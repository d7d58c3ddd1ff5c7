"""SMART App Launch scopes (2.x, with the 1.x forms) parsed into values.

`patient/Observation.rs?category=laboratory` -> Scope("patient", "Observation", "rs",
(("category", "laboratory"),)). The 1.x suffixes map as SMART 2 says: `read` -> `rs`,
`write` -> `cud`, `*` -> `cruds`. Scopes that are not about resources (`openid`,
`fhirUser`, `launch/patient`, `offline_access`, ...) are kept apart as `other`; a resource
scope that does not parse grants nothing (never a guess).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from fhir_server.audit.protection import AUDIT_TYPE

LEVELS = ("patient", "user", "system")
# Types a wildcard scope does not grant: `system/AuditEvent.rs` or `user/AuditEvent.rs` only.
NAMED_ONLY = frozenset({AUDIT_TYPE})
LETTERS = "cruds"
V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}

_RESOURCE_SCOPE = re.compile(
    r"(?P<level>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]{1,63})\."
    r"(?P<perm>read|write|\*|c?r?u?d?s?)(?:\?(?P<query>.+))?"
)


@dataclass(frozen=True, slots=True)
class Scope:
    """One resource scope: level, resource type (`*` for all), permitted letters (a subset
    of `cruds`, in that order) and, for a granular scope, its search parameters."""

    level: str
    resource_type: str
    letters: str
    params: tuple[tuple[str, str], ...] = ()

    def grants(self, resource_type: str, letter: str) -> bool:
        if resource_type in NAMED_ONLY:
            # The audit trail names every patient and client: only a user/ or system/ scope
            # naming it grants it (no `*`, no patient/ scope, no granular scope, which its
            # store would not apply).
            return (
                letter in self.letters
                and self.resource_type == resource_type
                and self.level != "patient"
                and not self.params
            )
        return letter in self.letters and self.resource_type in ("*", resource_type)

    def __str__(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in self.params)
        return f"{self.level}/{self.resource_type}.{self.letters}" + (f"?{query}" if query else "")


@dataclass(frozen=True, slots=True)
class ScopeSet:
    """The scopes of a token: the resource scopes that parsed, the others as given."""

    resource: tuple[Scope, ...] = ()
    other: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return " ".join([*(str(s) for s in self.resource), *self.other])

    def levels(self) -> set[str]:
        return {s.level for s in self.resource}


def parse_scope(text: str) -> Scope | None:
    """One resource scope, or None when `text` is not one (or is malformed)."""
    found = _RESOURCE_SCOPE.fullmatch(text)
    if found is None:
        return None
    perm = found["perm"]
    letters = V1_PERMISSIONS.get(perm, perm)
    if not letters:
        return None  # `patient/Observation.` grants nothing
    params: tuple[tuple[str, str], ...] = ()
    if found["query"]:
        params = tuple(parse_qsl(found["query"], keep_blank_values=True))
        if not params:
            return None
    return Scope(found["level"], found["type"], letters, params)


def parse_scopes(text: str | list[str] | None) -> ScopeSet:
    """A space-separated `scope` claim (or a list, as some issuers send `scp`)."""
    words = text.split() if isinstance(text, str) else list(text or [])
    resource, other = [], []
    for word in words:
        if not isinstance(word, str):
            continue
        scope = parse_scope(word)
        if scope is not None:
            resource.append(scope)
        elif not _looks_like_resource_scope(word):
            other.append(word)
    return ScopeSet(tuple(resource), tuple(other))


def _looks_like_resource_scope(word: str) -> bool:
    head = word.split("/", 1)[0]
    return head in LEVELS and "." in word


def narrowed(requested: ScopeSet, allowed: ScopeSet) -> ScopeSet:
    """The requested scopes an operator allowed (for the token endpoint): each requested
    scope kept with the letters some allowed scope of the same level and type (or `*`)
    grants, granular parameters only when the allowed scope has the same or none."""
    kept: list[Scope] = []
    for want in requested.resource:
        letters = ""
        for have in allowed.resource:
            if have.level != want.level:
                continue
            if have.resource_type != "*" and have.resource_type != want.resource_type:
                continue
            if have.params and have.params != want.params:
                continue
            letters += have.letters
        granted = "".join(c for c in LETTERS if c in want.letters and c in letters)
        if granted:
            kept.append(Scope(want.level, want.resource_type, granted, want.params))
    return ScopeSet(tuple(kept), ())
