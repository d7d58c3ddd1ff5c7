"""The server's services wired together: what `create_app` builds and the API calls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fhir_server.analytics.stored import check_view_definition, view_search_parameters
from fhir_server.audit import AuditedStorage, open_trail
from fhir_server.clinical.indexes import IndexedStorage
from fhir_server.model import jsonio
from fhir_server.model.jsonio import fragment
from fhir_server.model.outcome import Issue, error
from fhir_server.model.validation import validate_structure
from fhir_server.search.errors import SearchError
from fhir_server.search.extract import IndexExtractor
from fhir_server.search.query import parse_search
from fhir_server.search.registry import SearchParamRegistry
from fhir_server.service.bundles import BundleProcessor
from fhir_server.service.resources import ResourceService, Validator
from fhir_server.service.search import SearchService
from fhir_server.service.search_definitions import check_search_definitions
from fhir_server.service.terminology import ServerTerminology
from fhir_server.settings import Settings
from fhir_server.storage.base import Storage
from fhir_server.storage.scoped import ScopedStorage
from fhir_server.subscriptions.manager import Subscriptions
from fhir_server.subscriptions.outbox import OutboxStorage
from profiles import (
    CANONICAL_BASE,
    CoreValidator,
    ProfileIssue,
    ProfileValidator,
    RequiredProfiles,
    RuleError,
    load_search_parameters,
)

# Result parameters a conditional URL may carry: they shape the response, not the match.
NOT_CRITERIA = ("_format", "_pretty")


class FhirService:
    def __init__(
        self,
        storage: Storage,
        settings: Settings,
        registry: SearchParamRegistry | None = None,
        validators: Sequence[Validator] = (),
        canonicalize: Any = None,
        terminology: ServerTerminology | None = None,
        profiles: ProfileValidator | None = None,
    ) -> None:
        self.storage = storage
        self.settings = settings
        self.registry = registry or SearchParamRegistry.default()
        for search_parameter in [*load_search_parameters(), *view_search_parameters()]:
            self.registry.add(search_parameter)
        # Terminology hooks: :below/:above/:in/:not-in and cross-unit quantity search in
        # storage, canonical UCUM forms at extraction, and ValueSets / ConceptMaps written
        # through the API registered into the terminology service once committed.
        self.terminology = terminology or ServerTerminology(
            getattr(settings, "terminology_dir", None)
        )
        self.terminology.attach(storage)
        if canonicalize is None:
            canonicalize = self.terminology.canonicalize
        # Absolute references to our own base index like relative ones.
        local_bases = (settings.base_url,) if settings.base_url else ()
        if hasattr(storage, "limits"):
            storage.limits = settings.limits  # type: ignore[attr-defined]
        share_rows = getattr(storage, "shares_rows", False)
        if share_rows:
            storage.pid_codes = self.registry.pid_codes  # type: ignore[attr-defined]
        if hasattr(storage, "owner_codes"):
            storage.owner_codes = self.registry.owner_codes  # type: ignore[attr-defined]
        self.extractor = IndexExtractor(
            self.registry,
            canonicalize=canonicalize,
            local_bases=local_bases,
            share_rows=share_rows,
            fulltext=True,
        )
        # Profiles: what a resource claims in meta.profile, and what the operator's rules
        # require of it, must conform before anything is stored.
        live_terminology = _LiveTerminology(self.terminology)
        self.profiles = profiles or ProfileValidator(live_terminology)  # type: ignore[arg-type]
        self.required_profiles = RequiredProfiles.from_pairs(
            settings.require_profiles,
            live_terminology,  # type: ignore[arg-type]
        )
        for rule in self.required_profiles.rules:
            if not self.profiles.knows(rule.profile):
                # fail at start, not on every write
                raise RuleError(f"a profile rule requires {rule.profile}, which is not loaded")
        # A ViewDefinition's FHIRPath and columns are checked on every write of one.
        validators = [check_view_definition, *validators]
        # Definitions naming a core SearchParameter must agree with it.
        validators = [check_search_definitions, *validators]
        if settings.validate_profiles:
            validators = [*validators, self.check_profiles]
        # What a request may see and write (its access token's scopes and patient context)
        # is applied by this wrapper inside every storage call the services make; the
        # audited storage around it records what was read and written (audit/audited.py).
        self.audit = open_trail(storage, getattr(settings, "audit", True))
        # Under both: the clinical indexes kept in every write transaction
        # (clinical/indexes.py: the codes $lastn groups by, the CGM daily aggregates).
        self.indexed = IndexedStorage(storage)
        # ... and the subscriptions' outbox (subscriptions/outbox.py): the events of every
        # write appended in its own transaction.
        self.subscriptions = Subscriptions(storage, self.registry, settings)
        outbox = OutboxStorage(self.indexed, self.subscriptions)
        scoped = ScopedStorage(outbox, self.registry, self.extractor.extract)
        self.storage = AuditedStorage(scoped, self.audit)
        # The R4 core rules: on every write unless the operator turns them off.
        self.core = CoreValidator(
            live_terminology,
            unknown_extensions=getattr(settings, "unknown_extensions", "warn"),
            html_in_text=getattr(settings, "html_in_text", "allow"),
        )
        validators = [*validators, self.subscriptions.check]
        mode = getattr(settings, "validation", "strict")
        self.resources = ResourceService(
            self.terminology.observe(self.storage),
            self.extractor.extract,
            self._parse_conditional,
            validators,
            core=self.check_core if mode != "off" else None,
            lenient=mode == "lenient",
        )
        self.subscriptions.resources = self.resources
        self.search = SearchService(self.storage, self.registry, settings)

    # -- profiles --------------------------------------------------------------------------

    def check_core(self, resource: dict[str, Any]) -> list[Issue]:
        """The R4 core rules (`profiles.CoreValidator`) as server Issues."""
        return [Issue(i.severity, i.code, i.message, (i.expression,))
                for i in self.core.validate(resource)]

    def profiles_for(self, resource: dict[str, Any]) -> list[str]:
        """The profiles `resource` must conform to: those it claims, then those required."""
        claimed = ProfileValidator.claimed_profiles(resource)
        required = self.required_profiles.profiles_for(resource) if self.required_profiles else []
        return list(dict.fromkeys([*claimed, *required]))

    def check_profiles(self, resource: dict[str, Any]) -> list[Issue]:
        """The validator run on every write (after the base structure check)."""
        wanted = self.profiles_for(resource)
        if not wanted:
            return []
        return self._profile_check(resource, wanted)

    def _profile_check(self, resource: dict[str, Any], wanted: list[str]) -> list[Issue]:
        # A profile the server does not hold cannot be checked. Claims of foreign profiles
        # (US Core, vitalsigns, ...) are common in real data: a warning unless the operator
        # says reject; an unknown profile under our own canonical base is surely a typo.
        known = [p for p in wanted if self.profiles.knows(p)]
        found = self.profiles.validate(resource, known) if known else []
        for url in wanted:
            if url in known:
                continue
            ours = url.startswith(f"{CANONICAL_BASE}/")
            reject = ours or self.settings.unknown_profiles == "reject"
            found.extend(
                self.profiles.validate(resource, [url])
                if reject
                else [
                    ProfileIssue(
                        "warning",
                        "not-supported",
                        f"{resource.get('resourceType')}.meta.profile",
                        f"The profile {url} is not known to this server: not checked",
                    )
                ]
            )
        return profile_issues(resource, found, wanted)

    def validate_resource(self, resource: Any, profiles: Sequence[str] = ()) -> list[Issue]:
        """$validate: structure, claimed and required profiles, plus `profiles`."""
        issues = self.resources.validate(resource)
        if not isinstance(resource, dict):
            return issues
        checked = jsonio.plain(resource)  # validators take builtin floats
        if self.resources.core is None and not validate_structure(checked):
            issues = [*issues, *self.check_core(checked)]
        if not self.settings.validate_profiles and not validate_structure(checked):
            issues = [*issues, *self.check_profiles(checked)]
        extra = [p for p in profiles if p not in self.profiles_for(checked)]
        if extra and not validate_structure(checked):
            issues.extend(self._profile_check(checked, extra))
        return issues

    def _parse_conditional(self, resource_type: str, items: list[tuple[str, str]]) -> Any:
        """Conditional interactions must never ignore a criterion: parse strictly, and
        refuse result parameters (`_count`, `_sort`, ...), which select nothing."""
        try:
            query = parse_search(resource_type, items, self.registry, True, self.settings.limits)
        except SearchError as exc:
            raise error(400, exc.code, f"Invalid search criteria: {exc}") from None
        result_params = [k for k, _ in query.result.self_link_items() if k not in NOT_CRITERIA]
        if result_params:
            raise error(
                400,
                "invalid",
                f"Invalid search criteria: {', '.join(result_params)} selects no resource and "
                "has no meaning in a conditional interaction",
                result_params[0],
            )
        if not query.clauses:
            raise error(400, "invalid", "Invalid search criteria: no search parameter given")
        return query

    def bundles(self, base_url: str) -> BundleProcessor:
        return BundleProcessor(self.resources, base_url)

    def search_bundle(
        self, resource_type: str | None, items: list[tuple[str, str]], base_url: str, strict: bool
    ) -> dict[str, Any]:
        return self.search.bundle(resource_type, items, base_url, strict)

    def get_for_bundle(
        self, url: str, items: list[tuple[str, str]], base_url: str
    ) -> tuple[int, Any]:
        """GET entries of a batch/transaction: read, vread or search."""
        parts = [p for p in url.split("/") if p]
        if len(parts) == 1:
            self.resources.check_type(parts[0])
            return 200, self.search_bundle(parts[0], items, base_url, strict=False)
        if len(parts) == 2:
            stored = self.resources.read(parts[0], parts[1])
            return 200, fragment(stored.json) if stored.json else None
        if len(parts) == 4 and parts[2] == "_history":
            stored = self.resources.vread(parts[0], parts[1], parts[3])
            return 200, fragment(stored.json) if stored.json else None
        raise error(400, "not-supported", f"GET {url} is not supported in a Bundle")


def profile_issues(
    resource: dict[str, Any], found: list[ProfileIssue], profiles: Sequence[str]
) -> list[Issue]:
    """ProfileIssues as server Issues; a summary issue (code `processing`) comes first when
    there are errors, so a well-formed resource that breaks a profile is a 422."""
    issues = [Issue(i.severity, i.code, i.message, (i.expression,)) for i in found]
    errors = [i for i in found if i.severity in ("error", "fatal")]
    if errors:
        resource_type = resource.get("resourceType", "resource")
        names = ", ".join(p.split("|")[0].rsplit("/", 1)[-1] for p in profiles)
        summary = Issue(
            "error",
            "processing",
            f"The {resource_type} does not conform to {names}: {len(errors)} "
            f"problem{'s' if len(errors) > 1 else ''} (listed below)",
            (resource_type,),
        )
        issues.insert(0, summary)
    return issues


class _LiveTerminology:
    """The terminology service as it is now: the server rebuilds it when an operator
    deletes a ValueSet, and the profile validator must see the current one."""

    def __init__(self, server_terminology: ServerTerminology) -> None:
        self._server = server_terminology

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server.service, name)
