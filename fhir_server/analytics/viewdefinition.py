"""A ViewDefinition (SQL on FHIR v2) checked and compiled once, ready to run on resources.

`compile_view(view)` checks the structure the specification's ViewDefinition profile asks
for (a `resource`, `select` elements made of `column`, `select`, `forEach`,
`forEachOrNull`, `repeat`, `unionAll`; columns with a `name` and `path`; `where` paths;
constants with exactly one `value[x]`; `unionAll` branches with the same columns in the
same order; column names unique and database-friendly) and compiles every FHIRPath. Any
violation is a ViewDefinitionError naming where it is (`select[1].column[0].path`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from fhir_server.analytics.fhirpath import PathError, PathFunction, compile_path

_COLUMN_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
ROW_INDEX = "rowIndex"
_STATUSES = frozenset({"draft", "active", "retired", "unknown"})


class ViewDefinitionError(ValueError):
    """The ViewDefinition breaks the specification (message names the element)."""


@dataclass(frozen=True)
class Column:
    name: str
    path: str
    evaluate: PathFunction
    collection: bool
    type: str | None


@dataclass
class Select:
    columns: list[Column] = field(default_factory=list)
    selects: list[Select] = field(default_factory=list)
    union_all: list[Select] = field(default_factory=list)
    for_each: PathFunction | None = None
    or_null: bool = False
    repeat: list[PathFunction] | None = None

    def column_names(self) -> list[str]:
        names = [c.name for c in self.columns]
        for child in self.selects:
            names += child.column_names()
        if self.union_all:
            names += self.union_all[0].column_names()
        return names

    def column_types(self) -> list[tuple[str, str | None, bool]]:
        out = [(c.name, c.type, c.collection) for c in self.columns]
        for child in self.selects:
            out += child.column_types()
        if self.union_all:
            out += self.union_all[0].column_types()
        return out


@dataclass
class CompiledView:
    resource: str
    name: str | None
    select: Select
    where: list[tuple[str, PathFunction]]
    constants: dict[str, list[Any]]
    definition: dict

    @property
    def columns(self) -> list[str]:
        return self.select.column_names()

    @property
    def column_types(self) -> list[tuple[str, str | None, bool]]:
        return self.select.column_types()


def compile_view(view: Any) -> CompiledView:
    if not isinstance(view, dict):
        raise ViewDefinitionError("a ViewDefinition is a JSON object")
    if view.get("resourceType", "ViewDefinition") != "ViewDefinition":
        raise ViewDefinitionError("resourceType must be ViewDefinition")
    resource = view.get("resource")
    if not isinstance(resource, str) or not re.match(r"^[A-Z][A-Za-z]+$", resource):
        raise ViewDefinitionError("resource: the resource type the view reads is required")
    status = view.get("status")
    if status is not None and status not in _STATUSES:
        raise ViewDefinitionError(f"status: {status!r} is not a publication status")
    constants = _constants(view.get("constant", []))
    variables = frozenset(constants) | {ROW_INDEX}
    selects = view.get("select")
    if not isinstance(selects, list) or not selects:
        raise ViewDefinitionError("select: at least one select is required")
    root = Select(selects=[_select(s, f"select[{i}]", variables) for i, s in enumerate(selects)])
    names = root.column_names()
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ViewDefinitionError(f"column names must be unique: {', '.join(duplicates)}")
    where = []
    for i, clause in enumerate(_list(view.get("where", []), "where")):
        if not isinstance(clause, dict) or not isinstance(clause.get("path"), str):
            raise ViewDefinitionError(f"where[{i}].path is required")
        where.append((clause["path"], _compile(clause["path"], f"where[{i}].path", variables)))
    name = view.get("name")
    return CompiledView(resource, name if isinstance(name, str) else None, root, where,
                        constants, view)  # fmt: skip


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise ViewDefinitionError(f"{where} must be a list")
    return value


_STRING_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'")
_EXTERNAL_CONSTANT = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)")
_BUILT_IN_CONSTANTS = frozenset({"resource", "rootResource", "context", "ucum", "sct", "loinc"})


def _compile(expression: Any, where: str, variables: frozenset[str]) -> PathFunction:
    if not isinstance(expression, str) or not expression.strip():
        raise ViewDefinitionError(f"{where}: a FHIRPath expression (a string) is required")
    named = set(_EXTERNAL_CONSTANT.findall(_STRING_LITERAL.sub("''", expression)))
    undefined = sorted(named - variables - _BUILT_IN_CONSTANTS)
    if undefined:
        raise ViewDefinitionError(f"{where}: undefined constant(s) %{', %'.join(undefined)}")
    try:
        return compile_path(expression, variables)
    except PathError as exc:
        raise ViewDefinitionError(f"{where}: {exc}") from exc


def _constants(items: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for i, constant in enumerate(_list(items, "constant")):
        if not isinstance(constant, dict) or not isinstance(constant.get("name"), str):
            raise ViewDefinitionError(f"constant[{i}].name is required")
        values = [k for k in constant if k.startswith("value")]
        if len(values) != 1:
            raise ViewDefinitionError(f"constant[{i}] ({constant['name']}) needs one value[x]")
        if not _COLUMN_NAME.match(constant["name"]):
            raise ViewDefinitionError(f"constant[{i}].name is not a valid name")
        out[constant["name"]] = [constant[values[0]]]
    return out


def _select(spec: Any, where: str, variables: frozenset[str]) -> Select:
    if not isinstance(spec, dict):
        raise ViewDefinitionError(f"{where} must be an object")
    known = {"column", "select", "forEach", "forEachOrNull", "repeat", "unionAll"}
    unknown = sorted(set(spec) - known - {"id", "extension"})
    if unknown:
        raise ViewDefinitionError(f"{where}: unknown element(s) {', '.join(unknown)}")
    iterators = [k for k in ("forEach", "forEachOrNull", "repeat") if k in spec]
    if len(iterators) > 1:
        raise ViewDefinitionError(f"{where}: only one of forEach, forEachOrNull, repeat")
    select = Select()
    if "forEach" in spec or "forEachOrNull" in spec:
        key = iterators[0]
        select.for_each = _compile(spec[key], f"{where}.{key}", variables)
        select.or_null = key == "forEachOrNull"
    if "repeat" in spec:
        paths = _list(spec["repeat"], f"{where}.repeat")
        if not paths:
            raise ViewDefinitionError(f"{where}.repeat needs at least one path")
        select.repeat = [
            _compile(p, f"{where}.repeat[{i}]", variables) for i, p in enumerate(paths)
        ]
    for i, column in enumerate(_list(spec.get("column", []), f"{where}.column")):
        select.columns.append(_column(column, f"{where}.column[{i}]", variables))
    for i, child in enumerate(_list(spec.get("select", []), f"{where}.select")):
        select.selects.append(_select(child, f"{where}.select[{i}]", variables))
    for i, child in enumerate(_list(spec.get("unionAll", []), f"{where}.unionAll")):
        select.union_all.append(_select(child, f"{where}.unionAll[{i}]", variables))
    if select.union_all:
        first = select.union_all[0].column_names()
        for i, branch in enumerate(select.union_all[1:], start=1):
            if branch.column_names() != first:
                raise ViewDefinitionError(
                    f"{where}.unionAll[{i}]: its columns {branch.column_names()} differ from "
                    f"the first branch's {first} (names and order must match)"
                )
    if not (select.columns or select.selects or select.union_all):
        raise ViewDefinitionError(f"{where}: a select needs a column, select or unionAll")
    return select


def _column(spec: Any, where: str, variables: frozenset[str]) -> Column:
    if not isinstance(spec, dict):
        raise ViewDefinitionError(f"{where} must be an object")
    name = spec.get("name")
    if not isinstance(name, str) or not _COLUMN_NAME.match(name):
        raise ViewDefinitionError(
            f"{where}.name: a name of letters, digits and _ starting with a letter is required"
        )
    collection = spec.get("collection", False)
    if not isinstance(collection, bool):
        raise ViewDefinitionError(f"{where}.collection must be true or false")
    type_name = spec.get("type")
    if type_name is not None and not isinstance(type_name, str):
        raise ViewDefinitionError(f"{where}.type must be a string")
    path = spec.get("path")
    return Column(name, path, _compile(path, f"{where}.path", variables), collection, type_name)
