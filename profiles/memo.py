"""Memoized verdicts: what a profile check found on a piece of a resource, reused when an
equal piece comes again.

Why: a device import sends tens of thousands of readings that differ only in their time and
value: the same `code`, `subject`, `device`, the same few hundred `valueQuantity`s. A check
whose outcome depends on one piece of the resource alone is decided once per distinct piece.

What may be memoized (decided once per profile, from the compiled rules):
- a child of the resource's root element (`Observation.code`, `Observation.value[x]`) and
  everything under it, when no invariant in that subtree reads outside its context
  (`%resource`, `%rootResource`, other `%` constants). The key is the JSON of the child's
  keys and values in the resource (`[["valueQuantity", {...}]]`), the value the issues the
  walk added for it (their expressions all start with the resource type, a constant of the
  profile). References to contained resources (`#id`) are typed by looking at the root, so
  a subtree with reference targets is not memoized when its JSON holds `"reference":"#`;
- an invariant on the root element whose result depends only on named members of the
  resource (`fhirpath_fast.context_members`): keyed by the JSON of those members.

Keys are exact: orjson writes each JSON value one way (1, 1.0 and true differ; key order is
kept, since the walk reports in key order). Anything it cannot write exactly is never
memoized: subclasses of str / int / float / dict / list, dates, integers past 64 bits,
non-string keys (orjson refuses them), and NaN / Infinity, which it writes as `null` (so a
key holding `null` is not used). Caches are bounded (oldest out first) and belong to one
compiled profile of one validator: replacing a profile starts afresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from profiles.compiled import CompiledProfile, ElementRule, Invariant
from profiles.fhirpath_fast import context_members, member_keys, reads_only_context

# Every subclass, date and dataclass goes to the (absent) default, i.e. raises: never keyed.
_EXACT = (
    orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)
MEMO_SIZE = 4096  # entries per memoized element or invariant


def content_key(value: Any) -> bytes | None:
    """The exact JSON of `value`, or None when it cannot serve as a key."""
    try:
        key = orjson.dumps(value, option=_EXACT)
    except (TypeError, orjson.JSONEncodeError):
        return None
    return None if b"null" in key else key


class BoundedMemo:
    """A dict that forgets its oldest entries past `size`."""

    __slots__ = ("entries", "size")

    def __init__(self, size: int = MEMO_SIZE) -> None:
        self.entries: dict[bytes, Any] = {}
        self.size = size

    def get(self, key: bytes) -> Any:
        return self.entries.get(key)

    def put(self, key: bytes, value: Any) -> None:
        entries = self.entries
        if len(entries) >= self.size:
            del entries[next(iter(entries))]
        entries[key] = value


@dataclass(slots=True)
class RootInvariant:
    invariant: Invariant
    members: frozenset[str] | None  # None: evaluated every time
    memo: BoundedMemo | None
    selects: dict[str, bool]  # JSON key -> read by the invariant (shared by equal members)


@dataclass(slots=True)
class ChildMemo:
    memo: BoundedMemo
    has_references: bool  # some rule below types references: `#id` looks at the root


class ProfileMemo:
    """The memoizable checks of one compiled profile and their caches."""

    def __init__(self, profile: CompiledProfile) -> None:
        root = profile.root
        selects: dict[frozenset[str], dict[str, bool]] = {}
        self.invariants = []
        for invariant in root.invariants:
            members = context_members(invariant.expression) if invariant.fast else None
            self.invariants.append(
                RootInvariant(
                    invariant,
                    members,
                    BoundedMemo() if members is not None else None,
                    selects.setdefault(members, {}) if members is not None else {},
                )
            )
        self.children: dict[str, ChildMemo] = {}
        for name, child in root.children.items():
            if _worth_memoizing(child) and _reads_only_its_subtree(child):
                self.children[name] = ChildMemo(BoundedMemo(), _has_references(child))


def projection_key(spec: RootInvariant, resource: dict) -> bytes | None:
    """The exact key of the members of `resource` that the invariant of `spec` reads."""
    selects = spec.selects
    pairs = []
    for key in resource:
        if type(key) is not str:
            return None  # not JSON: left to the unmemoized walk
        wanted = selects.get(key)
        if wanted is None:
            wanted = bool(member_keys(spec.members, (key,)))  # type: ignore[arg-type]
            if len(selects) < MEMO_SIZE:  # a resource's keys are few and repeat
                selects[key] = wanted
        if wanted:
            pairs.append((key, resource[key]))
    return content_key(pairs)


def _rules(rule: ElementRule) -> list[ElementRule]:
    out = [rule]
    for child in rule.children.values():
        out.extend(_rules(child))
    for piece in rule.slices.values():
        out.extend(_rules(piece))
    return out


def _worth_memoizing(rule: ElementRule) -> bool:
    """Anything beyond a cardinality or choice check (those cost less than a key)."""
    return any(r.checks_values or r.slices for r in _rules(rule)) or any(
        r.checks_cardinality for r in _rules(rule)[1:]
    )


def _reads_only_its_subtree(rule: ElementRule) -> bool:
    return all(
        reads_only_context(inv.expression) for r in _rules(rule) for inv in r.invariants
    )


def _has_references(rule: ElementRule) -> bool:
    return any(r.target_types for r in _rules(rule))
