"""Search result parameters: _sort, _count, _total, _summary, _elements, _include,
_revinclude, _contained, _containedType, _format, _pretty and the paging cursor.

They shape the answer rather than filter it; a malformed one is still a SearchError (400),
because silently answering a different question than the one asked misleads the client.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from fhir_server.search.errors import SearchError
from fhir_server.search.lookup import ANY_RESOURCE, ParamLookup
from fhir_server.search.types import SearchParam
from fhir_server.search.values import is_resource_type_name

DEFAULT_COUNT = 50
MAX_COUNT = 1000

RESULT_PARAMETERS = frozenset(
    {
        "_sort",
        "_count",
        "_total",
        "_summary",
        "_elements",
        "_include",
        "_revinclude",
        "_contained",
        "_containedType",
        "_format",
        "_pretty",
        "_cursor",
    }
)
# Parameters that make sense once: a second, different value is a contradiction.
_SINGLE_VALUED = RESULT_PARAMETERS - {"_sort", "_elements", "_include", "_revinclude"}
# Sort keys every resource has, whether or not the registry lists them.
_ALWAYS_SORTABLE = ("_id", "_lastUpdated")
_UNSORTABLE_TYPES = ("composite", "special")

_TOTAL_VALUES = ("none", "estimate", "accurate")
_SUMMARY_VALUES = ("true", "text", "data", "count", "false")
_CONTAINED_VALUES = ("true", "false", "both")
_CONTAINED_TYPE_VALUES = ("container", "contained")
_ELEMENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z][A-Za-z0-9_]*)*(?:\[x\])?")
_COUNT = re.compile(r"\+?\d+")


@dataclass(frozen=True, slots=True)
class SortKey:
    code: str
    descending: bool
    param: SearchParam | None  # None for _id / _lastUpdated when the registry lacks them

    def to_param(self) -> str:
        return ("-" if self.descending else "") + self.code


@dataclass(frozen=True, slots=True)
class Include:
    """One _include / _revinclude.

    `source_type` is the type holding the reference parameter (`*` for `_include=*`),
    `param_code` the reference parameter (`*` for all of that type's references)."""

    source_type: str
    param_code: str
    target_type: str | None
    iterate: bool
    reverse: bool
    param: SearchParam | None

    @property
    def key(self) -> str:
        return ("_revinclude" if self.reverse else "_include") + (
            ":iterate" if self.iterate else ""
        )

    def to_param(self) -> str:
        if self.source_type == "*":
            return "*"
        text = f"{self.source_type}:{self.param_code}"
        return f"{text}:{self.target_type}" if self.target_type else text


@dataclass(frozen=True, slots=True)
class ResultParams:
    sort: tuple[SortKey, ...] = ()
    count: int = DEFAULT_COUNT
    count_given: bool = False
    total: str | None = None
    summary: str | None = None
    elements: tuple[str, ...] = ()
    include: tuple[Include, ...] = ()
    revinclude: tuple[Include, ...] = ()
    contained: str | None = None
    contained_type: str | None = None
    format: str | None = None
    pretty: bool | None = None
    cursor: str | None = None  # opaque paging token, passed through untouched

    def self_link_items(self) -> list[tuple[str, str]]:
        """The result parameters in canonical order, without the paging cursor."""
        items: list[tuple[str, str]] = []
        if self.sort:
            items.append(("_sort", ",".join(key.to_param() for key in self.sort)))
        if self.count_given:
            items.append(("_count", str(self.count)))
        for name, value in (("_total", self.total), ("_summary", self.summary)):
            if value is not None:
                items.append((name, value))
        if self.elements:
            items.append(("_elements", ",".join(self.elements)))
        items.extend((include.key, include.to_param()) for include in self.include)
        items.extend((include.key, include.to_param()) for include in self.revinclude)
        for name, value in (
            ("_contained", self.contained),
            ("_containedType", self.contained_type),
            ("_format", self.format),
        ):
            if value is not None:
                items.append((name, value))
        if self.pretty is not None:
            items.append(("_pretty", "true" if self.pretty else "false"))
        return items


@dataclass
class ResultParamsBuilder:
    """Collects result parameters item by item while the query string is walked.

    `types` are the resource types searched (one for a type-level search; the _type list,
    or ANY_RESOURCE, for a system-level one)."""

    registry: ParamLookup
    types: tuple[str, ...]
    warnings: list[str] = field(default_factory=list)
    _fields: dict = field(default_factory=dict)
    _seen: set[str] = field(default_factory=set)
    _sort: list[SortKey] = field(default_factory=list)
    _elements: list[str] = field(default_factory=list)
    _include: list[Include] = field(default_factory=list)
    _revinclude: list[Include] = field(default_factory=list)

    def add(self, key: str, value: str) -> None:
        name, _, modifier = key.partition(":")
        if modifier and name not in ("_include", "_revinclude"):
            raise SearchError(f"{name} takes no modifier (got :{modifier})", key)
        if name in _SINGLE_VALUED:
            if name in self._seen:
                raise SearchError(f"{name} may be given only once", name)
            self._seen.add(name)
        if name == "_sort":
            self._sort.extend(self._parse_sort(value))
        elif name == "_count":
            self._fields["count"] = self._parse_count(value)
            self._fields["count_given"] = True
        elif name == "_total":
            self._fields["total"] = _one_of(name, value, _TOTAL_VALUES)
        elif name == "_summary":
            self._fields["summary"] = _one_of(name, value, _SUMMARY_VALUES)
        elif name == "_elements":
            self._elements.extend(self._parse_elements(value))
        elif name in ("_include", "_revinclude"):
            self._add_includes(name, modifier, value)
        elif name == "_contained":
            self._fields["contained"] = _one_of(name, value, _CONTAINED_VALUES)
        elif name == "_containedType":
            self._fields["contained_type"] = _one_of(name, value, _CONTAINED_TYPE_VALUES)
        elif name == "_format":
            if not value:
                raise SearchError("_format needs a value", name)
            self._fields["format"] = value
        elif name == "_pretty":
            self._fields["pretty"] = _one_of(name, value, ("true", "false")) == "true"
        elif name == "_cursor":
            self._fields["cursor"] = value
        else:  # pragma: no cover - callers only pass RESULT_PARAMETERS
            raise SearchError(f"not a result parameter: {name}", name)

    def build(self) -> ResultParams:
        return ResultParams(
            sort=tuple(self._sort),
            elements=tuple(dict.fromkeys(self._elements)),
            include=tuple(dict.fromkeys(self._include)),
            revinclude=tuple(dict.fromkeys(self._revinclude)),
            **self._fields,
        )

    def _parse_count(self, value: str) -> int:
        if not _COUNT.fullmatch(value):
            raise SearchError(f"_count must be a non-negative integer, got {value!r}", "_count")
        count = int(value)
        if count > MAX_COUNT:
            self.warnings.append(f"_count={value} is above the maximum; {MAX_COUNT} used instead")
            return MAX_COUNT
        return count

    def _parse_sort(self, value: str) -> Iterable[SortKey]:
        for raw in value.split(","):
            descending = raw.startswith("-")
            code = raw[1:] if descending else raw
            if not code:
                raise SearchError(f"empty sort key in {value!r}", "_sort")
            param = self._common_param(code)
            if param is None and code not in _ALWAYS_SORTABLE:
                raise SearchError(f"cannot sort on unknown parameter {code!r}", "_sort")
            if param is not None and param.type in _UNSORTABLE_TYPES:
                raise SearchError(f"cannot sort on {param.type} parameter {code!r}", "_sort")
            yield SortKey(code, descending, param)

    def _common_param(self, code: str) -> SearchParam | None:
        found = [self.registry.get(resource_type, code) for resource_type in self.types]
        if not found or any(param is None for param in found):
            return None
        if len({param.type for param in found if param is not None}) > 1:
            return None
        return found[0]

    def _parse_elements(self, value: str) -> Iterable[str]:
        for element in value.split(","):
            element = element.strip()
            if not _ELEMENT.fullmatch(element):
                raise SearchError(f"_elements: not an element name: {element!r}", "_elements")
            yield element

    def _add_includes(self, name: str, modifier: str, value: str) -> None:
        if modifier not in ("", "iterate", "recurse"):
            raise SearchError(f"{name} takes :iterate (or :recurse), not :{modifier}", name)
        # :recurse is the STU3 spelling of :iterate; both mean the same here.
        iterate = modifier in ("iterate", "recurse")
        reverse = name == "_revinclude"
        target = self._revinclude if reverse else self._include
        for text in value.split(","):
            target.append(self._parse_include(name, text.strip(), iterate, reverse))

    def _parse_include(self, name: str, text: str, iterate: bool, reverse: bool) -> Include:
        if text == "*":
            return Include("*", "*", None, iterate, reverse, None)
        parts = text.split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise SearchError(f"{name} takes Type:param[:TargetType] or *, got {text!r}", name)
        source_type, param_code = parts[0], parts[1]
        target_type = parts[2] if len(parts) == 3 else None
        for type_name in (source_type, target_type):
            if type_name is not None and not is_resource_type_name(type_name):
                raise SearchError(f"{name}: not a resource type: {type_name!r}", name)
        searching_any = self.types == (ANY_RESOURCE,)
        if not reverse and not iterate and not searching_any and source_type not in self.types:
            raise SearchError(
                f"{name}={text}: {source_type} is not the type searched ({', '.join(self.types)});"
                " use :iterate to include from included resources",
                name,
            )
        if param_code == "*":
            return Include(source_type, "*", target_type, iterate, reverse, None)
        param = self.registry.get(source_type, param_code)
        if param is None:
            raise SearchError(f"{name}: {source_type} has no search parameter {param_code!r}", name)
        if param.type != "reference":
            raise SearchError(f"{name}: {source_type}:{param_code} is not a reference", name)
        if target_type is not None and param.target and target_type not in param.target:
            raise SearchError(
                f"{name}: {source_type}:{param_code} cannot refer to a {target_type}", name
            )
        if (
            reverse
            and not iterate
            and not searching_any
            and param.target
            and not set(self.types) & set(param.target)
        ):
            raise SearchError(
                f"{name}: {source_type}:{param_code} never refers to {', '.join(self.types)}", name
            )
        return Include(source_type, param_code, target_type, iterate, reverse, param)


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise SearchError(f"{name} must be one of {', '.join(allowed)}; got {value!r}", name)
    return value
