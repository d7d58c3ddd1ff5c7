"""TerminologyService: the logic behind CodeSystem/$lookup, $validate-code, $subsumes,
ValueSet/$expand, $validate-code and ConceptMap/$translate, plus the hierarchy and
value-set helpers the search engine needs for :below, :above, :in and :not-in.

Every method takes already-parsed inputs and returns a FHIR resource as a dict (or a
plain set for the search helpers); bad requests raise TerminologyError. Code systems load
lazily on first use; results that are costly to compute (expansions, value-set code sets,
derived ConceptMaps) are cached and dropped when an operator adds a resource.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from terminology import atc as atc_module
from terminology import store
from terminology.cim10 import load_shipped_cim10, new_cim10_system
from terminology.codesystem import CodeSystemData, Concept
from terminology.conceptmaps import NO_MATCH, MapIndex, atc_parent_map, cim10_icd10_maps
from terminology.errors import TerminologyError, invalid, not_found
from terminology.icd10 import load_icd10
from terminology.loinc import load_loinc_subset
from terminology.parameters import param, parameters, part
from terminology.text import search_key
from terminology.ucum import load_ucum_units
from terminology.uris import ATC, CIM10, ICD10, LOINC, UCUM
from terminology.valuesets import Evaluator, Member, MemberIndex

VALUE_SET_DIR = Path(__file__).parent / "data" / "valuesets"
# Code systems small enough to return with all their concepts in CodeSystem reads.
INLINE_CONCEPT_LIMIT = 2000


class TerminologyService:
    _default: ClassVar[TerminologyService | None] = None
    _default_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, data_dir: Path | str | None = None) -> None:
        self._data_dir = Path(data_dir) if data_dir else None
        self._lock = threading.RLock()
        self._loaders: dict[str, Callable[[], CodeSystemData]] = {
            ICD10: self._load_icd10,
            CIM10: self._load_cim10,
            ATC: self._load_atc,
            LOINC: load_loinc_subset,
            UCUM: load_ucum_units,
        }
        self._systems: dict[str, CodeSystemData] = {}
        self._value_sets: dict[str, dict] = {}
        self._added_maps: dict[str, dict] = {}
        self._derived_maps: dict[str, dict] | None = None
        self._map_index: dict[str, MapIndex] | None = None
        self._expansions: dict[str, MemberIndex] = {}
        self._code_sets: dict[str, frozenset[tuple[str, str]]] = {}
        self._evaluator = Evaluator(
            self._system_or_none, lambda url: self._value_sets.get(_strip_version(url))
        )
        for path in sorted(VALUE_SET_DIR.glob("*.json")):
            self.add_value_set(json.loads(path.read_text(encoding="utf-8")))

    @classmethod
    def default(cls) -> TerminologyService:
        """One shared instance, reading DIATABASE_TERMINOLOGY_DIR the first time."""
        with cls._default_lock:
            if cls._default is None:
                cls._default = cls(store.data_dir_from_env())
            return cls._default

    @classmethod
    def reset_default(cls) -> None:
        """Forget the shared instance (tests, or after `terminology load`)."""
        with cls._default_lock:
            cls._default = None

    # ---- code systems -------------------------------------------------------------

    def _saved(self, kind: str) -> Path | None:
        if self._data_dir is None:
            return None
        path = self._data_dir / store.FILE_NAMES[kind]
        return path if path.exists() else None

    def _load_icd10(self) -> CodeSystemData:
        icd10 = load_icd10()
        # WHO ICD-10 is English only; CIM-10 FR is its French edition, so a code both
        # share gets the CIM-10 label as its French designation.
        cim10 = self.system(CIM10)
        for concept in icd10:
            french = cim10.get(concept.code)
            if french is not None:
                concept.designations.setdefault("fr", french.display)
                CodeSystemData.refresh_key(concept)
        return icd10

    def _load_cim10(self) -> CodeSystemData:
        saved = self._saved("cim10")
        if saved is None:
            return load_shipped_cim10()
        return store.load_into(new_cim10_system(None, "complete"), saved)

    def _load_atc(self) -> CodeSystemData:
        saved = self._saved("atc")
        if saved is None:
            return atc_module.load_shipped_atc()
        concepts, version = store.saved_concepts(saved, ATC)
        return atc_module.merged_atc(concepts, version or "loaded")

    def _system_or_none(self, url: str) -> CodeSystemData | None:
        url = _strip_version(url)
        loaded = self._systems.get(url)
        if loaded is not None:
            return loaded
        loader = self._loaders.get(url)
        if loader is None:
            return None
        with self._lock:
            if url not in self._systems:
                self._systems[url] = loader()
            return self._systems[url]

    def system(self, url: str, version: str | None = None) -> CodeSystemData:
        if not isinstance(url, str) or not url:
            raise invalid("a code system URL is required")
        system = self._system_or_none(url)
        if system is None:
            raise not_found(f"code system '{url}' is not known to this server")
        if version and system.version and version != system.version:
            raise not_found(
                f"version '{version}' of code system '{url}' is not available "
                f"(this server has '{system.version}')"
            )
        return system

    def known_system(self, url: str) -> bool:
        return _strip_version(url) in self._loaders

    def replace_system(self, system: CodeSystemData) -> None:
        """Swap in another table of a known system (tests, or a reload after `load`)."""
        with self._lock:
            self._systems[system.url] = system
            self._invalidate(maps=True)

    def code_systems(self) -> list[dict]:
        return [self.code_system(url) for url in self._loaders]

    def code_system(self, url: str) -> dict:
        system = self.system(url)
        return system.to_resource(include_concepts=len(system) <= INLINE_CONCEPT_LIMIT)

    # ---- CodeSystem operations ----------------------------------------------------

    def _concept(self, system: CodeSystemData, code: str) -> Concept:
        if not isinstance(code, str) or not code:
            raise invalid("a code is required")
        concept = system.get(code)
        if concept is None:
            raise not_found(f"code '{code}' is not in code system '{system.url}'")
        return concept

    def lookup(
        self,
        system: str,
        code: str,
        version: str | None = None,
        display_language: str | None = None,
        properties: Iterable[str] | None = None,
    ) -> dict:
        """CodeSystem/$lookup. An unknown code is an error (404), as $lookup has no
        result flag."""
        cs = self.system(system, version)
        concept = self._concept(cs, code)
        wanted = set(properties) if properties else None
        out = [
            param("name", cs.title),
            param("version", cs.version) if cs.version else {},
            param("display", concept.display_in(display_language)),
        ]
        for language, text in concept.designations.items():
            out.append(part("designation", param("language", language, "valueCode"),
                            param("value", text)))
        props: list[tuple[str, Any, str | None]] = []
        if concept.parent is not None:
            parent_concept = cs.concepts[concept.parent]
            props.append(("parent", concept.parent, parent_concept.display))
        for child in concept.children:
            props.append(("child", child, cs.concepts[child].display))
        props.append(("inactive", concept.status != "active", None))
        props.extend((name, value, None) for name, value in concept.properties.items())
        for name, value, description in props:
            if wanted is not None and name not in wanted:
                continue
            kind = "valueCode" if name in ("parent", "child") else None
            entries = [param("code", name, "valueCode"), param("value", value, kind)]
            if description:
                entries.append(param("description", description))
            out.append(part("property", *entries))
        return parameters(*out)

    def validate_code(
        self, system: str, code: str, display: str | None = None, version: str | None = None
    ) -> dict:
        """CodeSystem/$validate-code: result=false (not an error) for an unknown code or a
        display that is none of the concept's designations."""
        cs = self.system(system, version)
        if not isinstance(code, str) or not code:
            raise invalid("a code is required")
        concept = cs.get(code)
        if concept is None:
            message = f"Unknown code '{code}' in code system '{cs.url}'"
            if cs.content == "fragment":
                message += " (this server holds only part of that code system)"
            return parameters(param("result", False), param("message", message))
        return self._display_check(concept, display, f"{cs.url}#{code}")

    @staticmethod
    def _display_check(concept: Concept, display: str | None, where: str) -> dict:
        if display is not None and not _display_matches(concept, display):
            valid = " | ".join(dict.fromkeys(concept.designations.values()))
            return parameters(
                param("result", False),
                param("message", f"Display '{display}' is not valid for {where}: "
                                 f"expected one of: {valid}"),
                param("display", concept.display),
            )
        return parameters(param("result", True), param("display", concept.display))

    def subsumes(self, system: str, code_a: str, code_b: str, version: str | None = None) -> dict:
        """CodeSystem/$subsumes. Both codes must exist (else TerminologyError)."""
        cs = self.system(system, version)
        for code in (code_a, code_b):
            if not isinstance(code, str) or code not in cs:
                raise invalid(f"code '{code}' is not in code system '{cs.url}'")
        if code_a == code_b:
            outcome = "equivalent"
        elif cs.subsumes(code_a, code_b):
            outcome = "subsumes"
        elif cs.subsumes(code_b, code_a):
            outcome = "subsumed-by"
        else:
            outcome = "not-subsumed"
        return parameters(param("outcome", outcome, "valueCode"))

    # ---- search helpers -----------------------------------------------------------

    def descendants(self, system: str, code: str, include_self: bool = True) -> set[str]:
        """Codes below `code` (for :below). A code the system does not hold only matches
        itself, so an exact match still works on a partial table."""
        cs = self.system(system)
        found = set(cs.descendants(code)) if code in cs else set()
        if include_self:
            found.add(code)
        return found

    def ancestors(self, system: str, code: str, include_self: bool = True) -> set[str]:
        """Codes above `code` (for :above)."""
        cs = self.system(system)
        found = set(cs.ancestors(code)) if code in cs else set()
        if include_self:
            found.add(code)
        return found

    def value_set_codes(self, url: str) -> frozenset[tuple[str, str]]:
        """All (system, code) pairs of a ValueSet (for :in and :not-in)."""
        cached = self._code_sets.get(url)
        if cached is None:
            cached = frozenset((m.system, m.code) for m in self._members(url))
            self._code_sets[url] = cached
        return cached

    # ---- ValueSets ----------------------------------------------------------------

    def add_value_set(self, resource: dict) -> dict:
        """Register a ValueSet (a POSTed one, or a shipped one). Needs url and compose."""
        if not isinstance(resource, dict) or resource.get("resourceType") != "ValueSet":
            raise invalid("not a ValueSet resource")
        url = resource.get("url")
        if not isinstance(url, str) or not url:
            raise invalid("a ValueSet needs a url to be used by the terminology service")
        if not isinstance((resource.get("compose") or {}).get("include"), list):
            raise invalid(f"ValueSet '{url}' needs compose.include")
        with self._lock:
            self._value_sets[url] = resource
            self._invalidate(maps=False)
        return resource

    def value_sets(self) -> list[dict]:
        return list(self._value_sets.values())

    def value_set(self, url: str) -> dict:
        resource = self._value_sets.get(_strip_version(url))
        if resource is None:
            raise not_found(f"ValueSet '{url}' is not known to this server")
        return resource

    def _index(self, url: str) -> MemberIndex:
        cached = self._expansions.get(url)
        if cached is None:
            members = self._evaluator.implicit_members(url)
            if members is None:
                members = self._evaluator.members(self.value_set(url))
            cached = self._expansions[url] = MemberIndex(members)
        return cached

    def _members(self, url: str) -> list[Member]:
        return self._index(url).members

    def expand(
        self,
        url_or_valueset: str | dict,
        filter: str | None = None,  # noqa: A002 - the FHIR parameter name
        offset: int = 0,
        count: int | None = None,
        display_language: str | None = None,
    ) -> dict:
        """ValueSet/$expand: `filter` (every word, accent- and case-insensitive, on code
        and displays) is applied before paging; count=0 returns the total only."""
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise invalid("offset must be a non-negative integer")
        if count is not None and (not isinstance(count, int) or isinstance(count, bool)
                                  or count < 0):
            raise invalid("count must be a non-negative integer")
        if isinstance(url_or_valueset, dict):
            if url_or_valueset.get("resourceType") != "ValueSet":
                raise invalid("the valueSet to expand must be a ValueSet resource")
            resource = url_or_valueset
            index = MemberIndex(self._evaluator.members(resource))
        elif isinstance(url_or_valueset, str) and url_or_valueset:
            index = self._index(_strip_version(url_or_valueset))
            resource = self._value_sets.get(_strip_version(url_or_valueset)) or {
                "resourceType": "ValueSet", "url": url_or_valueset, "status": "active",
            }
        else:
            raise invalid("$expand needs a ValueSet url or a ValueSet resource")
        matched = index.filter(filter)
        page = matched[offset:] if count is None else matched[offset: offset + count]
        expansion: dict[str, Any] = {
            "identifier": f"urn:uuid:{uuid.uuid4()}",
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "total": len(matched),
            "offset": offset,
        }
        used = [("filter", filter, "valueString"), ("offset", offset, "valueInteger"),
                ("count", count, "valueInteger"),
                ("displayLanguage", display_language, "valueCode")]
        expansion["parameter"] = [
            {"name": name, kind: value} for name, value, kind in used if value is not None
        ]
        if page:
            expansion["contains"] = [self._contains(m, display_language) for m in page]
        out = {k: v for k, v in resource.items() if k not in ("compose", "text", "expansion")}
        out["expansion"] = expansion
        return out

    def _contains(self, member: Member, display_language: str | None) -> dict:
        entry = {"system": member.system, "code": member.code,
                 "display": member.concept.display_in(display_language)}
        system = self._systems.get(member.system)
        if system is not None and system.version:
            entry["version"] = system.version
        return entry

    def validate_code_in_value_set(
        self, url: str, system: str | None, code: str, display: str | None = None
    ) -> dict:
        """ValueSet/$validate-code. Without `system`, the code must be unambiguous."""
        if not isinstance(code, str) or not code:
            raise invalid("a code is required")
        members = self._members(_strip_version(url))
        candidates = [m for m in members if m.code == code and (system is None
                                                                 or m.system == system)]
        if len(candidates) != 1:
            where = f"{system}#{code}" if system else code
            if len(candidates) > 1:
                message = f"code '{code}' is in several systems of '{url}': give the system"
            else:
                message = f"{where} is not in ValueSet '{url}'"
            return parameters(param("result", False), param("message", message))
        member = candidates[0]
        return self._display_check(member.concept, display, f"{member.system}#{code}")

    # ---- ConceptMaps --------------------------------------------------------------

    def add_concept_map(self, resource: dict) -> dict:
        index = MapIndex(resource)  # validates before anything is stored
        if not index.url:
            raise invalid("a ConceptMap needs a url to be used by the terminology service")
        with self._lock:
            self._added_maps[index.url] = resource
            self._map_index = None
        return resource

    def _derived(self) -> dict[str, dict]:
        if self._derived_maps is None:
            with self._lock:
                to_icd, to_cim = cim10_icd10_maps(self.system(CIM10), self.system(ICD10))
                atc_map = atc_parent_map(self.system(ATC))
                self._derived_maps = {m["url"]: m for m in (to_icd, to_cim, atc_map)}
        return self._derived_maps

    def _indexes(self) -> dict[str, MapIndex]:
        if self._map_index is None:
            with self._lock:
                all_maps = {**self._derived(), **self._added_maps}
                self._map_index = {url: MapIndex(m) for url, m in all_maps.items()}
        return self._map_index

    def concept_maps(self) -> list[dict]:
        return [*self._derived().values(), *self._added_maps.values()]

    def concept_map(self, url: str) -> dict:
        found = self._added_maps.get(url) or self._derived().get(url)
        if found is None:
            raise not_found(f"ConceptMap '{url}' is not known to this server")
        return found

    def translate(
        self,
        url: str | None = None,
        system: str | None = None,
        code: str | None = None,
        target: str | None = None,
        reverse: bool = False,
    ) -> dict:
        """ConceptMap/$translate over one map (`url`) or every map that fits.

        With reverse=True, `system|code` is looked up among the maps' targets and the
        matching sources are returned, with wider/narrower swapped. `target` restricts
        the system of the answers.
        """
        if not system or not code:
            raise invalid("$translate needs a system and a code")
        indexes = self._indexes()
        if url is not None:
            if url not in indexes:
                raise not_found(f"ConceptMap '{url}' is not known to this server")
            chosen = [indexes[url]]
        else:
            chosen = list(indexes.values())
        matches = [
            mapping
            for index in chosen
            for mapping in index.lookup(system, code, reverse)
            if target is None or mapping.system == target
        ]
        good = [m for m in matches if m.equivalence not in NO_MATCH]
        out = [param("result", bool(good))]
        if not good:
            out.append(param("message", f"no mapping found for {system}#{code}"))
        for mapping in matches:
            coding = {"system": mapping.system, "code": mapping.code}
            if mapping.display:
                coding["display"] = mapping.display
            entries = [param("equivalence", mapping.equivalence, "valueCode"),
                       param("concept", coding, "valueCoding")]
            if mapping.map_url:
                entries.append(param("source", mapping.map_url, "valueUri"))
            if mapping.comment:
                entries.append(param("comment", mapping.comment))
            out.append(part("match", *entries))
        return parameters(*out)

    # ---- cache housekeeping -------------------------------------------------------

    def _invalidate(self, maps: bool) -> None:
        self._expansions.clear()
        self._code_sets.clear()
        if maps:
            self._derived_maps = None
            self._map_index = None


def _strip_version(url: str) -> str:
    """Canonical references may carry a version (`url|version`); we hold one version."""
    return url.split("|", 1)[0] if isinstance(url, str) else url


def _display_matches(concept: Concept, display: str) -> bool:
    wanted = search_key(display)
    return any(search_key(text) == wanted for text in concept.designations.values())


__all__ = ["TerminologyService", "TerminologyError"]
