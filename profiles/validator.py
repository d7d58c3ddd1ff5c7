"""ProfileValidator: checks a resource against StructureDefinition profiles, generically.

Nothing here knows a particular profile: the rules come from each profile's differential
(compiled once, see `compiled.py`): cardinality, types and choice types, reference targets,
fixed and pattern values, slicing by pattern or value, required / extensible bindings
(through a TerminologyService), UCUM units, the `plausible-range` extension, and FHIRPath
invariants. Every problem is reported at once, each with a FHIRPath expression that points
at the element (`Observation.valueQuantity.value`) and a message naming the profile, the
value and what was expected.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from profiles.compiled import (
    CompiledProfile,
    ElementRule,
    Invariant,
    ProfileDefinitionError,
    compile_profile,
)
from profiles.definitions import load_structure_definitions
from profiles.memo import CLEAN, HELD, ProfileMemo
from terminology import TerminologyService, ucum
from terminology.errors import TerminologyError

Node = tuple[Any, str]  # (JSON value, FHIRPath expression of that value)
# An invariant's verdict (what a memo keeps of its FHIRPath result).
_HELD, _FAILED, _UNEVALUATED = HELD, "failed", "unevaluated"


def _verdict(result: list | None) -> str:
    """None: not evaluable (a warning); [False]: violated; anything else holds."""
    if result is None:
        return _UNEVALUATED
    return _FAILED if result == [False] else _HELD


@dataclass(frozen=True, slots=True)
class ProfileIssue:
    severity: str  # error | warning | information
    code: str  # invariant | value | code-invalid | required | structure | business-rule
    expression: str
    message: str


class ProfileValidator:
    def __init__(
        self,
        terminology: TerminologyService,
        structure_definitions: list[dict] | None = None,
    ) -> None:
        self.terminology = terminology
        if structure_definitions is None:
            structure_definitions = load_structure_definitions()
        self._profiles: dict[str, CompiledProfile] = {}
        self._memos: dict[str, ProfileMemo] = {}
        self._value_set_codes: dict[str, tuple[frozenset, frozenset] | None] = {}
        for definition in structure_definitions:
            self.add(definition)

    # -- profiles -------------------------------------------------------------------------

    def add(self, structure_definition: dict) -> None:
        """Compile and register a profile (replaces one with the same url)."""
        compiled = compile_profile(structure_definition)
        self._profiles[compiled.url] = compiled
        self._memos[compiled.url] = ProfileMemo(compiled)

    def knows(self, url: str) -> bool:
        return url.split("|")[0] in self._profiles

    @property
    def profile_urls(self) -> list[str]:
        return list(self._profiles)

    @property
    def structure_definitions(self) -> list[dict]:
        return [p.definition for p in self._profiles.values()]

    def published_structure_definitions(self) -> list[dict]:
        """The profiles as other tools load them: with `fhirVersion` and a snapshot
        generated from the differential and the R4 base definitions (`snapshot.py`)."""
        from profiles.snapshot import with_snapshot  # the core definitions load on first use

        return [with_snapshot(p.definition) for p in self._profiles.values()]

    @staticmethod
    def claimed_profiles(resource: dict) -> list[str]:
        meta = resource.get("meta")
        claimed = meta.get("profile") if isinstance(meta, dict) else None
        if not isinstance(claimed, list):
            return []
        return [p for p in claimed if isinstance(p, str)]

    # -- validation -----------------------------------------------------------------------

    def validate(
        self, resource: dict, profiles: Sequence[str] | None = None
    ) -> list[ProfileIssue]:
        """Every problem of `resource` against `profiles` (default: its meta.profile)."""
        if not isinstance(resource, dict):
            return [ProfileIssue("error", "structure", "Resource", "A resource is a JSON object")]
        if profiles is None:
            profiles = self.claimed_profiles(resource)
        issues: list[ProfileIssue] = []
        resource_type = resource.get("resourceType", "Resource")
        urls = [p.split("|")[0] for p in profiles]
        for url in urls if len(urls) < 2 else dict.fromkeys(urls):
            profile = self._profiles.get(url)
            if profile is None:
                issues.append(
                    ProfileIssue(
                        "error",
                        "structure",
                        f"{resource_type}.meta.profile",
                        f"The profile {url} is not known to this server, so the resource "
                        "cannot be checked against it",
                    )
                )
                continue
            if profile.resource_type != resource_type:
                issues.append(
                    ProfileIssue(
                        "error",
                        "structure",
                        f"{resource_type}.meta.profile",
                        f"The profile {profile.name} applies to {profile.resource_type}, "
                        f"not to {resource_type}",
                    )
                )
                continue
            _Run(self, profile, resource, issues).check(self._memos[url])
        return issues

    # -- terminology ----------------------------------------------------------------------

    def value_set_codes(self, url: str) -> tuple[frozenset, frozenset] | None:
        """((system, code) pairs, bare codes) of a ValueSet; None when it is unknown."""
        if url not in self._value_set_codes:
            try:
                pairs = self.terminology.value_set_codes(url)
            except TerminologyError:
                self._value_set_codes[url] = None
            else:
                self._value_set_codes[url] = (pairs, frozenset(code for _, code in pairs))
        return self._value_set_codes[url]


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        codings = value.get("coding")
        if isinstance(codings, list):
            return ", ".join(_describe(c) for c in codings) or "no coding"
        if "code" in value or "system" in value:
            return f"{value.get('system', '(no system)')}#{value.get('code', '(no code)')}"
    return repr(value)


def _number(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 10_000 else f"{value:.0f}"


def _contains_pattern(value: Any, pattern: Any) -> bool:
    """FHIR pattern[x] semantics: every element of the pattern is present in the value."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(
            k in value and _contains_pattern(value[k], v) for k, v in pattern.items()
        )
    if isinstance(pattern, list):
        values = value if isinstance(value, list) else [value]
        return all(any(_contains_pattern(v, p) for v in values) for p in pattern)
    return value == pattern


def _pair(coding: Any) -> tuple[str, str] | None:
    """(system, code) of a Coding (or Quantity), None unless both are strings."""
    if not isinstance(coding, dict):
        return None
    system, code = coding.get("system"), coding.get("code")
    return (system, code) if isinstance(system, str) and isinstance(code, str) else None


def _reference_type(reference: dict, root: dict) -> str | None:
    declared = reference.get("type")
    if isinstance(declared, str):
        return declared
    target = reference.get("reference")
    if not isinstance(target, str) or target.startswith(("urn:", "?")):
        return None  # a bundle-local urn:uuid/urn:oid or a conditional reference
    if target.startswith("#"):
        for contained in root.get("contained") or ():
            if isinstance(contained, dict) and contained.get("id") == target[1:]:
                return contained.get("resourceType")
        return None
    parts = target.split("?")[0].split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return parts[-2] if len(parts) >= 2 else None


class _Run:
    """One resource against one profile."""

    def __init__(
        self,
        validator: ProfileValidator,
        profile: CompiledProfile,
        resource: dict,
        issues: list[ProfileIssue],
    ) -> None:
        self.validator = validator
        self.profile = profile
        self.resource = resource
        self.issues = issues

    def add(self, severity: str, code: str, expression: str, message: str) -> None:
        self.issues.append(
            ProfileIssue(severity, code, expression, f"{self.profile.name}: {message}")
        )

    def check(self, memo: ProfileMemo | None = None) -> None:
        root = self.profile.root
        node = (self.resource, self.profile.resource_type)
        if memo is None or root.slices or not memo.components:
            self.check_values(root, [node])
            return
        if memo.combination.idle:
            self.check_values(root, [node])
            memo.count()
            return
        # check_values(root, [node]) with memoized invariants and children, same order
        known, token = memo.lookup(self.resource)
        if known is CLEAN:
            # every combined component found nothing on an equal resource: what is left
            # reports in the same order (root invariants, then children)
            if memo.root_value_checks:
                self.check_value(root, node, with_invariants=False)
            for invariant in token.unstable_invariants:
                verdict = _verdict(invariant.evaluate(self.resource, self.resource))
                if verdict is not _HELD:
                    self.report_invariant(invariant, verdict, node[1])
            for child in token.unstable_children:
                self.check_child(child, node)
            memo.count(looked_up=True)
            return
        results: list[Any] = [None] * len(known)  # what is computed now, to remember
        timed = token is not None and token[0].learning  # the memo learns what things cost
        if memo.root_value_checks:
            self.check_value(root, node, with_invariants=False)
        if root.invariants:
            self.check_root_invariants(memo, known, results, node, timed)
        issues = self.issues
        components = memo.components
        for child in root.children.values():
            index = memo.child_index.get(child.name)
            if index is None:
                self.check_child(child, node)
                continue
            found = known[index]
            if found is None:
                start, started = len(issues), perf_counter() if timed else 0.0
                self.check_child(child, node)
                results[index] = tuple(issues[start:])
                if timed:
                    components[index].spent += perf_counter() - started
                    components[index].computed += 1
            else:
                issues.extend(found)
        memo.store(token, known, results)

    def check_root_invariants(
        self,
        memo: ProfileMemo,
        known: list[Any],
        results: list[Any],
        node: Node,
        timed: bool = False,
    ) -> None:
        value, expression = node
        invariants = self.profile.root.invariants
        verdicts: list[str | None] = [None] * len(invariants)
        for index, group in enumerate(memo.groups):
            found = known[index]
            if found is None:
                started = perf_counter() if timed else 0.0
                found = results[index] = tuple(
                    _verdict(invariants[p].evaluate(value, self.resource))
                    for p in group.positions
                )
                if timed:
                    group.spent += perf_counter() - started
                    group.computed += 1
            for position, verdict in zip(group.positions, found, strict=True):
                verdicts[position] = verdict
        for invariant, verdict in zip(invariants, verdicts, strict=True):
            if verdict is None:
                verdict = _verdict(invariant.evaluate(value, self.resource))
            if verdict is not _HELD:
                self.report_invariant(invariant, verdict, expression)

    # -- walking ---------------------------------------------------------------------------

    def collect(self, rule: ElementRule, parent: Node) -> tuple[list[Node], list[str]]:
        """The values of `rule` under `parent`, and (for choices) the JSON keys found.
        Values of a choice type the profile does not allow are left out (the type error is
        reported once, by check_choice)."""
        value, expression = parent
        if not isinstance(value, dict):
            return [], []
        keys: list[str]
        if rule.is_choice:
            choices = rule.all_choice_keys
            keys = [k for k in value if k in choices]
        else:
            keys = [rule.name] if rule.name in value else []
        nodes: list[Node] = []
        for key in keys:
            if rule.choice_keys and key not in rule.choice_keys:
                continue
            found = value[key]
            path = f"{expression}.{key}"
            if isinstance(found, list):
                nodes.extend((item, f"{path}[{i}]") for i, item in enumerate(found))
            elif found is not None:
                nodes.append((found, path))
        return nodes, keys

    def check_cardinality(
        self, rule: ElementRule, count: int, where: str, label: str
    ) -> None:
        if count < rule.min:
            if count == 0:
                message = f"{label} is required (minimum {rule.min})"
            else:
                message = f"{label} needs at least {rule.min} (found {count})"
            self.add("error", "required", where, message)
        if rule.max is not None and count > rule.max:
            self.add(
                "error",
                "structure",
                where,
                f"{label} allows at most {rule.max} (found {count})",
            )

    def check_children(self, rule: ElementRule, parents: list[Node]) -> None:
        for child in rule.children.values():
            for parent in parents:
                self.check_child(child, parent)

    def check_child(self, child: ElementRule, parent: Node) -> None:
        if not isinstance(parent[0], dict):
            return
        if not (child.checks_values or child.slices or child.children):
            self.count_child(child, parent)
            return
        nodes, keys = self.collect(child, parent)
        if child.checks_cardinality:
            count = len(keys) if child.is_choice else len(nodes)
            if count < child.min or (child.max is not None and count > child.max):
                where = self.where(child, parent, keys)
                self.check_cardinality(child, count, where, where)
        if child.choice_keys and keys:
            self.check_choice(child, keys, parent[1])
        if nodes:
            self.check_values(child, nodes)
        elif child.slices:
            self.check_slices(child, nodes, self.where(child, parent, keys))

    def count_child(self, child: ElementRule, parent: Node) -> None:
        """check_child of an element with nothing below and no value checks: only how many
        values (and, for a choice, which keys) count, so no nodes or paths are built."""
        value = parent[0]
        if child.is_choice:
            keys = [k for k in value if k in child.all_choice_keys]
            count = len(keys)
        elif not child.checks_cardinality:
            return  # nothing at all to check (an element the profile only describes)
        elif child.name in value:
            keys = [child.name]
            found = value[child.name]
            count = len(found) if isinstance(found, list) else int(found is not None)
        else:
            keys, count = [], 0
        if count < child.min or (child.max is not None and count > child.max):
            where = self.where(child, parent, keys)
            self.check_cardinality(child, count, where, where)
        if child.choice_keys and keys:
            self.check_choice(child, keys, parent[1])

    @staticmethod
    def where(rule: ElementRule, parent: Node, keys: list[str]) -> str:
        """The FHIRPath of an element that may be absent (`Observation.effective[x]`)."""
        if rule.is_choice and len(keys) == 1:
            return f"{parent[1]}.{keys[0]}"
        return f"{parent[1]}.{rule.name}"

    def check_choice(self, rule: ElementRule, keys: list[str], parent_expression: str) -> None:
        allowed = " or ".join(rule.types)
        for key in keys:
            if key not in rule.choice_keys:
                self.add(
                    "error",
                    "structure",
                    f"{parent_expression}.{key}",
                    f"{parent_expression}.{rule.name} must be {allowed} here "
                    f"(found {key})",
                )

    def check_values(self, rule: ElementRule, nodes: list[Node]) -> None:
        if rule.checks_values:
            for node in nodes:
                self.check_value(rule, node)
        if rule.slices and nodes:
            self.check_slices(rule, nodes, nodes[0][1].rsplit("[", 1)[0])
        if rule.children:
            self.check_children(rule, nodes)

    # -- one value ------------------------------------------------------------------------

    def check_value(self, rule: ElementRule, node: Node, with_invariants: bool = True) -> None:
        value, expression = node
        if rule.has_fixed and value != rule.fixed:
            self.add(
                "error",
                "value",
                expression,
                f"{expression} must be {rule.fixed!r} (found {value!r})",
            )
        if rule.has_pattern and not _contains_pattern(value, rule.pattern):
            self.add(
                "error",
                "value",
                expression,
                f"{expression} must match {rule.pattern!r} (found {_describe(value)})",
            )
        if rule.target_types and isinstance(value, dict):
            target = _reference_type(value, self.resource)
            if target is not None and target not in rule.target_types:
                self.add(
                    "error",
                    "value",
                    expression,
                    f"{expression} must refer to a {' or '.join(sorted(rule.target_types))} "
                    f"(found a reference to a {target})",
                )
        if rule.binding is not None:
            self.check_binding(rule.binding, value, expression)
        if rule.max_length is not None and isinstance(value, str) and len(value) > rule.max_length:
            self.add(
                "error",
                "value",
                expression,
                f"{expression} is {len(value)} characters long (at most {rule.max_length})",
            )
        if rule.min_value is not None or rule.max_value is not None:
            self.check_bounds(rule, value, expression)
        if isinstance(value, dict) and "value" in value:
            if rule.checks_unit:
                self.check_unit(value, expression)
            if rule.ranges:
                self.check_ranges(rule, value, expression)
        if with_invariants:
            for invariant in rule.invariants:
                verdict = _verdict(invariant.evaluate(value, self.resource))
                if verdict is not _HELD:
                    self.report_invariant(invariant, verdict, expression)

    def report_invariant(self, invariant: Invariant, verdict: str, expression: str) -> None:
        if verdict is _UNEVALUATED:
            self.add(
                "warning",
                "invariant",
                expression,
                f"rule {invariant.key} could not be evaluated here ({invariant.expression})",
            )
        elif verdict is _FAILED:
            self.add(
                invariant.severity,
                "invariant",
                expression,
                f"{invariant.human} (rule {invariant.key}: {invariant.expression})",
            )

    def check_bounds(self, rule: ElementRule, value: Any, expression: str) -> None:
        """minValue[x] / maxValue[x] on numbers, dates (ISO strings compare in order) and
        Quantities in the bound's unit (converted through UCUM when needed)."""
        for bound, is_min in ((rule.min_value, True), (rule.max_value, False)):
            if bound is None:
                continue
            actual, limit, unit = value, bound, ""
            if isinstance(bound, dict):
                if not isinstance(value, dict):
                    continue
                unit = bound.get("code", "")
                actual, limit = value.get("value"), bound.get("value")
                if value.get("code") != unit:
                    try:
                        actual = ucum.convert(actual, value.get("code", ""), unit)
                    except (ucum.UnitConversionError, TypeError, ValueError):
                        continue  # not comparable: the unit checks report wrong units
            comparable = (
                isinstance(actual, int | float) and isinstance(limit, int | float)
            ) or (isinstance(actual, str) and isinstance(limit, str))
            if not comparable or isinstance(actual, bool):
                continue
            if (actual < limit) if is_min else (actual > limit):
                word = "at least" if is_min else "at most"
                shown = f"{limit} {unit}".strip()
                self.add("error", "value", expression,
                         f"{expression} must be {word} {shown} (found {actual})")

    def check_binding(self, binding: tuple[str, str], value: Any, expression: str) -> None:
        strength, url = binding
        codes = self.validator.value_set_codes(url)
        if codes is None:
            self.add(
                "warning",
                "code-invalid",
                expression,
                f"the ValueSet {url} is not known here, so {expression} was not checked",
            )
            return
        pairs, bare = codes
        if isinstance(value, str):
            ok = value in bare
        elif isinstance(value, dict) and "coding" in value:
            codings = value.get("coding")
            ok = isinstance(codings, list) and any(_pair(c) in pairs for c in codings)
        else:
            ok = _pair(value) in pairs
        if ok:
            return
        severity = "error" if strength == "required" else "warning"
        self.add(
            severity,
            "code-invalid",
            expression,
            f"{_describe(value)} at {expression} is not in the ValueSet {url} "
            f"({strength} binding)",
        )

    def check_unit(self, quantity: dict, expression: str) -> None:
        system, code = quantity.get("system"), quantity.get("code")
        if system != ucum.UCUM_SYSTEM or not isinstance(code, str):
            return
        if not ucum.is_valid_unit(code):
            hint = ucum.normalize_unit(code)
            suggestion = f"; did you mean '{hint}'?" if ucum.is_valid_unit(hint) else ""
            self.add(
                "error",
                "code-invalid",
                f"{expression}.code",
                f"'{code}' is not a UCUM unit this server knows{suggestion}",
            )

    def check_ranges(self, rule: ElementRule, quantity: dict, expression: str) -> None:
        number = quantity.get("value")
        if not isinstance(number, int | float) or isinstance(number, bool):
            return
        unit = quantity.get("code")
        if isinstance(unit, str):
            if not ucum.is_valid_unit(unit):
                return  # a wrong unit code is reported by the unit / binding checks
        else:
            display = quantity.get("unit")  # no code: the human unit, if it is a known one
            unit = ucum.normalize_unit(display) if isinstance(display, str) else None
            if unit is None or not ucum.is_valid_unit(unit):
                return
        for plausible in rule.ranges:
            factor = plausible.factor(unit)
            if factor is None:
                continue
            converted = number * factor
            if plausible.low <= converted <= plausible.high:
                return
            shown = f"{_number(number)} {unit}"
            if unit != plausible.unit:
                shown += f" ({_number(converted)} {plausible.unit})"
            bounds = f"{_number(plausible.low)}–{_number(plausible.high)} {plausible.unit}"
            if unit != plausible.unit:
                low, high = plausible.low / factor, plausible.high / factor
                bounds += f" ({_number(low)}–{_number(high)} {unit})"
            self.add(
                "error",
                "business-rule",
                f"{expression}.value",
                f"{expression}.value {shown} is outside the plausible range {bounds}",
            )
            return

    # -- slicing --------------------------------------------------------------------------

    def check_slices(self, rule: ElementRule, nodes: list[Node], parent: str) -> None:
        matched: dict[str, list[Node]] = {name: [] for name in rule.slices}
        unmatched: list[Node] = []
        for node in nodes:
            name = self.slice_of(rule, node[0])
            if name is None:
                unmatched.append(node)
            else:
                matched[name].append(node)
        for name, piece in rule.slices.items():
            label = f"{parent} (slice {name})"
            self.check_cardinality(piece, len(matched[name]), parent, label)
            if piece.checks_values:
                for node in matched[name]:
                    self.check_value(piece, node)
            if piece.children and matched[name]:
                self.check_children(piece, matched[name])
        if rule.slicing and rule.slicing.rules == "closed":
            for node in unmatched:
                self.add(
                    "error",
                    "structure",
                    node[1],
                    f"{node[1]} matches none of the slices {', '.join(rule.slices)}",
                )

    def slice_of(self, rule: ElementRule, value: Any) -> str | None:
        discriminators = rule.slicing.discriminators if rule.slicing else [("pattern", "$this")]
        for name, piece in rule.slices.items():
            if all(self.discriminates(piece, kind, path, value) for kind, path in discriminators):
                return name
        return None

    @staticmethod
    def discriminates(piece: ElementRule, kind: str, path: str, value: Any) -> bool:
        if path == "$this":
            target, actual = piece, value
        else:
            target = piece
            actual = value
            for step in path.split("."):
                target = target.children.get(step) if target else None
                actual = actual.get(step) if isinstance(actual, dict) else None
            if target is None:
                return False
        if target.has_fixed:
            return actual == target.fixed
        if target.has_pattern:
            return _contains_pattern(actual, target.pattern)
        return False


def validate_definitions(definitions: Iterable[dict]) -> list[str]:
    """Problems that make StructureDefinitions unusable here (empty when all compile)."""
    problems = []
    for definition in definitions:
        try:
            compile_profile(definition)
        except (ProfileDefinitionError, KeyError, TypeError, ValueError) as exc:
            problems.append(f"{definition.get('url', '?')}: {exc}")
    return problems
