"""Which search criteria the facade must answer on the de-identified view, and how to
narrow the storage search that finds their candidates.

A facade search must answer as if it ran over what the recipient sees. Criteria on data
the view does not change (codes, statuses, quantities, references through pseudonym
translation, `_id`) run in storage as they are. The others ("view criteria") are checked
on each candidate's de-identified resource (facade.py); storage only gets a relaxed form
that keeps every candidate whose view could match:

- dates: the searched period widened by the largest change de-identification can make to
  a date (`date_margin`), so the candidate set stays near the answer;
- everything else (strings, identifiers, telecom, `_source`, `_security`, composites with
  a date or string part, `:identifier` on references, `:missing`, dates with `ne`/`ap`):
  dropped from the storage search.

A parameter is a view parameter by its type (`string`, `date`), by its code (identifiers,
telecom, meta elements the engine rewrites), or because a path or `nodesByName` rule of
the recipient's rules redacts, generalizes, pseudonymizes or perturbs an element its
expression reads (so a rule redacting e.g. `DocumentReference.content.attachment.url`
also protects the `location` uri parameter). The expression test is syntactic and errs
towards "view": a view parameter costs a post-filter, a missed one would be an oracle.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from fhir_server.deid.plan import CHILD, KEEP, KEEP_TREE, REFERENCE, Plan, PlanCompiler
from fhir_server.deid.rules import Rules
from fhir_server.search.query import ChainClause, Clause, HasClause
from fhir_server.search.types import SearchParam
from fhir_server.search.values import (
    CompositeValue,
    DateValue,
    ReferenceValue,
    StringValue,
)

# Strings and dates are changed by the default profile's type rules everywhere; so are
# uris (redacted unless coded: a `url` or `location` search on stored values would be an
# oracle on what the view removed).
VIEW_PARAM_TYPES = frozenset({"string", "date", "uri"})
# Searched on the view when the rules mark glucose values (value_mark.py).
MARKED_VALUE_TYPES = frozenset({"quantity", "number", "composite"})
# Changed by the engine whatever the rules: identifiers (all removed, one pseudonymous one
# added on Patient), contact points, meta.source / lastUpdated, meta.security (+PSEUDED).
VIEW_CODES = frozenset(
    {"identifier", "telecom", "phone", "email", "_lastUpdated", "_source", "_security"}
)
# Full text: refused on the facade (its index holds the stored, identifying text).
UNSUPPORTED_CODES = frozenset({"_text", "_content"})
CHANGING_METHODS = frozenset({"redact", "generalize", "pseudonymize", "perturb"})
DAY = 86_400.0
_PATH = re.compile(r"[A-Z][A-Za-z]+(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def date_margin(rules: Rules) -> float:
    """Seconds by which a de-identified date can differ from the stored one, at most.

    The keyed shift is at most `dateShiftDays`; a month-precision date is shifted from its
    15th and truncated, which moves its period by up to a month more; a date generalized
    to its year moves its ends by up to a year; the watermark rewrites the seconds."""
    days = rules.date_shift_days if rules.shift_dates else 0
    slack = 32
    for rule in rules.path_rules:
        if rule.method == "generalize" and "precision" in rule.options:
            slack = max(slack, 367)
    return (days + slack) * DAY + 60


class ViewPolicy:
    """Classifies the criteria of facade searches for one set of rules."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.margin = date_margin(rules)
        self._touched: dict[tuple[str, str], bool] = {}
        self._plans = PlanCompiler(rules)

    # -- classification -------------------------------------------------------------------

    def is_view_param(self, param: SearchParam, resource_type: str) -> bool:
        if param.code == "_id":
            return False
        if param.type in VIEW_PARAM_TYPES or param.code in VIEW_CODES:
            return True
        if (
            self.rules.value_watermark is not None
            and resource_type == "Observation"
            and param.type in MARKED_VALUE_TYPES
            and "value" in (param.expression or "")
        ):
            return True
        return self._rules_touch(param, resource_type)

    def needs_view(self, criterion: Any, resource_type: str) -> bool:
        """Whether `criterion` must be checked on the de-identified view."""
        if isinstance(criterion, ChainClause):
            return any(self.needs_view(criterion.inner, t) for t in criterion.target_types)
        if isinstance(criterion, HasClause):
            return self.needs_view(criterion.inner, criterion.resource_type)
        if not isinstance(criterion, Clause):
            return False
        if self.is_view_param(criterion.param, resource_type):
            return True
        if criterion.modifier == "text":
            return True  # the text of codes: kept on the view only where coded
        for value in criterion.values:
            if isinstance(value, ReferenceValue) and (
                value.identifier_value is not None or value.identifier_system is not None
            ):
                return True
            if isinstance(value, CompositeValue) and any(
                isinstance(part, DateValue | StringValue) for part in value.parts
            ):
                return True
        return False

    def relax(self, criterion: Any) -> Any | None:
        """What storage may evaluate of a view criterion: a criterion every candidate
        whose view matches also satisfies on stored data, or None (no storage filter)."""
        if isinstance(criterion, ChainClause | HasClause):
            inner = self.relax(criterion.inner)
            return None if inner is None else replace(criterion, inner=inner)
        if criterion.param.type != "date" or criterion.modifier is not None:
            return None
        widened = [widen_date(v, self.margin) for v in criterion.values]
        if any(v is None for v in widened):
            return None
        return replace(criterion, values=tuple(widened))

    def _rules_touch(self, param: SearchParam, resource_type: str) -> bool:
        key = (resource_type, param.code)
        touched = self._touched.get(key)
        if touched is None:
            expression = param.expression or ""
            touched = _expression_touched(expression, resource_type, self.rules)
            touched = touched or _plan_touches(self._plans, expression, resource_type)
            self._touched[key] = touched
        return touched


def widen_date(value: Any, margin: float) -> DateValue | None:
    """A date value that every stored period matches when its de-identified period (moved
    by at most `margin` seconds at each end) matches `value`; None for `ne` and `ap`,
    which cannot be widened that way."""
    if not isinstance(value, DateValue):
        return None
    prefix = value.prefix
    if prefix == "eq":
        return replace(value, low=value.low - margin, high=value.high + margin)
    if prefix in ("gt", "sa"):  # on the stored period's high (gt) or low (sa) end
        return replace(value, high=value.high - margin)
    if prefix in ("lt", "eb"):
        return replace(value, low=value.low + margin)
    if prefix == "ge":
        return replace(value, low=value.low - margin)
    if prefix == "le":
        return replace(value, high=value.high + margin)
    return None


def _expression_touched(expression: str, resource_type: str, rules: Rules) -> bool:
    paths = [
        path.split(".")
        for path in _PATH.findall(expression)
        if path.split(".", 1)[0] in (resource_type, "Resource")
    ]
    if rules.redact_names and any(set(segments[1:]) & rules.redact_names for segments in paths):
        return True
    if rules.extension_allow is not None and "extension" in expression.lower():
        return True
    for rule in rules.path_rules:
        if rule.method not in CHANGING_METHODS:
            continue
        if rule.resource_type not in (resource_type, "Resource"):
            continue
        for segments in paths:
            elements = segments[1:]
            overlap = min(len(elements), len(rule.path))
            if all(_same_element(rule.path[i], elements[i]) for i in range(overlap)):
                return True
    return False


# What a search reads of a complex element (token, quantity, reference, uri values); a
# display, text or unit the view drops does not change what these parameters match.
_SEARCHED_PARTS = ("code", "system", "value", "coding", "reference")
_UNCHANGED = (KEEP, KEEP_TREE, REFERENCE)


def _plan_touches(plans: PlanCompiler, expression: str, resource_type: str) -> bool:
    """Whether the compiled rules change what an expression's paths search: an element on
    the way (or a searched part of the last one) that the view drops, rewrites or filters."""
    try:
        root = plans.resource_plan(resource_type)
    except KeyError:
        return True  # not an R4 type: nothing to say it is unchanged
    for path in _PATH.findall(expression):
        head, *names = path.split(".")
        if head not in (resource_type, "Resource") or not names:
            continue
        if _path_touched(root, names):
            return True
    return False


def _path_touched(plan: Plan, names: list[str]) -> bool:
    name, rest = names[0], names[1:]
    steps = [step for key, step in plan.steps.items() if key != "id" and _same_element(key, name)]
    for step in steps:
        if step.kind in _UNCHANGED:
            continue
        if step.kind != CHILD or step.plan is None:
            return True
        if rest:
            if _path_touched(step.plan, rest):
                return True
        elif any(
            _path_touched(step.plan, [part]) for part in _SEARCHED_PARTS if part in step.plan.steps
        ):
            return True
    return False


def _same_element(rule_name: str, expression_name: str) -> bool:
    """`valueQuantity` (a rule on a choice element) is `value` in an expression."""
    if rule_name == expression_name:
        return True
    shorter, longer = sorted((rule_name, expression_name), key=len)
    return longer.startswith(shorter) and longer[len(shorter)].isupper()
