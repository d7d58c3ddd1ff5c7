"""The server's services wired together: what `create_app` builds and the API calls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fhir_server.model.jsonio import fragment
from fhir_server.model.outcome import error
from fhir_server.search.errors import SearchError
from fhir_server.search.extract import IndexExtractor
from fhir_server.search.query import parse_search
from fhir_server.search.registry import SearchParamRegistry
from fhir_server.service.bundles import BundleProcessor
from fhir_server.service.resources import ResourceService, Validator
from fhir_server.service.search import SearchService
from fhir_server.settings import Settings
from fhir_server.storage.base import Storage


class FhirService:
    def __init__(
        self,
        storage: Storage,
        settings: Settings,
        registry: SearchParamRegistry | None = None,
        validators: Sequence[Validator] = (),
        canonicalize: Any = None,
    ) -> None:
        self.storage = storage
        self.settings = settings
        self.registry = registry or SearchParamRegistry.default()
        # Absolute references to our own base index like relative ones.
        local_bases = (settings.base_url,) if settings.base_url else ()
        self.extractor = IndexExtractor(
            self.registry, canonicalize=canonicalize, local_bases=local_bases
        )
        self.resources = ResourceService(
            storage, self.extractor.extract, self._parse_conditional, validators
        )
        self.search = SearchService(storage, self.registry, settings)

    def _parse_conditional(self, resource_type: str, items: list[tuple[str, str]]) -> Any:
        """Conditional interactions must never ignore a criterion: parse strictly."""
        try:
            return parse_search(resource_type, items, self.registry, strict=True)
        except SearchError as exc:
            raise error(400, "invalid", f"Invalid search criteria: {exc}") from None

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
