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
  profile). References to contained resources (`#id`) are typed by looking at the root's
  `contained`, so a subtree with reference targets is not memoized when the resource has
  `contained`;
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

import re
import threading
from dataclasses import dataclass, field
from time import perf_counter
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
_NULL = re.compile(b"null")  # faster than `in` on JSON text
MEMO_SIZE = 4096  # entries per memoized element or invariant group
PLANS = 256  # distinct key sequences remembered per profile
FIRST_WINDOW = 64  # resources a profile checks plainly before its memo first learns
LEARN_WINDOW = 64  # resources a memo learns from (every component keyed, costs timed)
WINDOW, REST = 512, 16384  # lookups judged at a time; lookups skipped when rarely hit
RELEARN = 32  # at most this many windows combined before the memo learns again
TIMED = True  # weigh hit rates by measured costs (False: hit rates alone, deterministic)


HELD = "held"  # an invariant's verdict when it holds
class _Clean:
    __slots__ = ()


CLEAN: Any = _Clean()  # what a combined memo keeps when none of its components found
# anything; lookup() returns it then (when no component is keyed alone) instead of a list


def content_key(value: Any) -> bytes | None:
    """The exact JSON of `value`, or None when it cannot serve as a key."""
    try:
        key = orjson.dumps(value, option=_EXACT)
    except (TypeError, orjson.JSONEncodeError):
        return None
    return None if _NULL.search(key) else key


class BoundedMemo:
    """A dict that forgets its oldest entries past `size`, and that stands aside for a while
    when it hardly ever hits (an import's timestamps are all distinct: keying them costs
    more than it saves). Standing aside only means the check runs: verdicts never change."""

    __slots__ = ("entries", "size", "lookups", "hits", "resting", "seen", "found")

    def __init__(self, size: int = MEMO_SIZE) -> None:
        self.entries: dict[bytes, Any] = {}
        self.size = size
        self.lookups = self.hits = self.resting = 0
        self.seen = self.found = 0  # lookups and hits since the profile last looked

    def in_use(self) -> bool:
        """False while resting after a window of lookups that hardly ever hit."""
        if self.resting:
            self.resting -= 1
            return False
        return True

    def get(self, key: bytes) -> Any:
        found = self.entries.get(key)
        self.lookups += 1
        self.seen += 1
        if found is not None:
            self.hits += 1
            self.found += 1
        if self.lookups >= WINDOW:
            if self.hits * 8 < WINDOW:  # under 1 hit in 8: rest, then look again
                self.resting = REST
                self.entries.clear()
            self.lookups = self.hits = 0
        return found

    def put(self, key: bytes, value: Any) -> None:
        entries = self.entries
        if len(entries) >= self.size:
            del entries[next(iter(entries))]
        entries[key] = value


@dataclass(slots=True)
class Component:
    """A memoized part of the root's check: a group of root invariants that read the same
    members (one key and one lookup for all of them), or a child of the root element."""

    memo: BoundedMemo
    members: frozenset[str] = frozenset()  # an invariant group: the members it reads
    positions: list[int] = field(default_factory=list)  # its invariants' indexes
    child: ElementRule | None = None  # a child: its rule
    has_references: bool = False  # some rule below types references: `#id` reads `contained`
    spent: float = 0.0  # seconds spent computing it while the memo learns
    computed: int = 0  # times computed while the memo learns

    def reads(self, key: str) -> bool:
        """Whether the check may read the resource's JSON key `key`."""
        child = self.child
        if child is None:
            # resourceType is the profile's type (validate() checks, lookup() wants a str)
            return key != "resourceType" and bool(member_keys(self.members, (key,)))
        return key in child.all_choice_keys if child.is_choice else key == child.name


@dataclass(slots=True)
class Combination:
    """How a profile's memo looks up for now: which components share the combined key,
    which keep their own key (the others are checked every time). Never changed once made:
    a lookup and its store use the one they started with, whatever another thread does."""

    stable: frozenset[int]  # under the combined key
    keyed: tuple[int, ...]  # under their own keys
    on_miss: tuple[int, ...]  # stable and keyed: what a combined miss looks up alone
    memo: BoundedMemo | None  # None: no combined key (separate keys only)
    plans: dict[tuple[str, ...], tuple[int, ...]]  # key sequence -> positions it reads
    unstable_invariants: list[Invariant]  # left to check when the combined memo is CLEAN
    unstable_children: list[ElementRule]
    learning: bool = False  # every component keyed, costs measured

    @property
    def idle(self) -> bool:
        """Nothing memoized for now: the plain walk, and only the resource counted."""
        return self.memo is None and not self.keyed


class ProfileMemo:
    """The memoizable checks of one compiled profile, their caches, and how they are keyed.

    It starts with separate keys (each component keyed and looked up on its own) and
    learns from a window of resources which components hit: those that nearly always hit
    then share one combined key and one lookup, those that hit now and then keep their own
    key, the others are checked every time. A combined miss looks the stable components up
    under their own keys (a new patient's readings: code and values known, subject not).
    A combined memo that hardly hits sends the profile back to separate keys (for longer
    each time); now and then (less and less often) it learns again. Thread-safe: lookups
    and stores of one profile take its lock (the checks between them do not).
    """

    def __init__(self, profile: CompiledProfile) -> None:
        root = profile.root
        groups: dict[frozenset[str], Component] = {}
        for position, invariant in enumerate(root.invariants):
            members = context_members(invariant.expression) if invariant.fast else None
            if members is not None:
                group = groups.setdefault(members, Component(BoundedMemo(), members))
                group.positions.append(position)
        self.groups = list(groups.values())
        # whether the root has checks besides its invariants (a profile hardly ever has)
        self.root_value_checks = bool(
            root.has_fixed or root.has_pattern or root.target_types or root.binding
            or root.ranges or root.checks_unit or root.max_length is not None
            or root.min_value is not None or root.max_value is not None
        )
        self.components: list[Component] = list(self.groups)
        self.child_index: dict[str, int] = {}  # child name -> index in components
        for name, child in root.children.items():
            if _worth_memoizing(child) and _reads_only_its_subtree(child):
                self.child_index[name] = len(self.components)
                self.components.append(
                    Component(BoundedMemo(), child=child, has_references=_has_references(child))
                )
        self._root = root
        self._lock = threading.Lock()
        # per sequence of JSON keys of a resource (an import repeats one or two): for each
        # component, the positions of the keys it reads
        self._plans: dict[tuple[str, ...], list[tuple[int, ...]]] = {}
        self._learning_combination = self._combination(None, ())
        # a profile starts idle (plain walk): learning costs, and pays only with volume
        self.combination = self._combination((), ())
        self._learning = False
        self._resources = 0  # checked in the current window
        self._window = FIRST_WINDOW
        self._windows = 0  # since the last judgement that learnt
        self._relearn_after = 1  # windows before learning again (doubles up to RELEARN)
        self._overhead = 0.0  # seconds spent in lookup and store while learning
        self._combined: Combination | None = None  # the last one with a combined key

    @property
    def combined(self) -> bool:
        return self.combination.memo is not None

    @property
    def stable(self) -> frozenset[int]:
        return self.combination.stable

    def _combination(self, stable: tuple[int, ...] | None, keyed: tuple[int, ...]) -> Combination:
        """stable None: learning, every component keyed alone."""
        if stable is None:
            every = tuple(range(len(self.components)))
            return Combination(frozenset(), every, every, None, {}, [], [], learning=True)
        if not stable:  # no combined key: own keys for some, the rest checked every time
            return Combination(frozenset(), keyed, keyed, None, {}, [], [])
        components = self.components
        covered = {p for i in stable for p in components[i].positions}
        combined_children = {components[i].child.name for i in stable if components[i].child}
        return Combination(
            frozenset(stable),
            keyed,
            tuple(sorted(stable + keyed)),
            BoundedMemo(),
            {},
            [inv for p, inv in enumerate(self._root.invariants) if p not in covered],
            [c for name, c in self._root.children.items() if name not in combined_children],
        )

    # -- lookups ---------------------------------------------------------------------------

    def lookup(self, resource: dict) -> tuple[Any, Any]:
        """Per component, its memoized result or None (to compute), and what `store`
        needs to remember the results computed now. Or CLEAN, and the Combination whose
        components found nothing on an equal resource (nothing is keyed alone then)."""
        with self._lock:
            started = perf_counter()
            self._resources += 1
            combination = self.combination
            if type(resource.get("resourceType")) is not str:
                # not JSON: the unmemoized walk (keys leave it out)
                return [None] * len(self.components), None
            known: Any = None
            combined_key = None
            keyed = combination.keyed
            if combination.memo is not None:
                combined_key = self._combined_key(combination, resource)
                found = (combination.memo.get(combined_key)
                         if combined_key is not None else None)
                if found is CLEAN and not keyed:
                    return CLEAN, combination
                if found is not None:
                    known, combined_key = self._expand(combination, found), None
                else:
                    keyed = combination.on_miss
            if known is None:
                known = [None] * len(self.components)
            keys = self.keys_for(resource, keyed) if keyed else None
            if keys is not None:
                components = self.components
                for i in keyed:
                    key = keys[i]
                    if key is not None:
                        known[i] = components[i].memo.get(key)
            if combination.learning:
                self._overhead += perf_counter() - started
            return known, (combination, combined_key, keyed, keys)

    def count(self, looked_up: bool = False) -> None:
        """A resource checked without the memo (idle) still counts towards the window after
        which the memo learns again; one that was looked up (CLEAN) was counted then."""
        with self._lock:
            if not looked_up:
                self._resources += 1
            if self._resources >= self._window:
                self._judge()

    def store(self, token: Any, known: list[Any], results: list[Any]) -> None:
        """Remember `results` (None where nothing was computed: `known` has it)."""
        with self._lock:
            started = perf_counter()
            if isinstance(token, tuple):
                combination, combined_key, keyed, keys = token
                if combination.learning:
                    self._overhead -= started  # the time below counts as overhead
                if keys is not None:
                    components = self.components
                    for i in keyed:
                        key, result = keys[i], results[i]
                        if key is not None and result is not None:
                            components[i].memo.put(key, result)
                if combined_key is not None:
                    self._remember_combined(combination, combined_key, known, results)
                if combination.learning:
                    self._overhead += perf_counter()
            if self._resources >= self._window:
                self._judge()

    def _remember_combined(
        self, combination: Combination, key: bytes, known: list[Any], results: list[Any]
    ) -> None:
        stable, components = combination.stable, self.components
        found = [
            (known[i] if results[i] is None else results[i]) if i in stable else None
            for i in range(len(results))
        ]
        clean = all(
            found[i] == ((HELD,) * len(components[i].positions)
                         if components[i].child is None else ())
            for i in stable
        )
        combination.memo.put(key, CLEAN if clean else tuple(found))  # type: ignore[union-attr]

    def _expand(self, combination: Combination, found: Any) -> list[Any]:
        """A combined memo's value as per-component results."""
        if found is not CLEAN:
            return list(found)
        components = self.components
        known: list[Any] = [None] * len(components)
        for i in combination.stable:
            positions = components[i].positions
            known[i] = (HELD,) * len(positions) if components[i].child is None else ()
        return known

    def _judge(self) -> None:
        """At the end of a window of resources. After learning: combine what nearly always
        hit, keep own keys for what hit now and then, check the rest every time, each only
        where the time saved (hit rate x time to compute it, measured while learning) beats
        the time keys and lookups cost. Then: learn again when the combined memo hardly
        hits, and now and then (less and less often) in case something else pays."""
        components = self.components
        if not self._learning:
            self._resources, self._window = 0, WINDOW
            self._windows += 1
            memo = self.combination.memo
            failing = memo is not None and memo.found * 8 < memo.seen
            if memo is not None:
                memo.seen = memo.found = 0
            if failing or self._windows >= self._relearn_after:
                if self._combined is not None or self.combination.keyed:
                    self._relearn_after = min(self._relearn_after * 2, RELEARN)
                self.combination, self._learning = self._learning_combination, True
                self._window, self._overhead = LEARN_WINDOW, 0.0
                for component in components:
                    component.memo.seen = component.memo.found = 0
                    component.spent, component.computed = 0.0, 0
            return
        # the lookup and store cost of one component keyed alone, per resource
        overhead = self._overhead / max(self._resources, 1) / max(len(components), 1)
        self._resources, self._window = 0, WINDOW
        stable, keyed, saving = [], [], {}
        for i, component in enumerate(components):
            seen, found = component.memo.seen, component.memo.found
            component.memo.seen = component.memo.found = 0
            rate = found / seen if seen else 0.0
            if not TIMED:
                cost, overhead = 1.0, 0.0  # on hit rates alone
            elif component.computed:
                cost = component.spent / component.computed
            else:  # never computed while learning: it always hit, it costs more than a key
                cost = 4 * overhead
            saving[i] = rate * cost
            # A combined miss falls back to own keys, so a component that hits half the
            # time already gains from the shared key (and the checks-left-only path)
            if rate >= 1 / 2 and saving[i] > overhead / 2:
                stable.append(i)
            elif saving[i] > overhead:
                keyed.append(i)
        if stable and sum(saving[i] for i in stable) < 2 * overhead:  # a key for too little
            keyed = sorted(keyed + [i for i in stable if saving[i] > overhead])
            stable = []
        combination = self._combination(tuple(stable), tuple(keyed))
        previous = self._combined
        if previous is not None and previous.stable == combination.stable:
            # the same components under the combined key: what it holds is still right
            combination.memo, combination.plans = previous.memo, previous.plans
        if combination.memo is not None:
            self._combined = combination
        self.combination = combination
        self._learning, self._windows = False, 0

    def _combined_key(self, combination: Combination, resource: dict) -> bytes | None:
        names = tuple(resource)
        positions = combination.plans.get(names)
        if positions is None:
            plan = self._plan(names)
            if plan is None:
                return None
            stable = combination.stable
            positions = tuple(sorted({i for c in stable for i in plan[c]}))
            if any(self.components[c].has_references for c in stable):
                positions = (-1, *positions)  # -1: look for contained references
            if len(combination.plans) < PLANS:
                combination.plans[names] = positions
        if positions and positions[0] == -1 and "contained" in resource:
            return None  # a `#id` reference is typed by the root's contained resources
        values = list(resource.values())
        return content_key([(names[i], values[i]) for i in positions if i >= 0])

    def _plan(self, names: tuple) -> list[tuple[int, ...]] | None:
        plan = self._plans.get(names)
        if plan is None:
            if any(type(name) is not str for name in names):
                return None  # not JSON: the unmemoized walk
            plan = [
                tuple(i for i, name in enumerate(names) if component.reads(name))
                for component in self.components
            ]
            if len(self._plans) < PLANS:
                self._plans[names] = plan
        return plan

    def keys_for(self, resource: dict, indexes: tuple[int, ...]) -> list[bytes | None]:
        """For the components at `indexes`, the exact key of what each reads in `resource`
        (None elsewhere, or when not keyed this time). A key is the concatenation of the
        JSON texts `["name", value]` of the resource's keys it reads, in the resource's
        order: self-delimiting, so exact."""
        components = self.components
        keys: list[bytes | None] = [None] * len(components)
        names = tuple(resource)
        plan = self._plan(names)
        if plan is None:
            return keys
        values = list(resource.values())
        pieces: list[Any] = [False] * len(names)  # False: not serialized yet
        contained = "contained" in resource  # `#id` references are typed by what it holds
        for index in indexes:
            component = components[index]
            if not component.memo.in_use() or (contained and component.has_references):
                continue
            parts = []
            for i in plan[index]:
                piece = pieces[i]
                if piece is False:
                    piece = pieces[i] = content_key((names[i], values[i]))
                if piece is None:
                    break
                parts.append(piece)
            else:
                keys[index] = parts[0] if len(parts) == 1 else b"".join(parts)
        return keys


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
