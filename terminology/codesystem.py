"""In-memory code systems: concepts with displays per language and a parent/child tree."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from terminology.text import word_index

PropertyValue = str | int | bool


@dataclass(slots=True)
class Concept:
    code: str
    display: str
    designations: dict[str, str] = field(default_factory=dict)  # language -> display
    parent: str | None = None
    children: list[str] = field(default_factory=list)
    status: str = "active"
    properties: dict[str, PropertyValue] = field(default_factory=dict)
    key: str = ""  # word index of code + displays (text.word_index), set by finalize()

    def display_in(self, language: str | None) -> str:
        if language:
            wanted = language.lower()
            for lang, text in self.designations.items():
                if lang.lower() == wanted or lang.lower().split("-")[0] == wanted.split("-")[0]:
                    return text
        return self.display


@dataclass
class CodeSystemData:
    """One version of one code system, fully in memory.

    `content` follows CodeSystem.content: `complete` when we hold the whole system,
    `fragment` for the subsets shipped in the repository.
    """

    url: str
    name: str
    title: str
    version: str | None
    language: str  # language of Concept.display
    content: str = "complete"
    publisher: str | None = None
    copyright: str | None = None
    source_note: str | None = None
    concepts: dict[str, Concept] = field(default_factory=dict)
    _descendants_cache: dict[str, frozenset[str]] = field(default_factory=dict, repr=False)

    def add(self, concept: Concept) -> None:
        if concept.display and self.language not in concept.designations:
            concept.designations[self.language] = concept.display
        self.concepts[concept.code] = concept

    def get(self, code: str) -> Concept | None:
        return self.concepts.get(code)

    def __contains__(self, code: object) -> bool:
        return code in self.concepts

    def __len__(self) -> int:
        return len(self.concepts)

    def __iter__(self) -> Iterator[Concept]:
        return iter(self.concepts.values())

    def finalize(self) -> CodeSystemData:
        """Link children to parents (a missing parent makes a root) and build search keys."""
        for concept in self.concepts.values():
            concept.children = []
        for concept in self.concepts.values():
            if concept.parent is not None and concept.parent not in self.concepts:
                concept.parent = None
            if concept.parent is not None:
                self.concepts[concept.parent].children.append(concept.code)
        for concept in self.concepts.values():
            self.refresh_key(concept)
        self._descendants_cache.clear()
        return self

    @staticmethod
    def refresh_key(concept: Concept) -> None:
        concept.key = word_index(
            [concept.code, concept.code.replace(".", ""), *concept.designations.values()]
        )

    def roots(self) -> list[str]:
        return [c.code for c in self.concepts.values() if c.parent is None]

    def ancestors(self, code: str) -> list[str]:
        """Ancestors from the parent up to the root."""
        out: list[str] = []
        concept = self.concepts.get(code)
        while concept is not None and concept.parent is not None:
            out.append(concept.parent)
            concept = self.concepts.get(concept.parent)
        return out

    def descendants(self, code: str) -> frozenset[str]:
        cached = self._descendants_cache.get(code)
        if cached is not None:
            return cached
        found: list[str] = []
        stack = list(self.concepts[code].children) if code in self.concepts else []
        while stack:
            current = stack.pop()
            found.append(current)
            stack.extend(self.concepts[current].children)
        result = frozenset(found)
        self._descendants_cache[code] = result
        return result

    def subsumes(self, ancestor: str, code: str) -> bool:
        return ancestor in self.ancestors(code)

    def merge(self, other: Iterable[Concept]) -> None:
        """Overlay concepts from a fuller table, keeping designations we already had.

        Used when an operator loads the full WHO ATC table: it has English names only, so
        the French names of the shipped subset are kept.
        """
        for concept in other:
            existing = self.concepts.get(concept.code)
            if existing is not None:
                for lang, text in existing.designations.items():
                    concept.designations.setdefault(lang, text)
                for name, value in existing.properties.items():
                    concept.properties.setdefault(name, value)
            self.add(concept)

    def to_resource(self, include_concepts: bool = True) -> dict:
        """The FHIR CodeSystem resource (concepts nested by hierarchy when included)."""
        resource: dict = {
            "resourceType": "CodeSystem",
            "id": self.name.lower().replace("_", "-"),
            "url": self.url,
            "name": self.name,
            "title": self.title,
            "status": "active",
            "content": self.content if include_concepts else "not-present",
            "caseSensitive": True,
            "hierarchyMeaning": "is-a",
            "count": len(self.concepts),
            "language": self.language,
        }
        if self.version:
            resource["version"] = self.version
        if self.publisher:
            resource["publisher"] = self.publisher
        if self.copyright:
            resource["copyright"] = self.copyright
        declared = self._property_types()
        if declared:
            # FHIR wants every concept property code declared on the CodeSystem.
            resource["property"] = [{"code": n, "type": t} for n, t in declared.items()]
        if include_concepts:
            resource["concept"] = [self._concept_resource(code) for code in self.roots()]
        return resource

    def _property_types(self) -> dict[str, str]:
        types: dict[str, str] = {}
        for concept in self.concepts.values():
            for name, value in concept.properties.items():
                if name not in types:
                    types[name] = ("boolean" if isinstance(value, bool)
                                   else "integer" if isinstance(value, int) else "string")
            if concept.status != "active":
                types.setdefault("status", "code")
        return types

    def _concept_resource(self, code: str) -> dict:
        concept = self.concepts[code]
        out: dict = {"code": concept.code, "display": concept.display}
        others = [
            {"language": lang, "value": text}
            for lang, text in concept.designations.items()
            if lang != self.language
        ]
        if others:
            out["designation"] = others
        props = [_property_entry(name, value) for name, value in concept.properties.items()]
        if concept.status != "active":
            props.append({"code": "status", "valueCode": concept.status})
        if props:
            out["property"] = props
        if concept.children:
            out["concept"] = [self._concept_resource(child) for child in concept.children]
        return out


def _property_entry(name: str, value: PropertyValue) -> dict:
    if isinstance(value, bool):
        return {"code": name, "valueBoolean": value}
    if isinstance(value, int):
        return {"code": name, "valueInteger": value}
    return {"code": name, "valueString": value}
