"""Run a compiled ViewDefinition over resources: rows as tuples in the view's column order.

The semantics are those of SQL on FHIR v2 ("Processing algorithm"): a resource of the
view's type that passes every `where` yields the cross product of its `select` elements'
rows; `forEach` repeats a select per item of its path (none: no row), `forEachOrNull` gives
one row of nulls instead, `repeat` walks its paths recursively (depth first, each item
before its descendants), `unionAll` concatenates its branches' rows, and `%rowIndex` is the
0-based position of the item being iterated (0 outside any iteration).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import product
from typing import Any

from fhir_server.analytics.fhirpath import PathError, Variables
from fhir_server.analytics.viewdefinition import ROW_INDEX, CompiledView, Select

Row = tuple[Any, ...]


class ViewRunError(ValueError):
    """The data makes the view fail (a `where` that is not boolean, several values in a
    column that is not a collection)."""


def run_view(view: CompiledView, resources: Iterable[dict]) -> Iterator[Row]:
    """Rows of `view` over `resources` (those of other types are skipped)."""
    top: dict[str, list[Any]] = {**view.constants, ROW_INDEX: [0]}
    for resource in resources:
        if resource.get("resourceType") != view.resource:
            continue
        if view.where and not _passes(view, resource, top):
            continue
        yield from _rows(view.select, resource, resource, top)


def run_view_keyed(view: CompiledView, items: Iterable[tuple[str, dict]]) -> Iterator[Row]:
    """Rows of `view` over (key, resource) pairs, each row with its resource's key last."""
    top: dict[str, list[Any]] = {**view.constants, ROW_INDEX: [0]}
    for key, resource in items:
        if resource.get("resourceType") != view.resource:
            continue
        if view.where and not _passes(view, resource, top):
            continue
        for row in _rows(view.select, resource, resource, top):
            yield (*row, key)


def rows_as_dicts(view: CompiledView, resources: Iterable[dict]) -> Iterator[dict[str, Any]]:
    names = view.columns
    for row in run_view(view, resources):
        yield dict(zip(names, row, strict=True))


def _passes(view: CompiledView, resource: dict, variables: Variables) -> bool:
    for path, evaluate in view.where:
        result = _evaluate(evaluate, resource, resource, variables, path)
        if not result:
            return False
        if len(result) != 1 or not isinstance(result[0], bool):
            raise ViewRunError(f"where path {path!r} must give a boolean, gave {result[:3]!r}")
        if result[0] is not True:
            return False
    return True


def _evaluate(evaluate: Any, node: Any, resource: dict, variables: Variables, path: str) -> list:
    try:
        return evaluate(node, resource, variables)
    except PathError as exc:
        raise ViewRunError(str(exc)) from exc


def _rows(select: Select, node: Any, resource: dict, variables: Variables) -> list[Row]:
    if select.for_each is not None:
        items = _evaluate(select.for_each, node, resource, variables, "forEach")
    elif select.repeat is not None:
        items = list(_repeat(select, node, resource, variables))
    else:
        return _node_rows(select, node, resource, variables)
    if not items:
        return [_null_row(select)] if select.or_null else []
    rows: list[Row] = []
    for index, item in enumerate(items):
        rows += _node_rows(select, item, resource, {**variables, ROW_INDEX: [index]})
    return rows


def _null_row(select: Select) -> Row:
    """forEachOrNull over nothing: one row of nulls, where `%rowIndex` is 0 (the position
    the row stands for: the specification's row_index case)."""
    own = tuple(0 if c.path.strip() == "%rowIndex" else None for c in select.columns)
    return own + (None,) * (len(select.column_names()) - len(own))


def _repeat(select: Select, node: Any, resource: dict, variables: Variables) -> Iterator[Any]:
    for path in select.repeat or ():
        for child in _evaluate(path, node, resource, variables, "repeat"):
            yield child
            yield from _repeat(select, child, resource, variables)


def _node_rows(select: Select, node: Any, resource: dict, variables: Variables) -> list[Row]:
    own: list[Any] = []
    for column in select.columns:
        values = _evaluate(column.evaluate, node, resource, variables, column.path)
        if column.collection:
            own.append(values)
        elif len(values) > 1:
            raise ViewRunError(
                f"column {column.name!r} gave {len(values)} values; set collection: true "
                f"to keep them all"
            )
        else:
            own.append(values[0] if values else None)
    parts: list[list[Row]] = [[tuple(own)]]
    for child in select.selects:
        child_rows = _rows(child, node, resource, variables)
        if not child_rows:
            return []
        parts.append(child_rows)
    if select.union_all:
        union: list[Row] = []
        for branch in select.union_all:
            union += _rows(branch, node, resource, variables)
        if not union:
            return []
        parts.append(union)
    if len(parts) == 1:
        return parts[0]
    return [sum(combination, ()) for combination in product(*parts)]
