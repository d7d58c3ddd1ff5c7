"""Rules compiled against the R4 element model: what happens to each element of a type.

A `Plan` is the answer for one definition (a resource type, a datatype, a backbone
element) under the path rules that reach it: for every JSON name the definition has, one
`Step`. The engine walks a resource with its type's plan, looking up each key it meets
(so the cost follows the resource, not the size of R4); a key the definition does not
have is dropped (closed by default).

Plans are shared: a datatype reached where no path rule applies gets the one plan of that
datatype, built once (recursive types such as Identifier -> Reference -> Identifier point
at plans under construction). `Step.rule` says which rule decided (None: no rule named an
element that can carry text, an identifier, a date or a URI: it is dropped, and the
coverage test of the default profile fails).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from fhir_server.deid.elements import CARRIERS, RESOURCE, Element, elements
from fhir_server.deid.rules import PathNode, PathRule, Rules

# Step kinds, in the order the walk tests them (most frequent first).
KEEP = 0  # the value as it is
CHILD = 1  # an object (or list of them): walk it with `plan`
DROP = 2
SHIFT = 3  # a date, dateTime or instant: the patient's shift (and the watermark)
REFERENCE = 4  # Reference.reference: the pseudonym (or dropped)
EXTENSIONS = 5  # extension / modifierExtension: the allow-list, then walk each kept one
APPLY = 6  # a rule's method on the value (generalize, perturb, pseudonymize, uid, keep when)
KEEP_TREE = 7  # a complex element a path rule keeps: only its references are rewritten
CONTAINED = 8  # contained resources: each walked with its own type's plan
INLINE_RESOURCE = 9  # a resource held in an element (Parameters.parameter.resource...)

REQUIRED_FILE = "required-elements-r4.json"  # made by data/required_elements.py
# Why an element is what it is, when no rule names it.
NOT_A_CARRIER = "not a carrier"  # numbers, booleans, enumerated codes
ALWAYS = "always"  # ids, references and their displays, contained: whatever the rules say


@dataclass(frozen=True)
class Step:
    kind: int
    plan: Plan | None = None
    rule: PathRule | str | None = None  # the rule that decided; None: uncovered carrier
    element: Element | None = None
    where: str = ""  # the path it was compiled for (keyed tokens and perturbation use it)


@dataclass(eq=False)
class Plan:
    definition: str
    steps: dict[str, Step] = field(default_factory=dict)
    # The walk's view of `steps`: (kind, plan, step) tuples, unpacked faster than read.
    walk: dict[str, tuple[int, Plan | None, Step]] = field(default_factory=dict)
    # Elements R4 requires (min 1), each as the set of its JSON names (a choice has
    # several) and whether they are complex: an object that had one and lost it to the
    # rules gets it back masked (a complex one) or is dropped whole (a primitive).
    required: tuple[tuple[frozenset[str], bool], ...] = ()

    def add(self, name: str, step: Step) -> None:
        self.steps[name] = step
        self.walk[name] = (step.kind, step.plan, step)


class PlanCompiler:
    """Plans of one set of rules, built on first use and kept."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self._shared: dict[str, Plan] = {}
        self._resources: dict[str, Plan] = {}

    def resource_plan(self, resource_type: str) -> Plan:
        plan = self._resources.get(resource_type)
        if plan is None:
            trie = self.rules.trie(resource_type)
            plan = self._resources[resource_type] = Plan(resource_type)
            self._fill(plan, resource_type, trie, resource_type)
            plan.add("resourceType", Step(KEEP, rule=ALWAYS))
            plan.add("id", Step(KEEP, rule=ALWAYS))  # the engine puts the pseudonym in
        return plan

    def _plan(self, definition: str, trie: dict[str, PathNode], where: str) -> Plan:
        if not trie:
            shared = self._shared.get(definition)
            if shared is None:
                shared = self._shared[definition] = Plan(definition)
                self._fill(shared, definition, {}, definition)
            return shared
        plan = Plan(definition)  # under path rules: its own
        self._fill(plan, definition, trie, where)
        return plan

    def _fill(self, plan: Plan, definition: str, trie: dict[str, PathNode], where: str) -> None:
        found = elements(definition)
        for name, element in found.items():
            plan.add(name, self._step(definition, element, trie.get(name), f"{where}.{name}"))
        plan.required = _required_groups(definition, found)

    def _step(self, definition: str, element: Element, node: PathNode | None, where: str) -> Step:
        rules = self.rules
        name, etype = element.name, element.type
        if node is not None and node.rule is not None:
            return _rule_step(node.rule, element, where)
        if definition == "Reference" and name == "reference":
            return Step(REFERENCE, rule=ALWAYS, element=element, where=where)
        if definition == "Reference" and name == "display":
            return Step(DROP, rule=ALWAYS, element=element, where=where)
        if name == "contained" and etype == RESOURCE:
            return Step(CONTAINED, rule=ALWAYS, element=element, where=where)
        children = node.children if node is not None else {}
        rule = rules.datatype_rules.get((definition, name))
        if rule is not None:
            return _rule_step(rule, element, where)
        if name in rules.redact_names:
            return Step(DROP, rule=f"nodesByName('{name}')", element=element, where=where)
        if etype == "Extension" and rules.extension_allow is not None:
            plan = self._plan("Extension", children, where)
            return Step(EXTENSIONS, plan, "nodesByType('Extension')", element, where)
        rule = rules.type_rules.get(etype)
        if rule is not None:
            return _rule_step(rule, element, where)
        if etype == RESOURCE:
            return Step(INLINE_RESOURCE, rule=NOT_A_CARRIER, element=element, where=where)
        if element.is_primitive:
            if element.carries:
                return Step(DROP, rule=None, element=element, where=where)
            return Step(KEEP, rule=NOT_A_CARRIER, element=element, where=where)
        return Step(CHILD, self._plan(etype, children, where), NOT_A_CARRIER, element, where)


@cache
def _required() -> dict[str, list[str]]:
    raw = resources.files("fhir_server.deid").joinpath("data", REQUIRED_FILE).read_bytes()
    return json.loads(raw)


def _required_groups(
    definition: str, found: dict[str, Element]
) -> tuple[tuple[frozenset[str], bool], ...]:
    groups = []
    for name in _required().get(definition, ()):
        if name.endswith("[x]"):
            stem = name[:-3]
            names = [n for n in found if n.startswith(stem) and n[len(stem) :][:1].isupper()]
        else:
            names = [name] if name in found else []
        if names:
            complex_ = all(not found[n].is_primitive for n in names)
            groups.append((frozenset(names), complex_))
    return tuple(groups)


def _rule_step(rule: PathRule, element: Element, where: str) -> Step:
    method = rule.method
    if method == "redact":
        return Step(DROP, rule=rule, element=element, where=where)
    if method == "keep" and "when" not in rule.options:
        kind = KEEP if element.is_primitive else KEEP_TREE
        return Step(kind, rule=rule, element=element, where=where)
    if method == "dateShift":
        return Step(SHIFT, rule=rule, element=element, where=where)
    return Step(APPLY, rule=rule, element=element, where=where)


def uncovered(compiler: PlanCompiler, resource_type: str, depth: int = 6) -> list[str]:
    """Paths of `resource_type` (to `depth` levels; a datatype is not entered again below
    itself) whose element can carry text, an identifier, a date or a URI and that no rule
    decides: what the coverage test of the rules reports."""
    found: list[str] = []

    def visit(plan: Plan, path: str, seen: tuple[str, ...], level: int) -> None:
        for name, step in plan.steps.items():
            element = step.element
            if element is None:
                continue
            if step.rule is None and element.type in CARRIERS:
                found.append(f"{path}.{name} ({element.type})")
            child = step.plan
            if child is not None and level < depth and child.definition not in seen:
                visit(child, f"{path}.{name}", (*seen, child.definition), level + 1)

    visit(compiler.resource_plan(resource_type), resource_type, (resource_type,), 0)
    return found


def decided(step: Step) -> Any:
    """A short description of what decided a step (for error messages and tests)."""
    rule = step.rule
    if isinstance(rule, PathRule):
        path = ".".join(rule.path)
        return f"{rule.resource_type}{'.' if path else ''}{path} {rule.method}"
    return rule
