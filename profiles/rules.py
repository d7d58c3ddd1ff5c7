"""Operator rules that require profiles: "every Observation whose code is in the glucose
ValueSet must conform to BloodGlucose".

A rule is a pair (criteria, profile url). Criteria, in a FHIR search-like form:
- `Observation`: every resource of that type;
- `Observation?code:in=https://diatabase.org/fhir/ValueSet/glucose-codes`: those whose
  `code` (a CodeableConcept) has a coding in the ValueSet;
- `Observation?code=http://loinc.org|2339-0`: those with that coding.
Rules are read from JSON: a list of {"criteria": ..., "profile": ...} objects.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from terminology import TerminologyService


class RuleError(ValueError):
    """A rule that cannot be understood (names which and why)."""


@dataclass(frozen=True, slots=True)
class ProfileRule:
    resource_type: str
    profile: str
    value_set: str | None = None
    coding: tuple[str | None, str] | None = None  # (system or None, code)

    @classmethod
    def parse(cls, criteria: str, profile: str) -> ProfileRule:
        if not isinstance(criteria, str) or not isinstance(profile, str) or not profile:
            raise RuleError("a rule needs a criteria string and a profile url")
        resource_type, _, query = criteria.strip().partition("?")
        if not resource_type.isalpha() or not resource_type[:1].isupper():
            raise RuleError(f"rule '{criteria}': it must start with a resource type")
        if not query:
            return cls(resource_type, profile)
        name, _, value = query.partition("=")
        if name == "code:in" and value:
            return cls(resource_type, profile, value_set=value)
        if name == "code" and value:
            system, bar, code = value.rpartition("|")
            return cls(resource_type, profile, coding=(system if bar else None, code))
        raise RuleError(
            f"rule '{criteria}': only 'Type', 'Type?code:in=ValueSet' and "
            "'Type?code=system|code' are supported"
        )


class RequiredProfiles:
    """The profiles the operator's rules require of a given resource."""

    def __init__(self, rules: Iterable[ProfileRule], terminology: TerminologyService) -> None:
        self.rules = list(rules)
        self.terminology = terminology
        self._by_type: dict[str, list[ProfileRule]] = {}
        for rule in self.rules:
            self._by_type.setdefault(rule.resource_type, []).append(rule)

    @classmethod
    def from_pairs(
        cls, pairs: Iterable[tuple[str, str]], terminology: TerminologyService
    ) -> RequiredProfiles:
        return cls([ProfileRule.parse(c, p) for c, p in pairs], terminology)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def profiles_for(self, resource: dict) -> list[str]:
        rules = self._by_type.get(resource.get("resourceType", ""))
        if not rules:
            return []
        return [rule.profile for rule in rules if self._applies(rule, resource)]

    def _applies(self, rule: ProfileRule, resource: dict) -> bool:
        if rule.value_set is None and rule.coding is None:
            return True
        code = resource.get("code")
        codings = code.get("coding") if isinstance(code, dict) else None
        if not isinstance(codings, list):
            return False
        pairs = [(c.get("system"), c.get("code")) for c in codings if isinstance(c, dict)]
        if rule.coding is not None:
            system, wanted = rule.coding
            return any(c == wanted and (system is None or s == system) for s, c in pairs)
        members = self.terminology.value_set_codes(rule.value_set)
        return any(pair in members for pair in pairs)


def parse_rules_json(text: str) -> tuple[tuple[str, str], ...]:
    """`[{"criteria": "Observation?code:in=...", "profile": "https://..."}]` -> pairs."""
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RuleError(f"profile rules are not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise RuleError("profile rules must be a JSON list of {criteria, profile} objects")
    pairs = []
    for item in data:
        if not isinstance(item, dict) or "criteria" not in item or "profile" not in item:
            raise RuleError(f"profile rule {item!r} needs 'criteria' and 'profile'")
        ProfileRule.parse(item["criteria"], item["profile"])  # fail early on a bad rule
        pairs.append((item["criteria"], item["profile"]))
    return tuple(pairs)


def rules_from_setting(value: str) -> tuple[tuple[str, str], ...]:
    """The env setting holds the JSON itself (starting with '[') or a path to a JSON file."""
    value = value.strip()
    if not value:
        return ()
    if value.startswith("["):
        return parse_rules_json(value)
    path = Path(value)
    if not path.is_file():
        raise RuleError(f"profile rules file {value} does not exist")
    return parse_rules_json(path.read_text(encoding="utf-8"))
