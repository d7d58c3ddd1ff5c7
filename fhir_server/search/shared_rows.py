"""Search parameters that are unions of other parameters of the same type.

R4 defines Observation's `combo-*` parameters as the union of a plain parameter and its
`component-*` twin: `combo-code` is `Observation.code | Observation.component.code`, the
branches of `code` and `component-code` together. Indexing each of them would store every
code, value and code-value pair of an Observation twice (five of the seventeen index rows of
a CGM reading). A backend that supports it stores only the rows of the branches no other
parameter covers (usually none) and answers `combo-code` from the rows of `combo-code`,
`code` and `component-code` together.

Only official parameters take part, so that the split of a stored parameter never changes
after data was written: a custom SearchParameter neither shares rows nor lends them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from fhir_server.search.fhirpath_split import split_union
from fhir_server.search.types import SearchParam

# Kinds whose index rows carry nothing of the parameter but its pid: a row of `code` is the
# row `combo-code` would have had. (Dates and references have per-parameter bookkeeping:
# date spans, compartment owners, includes.)
SHAREABLE_TYPES = frozenset({"token", "quantity", "composite"})


@dataclass(frozen=True, slots=True)
class SharedRows:
    """`bases`: parameters whose rows are also this parameter's rows; `remainder`: the
    expression of the branches left to index under the parameter itself (None: none)."""

    bases: tuple[str, ...]
    remainder: str | None


def shared_rows(
    param: SearchParam, same_type: Mapping[str, SearchParam], official: Collection[SearchParam]
) -> SharedRows | None:
    """How `param` can reuse the rows of other parameters of its resource type, or None."""
    if param.type not in SHAREABLE_TYPES or not param.expression or param not in official:
        return None
    left = split_union(param.expression)
    if len(left) < 2:
        return None
    candidates = []
    for other in same_type.values():
        if (
            other is param
            or other.type != param.type
            or not other.expression
            or other not in official
            or _components(other) != _components(param)
        ):
            continue
        branches = split_union(other.expression)
        if len(branches) < len(left):
            candidates.append((other.code, branches))
    # The widest first: `code` and `component-code` together cover `combo-code`.
    candidates.sort(key=lambda c: (-len(c[1]), c[0]))
    bases = []
    for code, branches in candidates:
        if all(b in left for b in branches):
            bases.append(code)
            left = [b for b in left if b not in branches]
    if not bases:
        return None
    return SharedRows(tuple(bases), " | ".join(left) if left else None)


def _components(param: SearchParam) -> tuple[str, ...]:
    # Composite rows hold the component values only, so the components must be the same.
    return tuple(c.expression for c in param.components)
