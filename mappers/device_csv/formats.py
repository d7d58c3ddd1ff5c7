"""The named formats and how one is recognised from its header."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources

from . import dexcom, libre
from .common import Collector, Options
from .declarative import Mapping, load_mapping, map_rows
from .localised import english_header
from .table import Table

RowMapper = Callable[[Table, Options, Collector], None]


def _as_read(cells: list[str]) -> list[str]:
    return cells


@dataclass(frozen=True)
class Format:
    """A named format. `header_names` renames a header's cells before detection and
    column lookup (the vendors' localised headers to their English names)."""

    name: str
    is_header: Callable[[list[str]], bool]
    map_rows: RowMapper
    delimiter: str | None = None
    timezone: str | None = None
    header_names: Callable[[list[str]], list[str]] = _as_read

    def recognises(self, cells: list[str]) -> bool:
        return self.is_header(self.header_names(cells))


def mapping_format(mapping: Mapping) -> Format:
    def rows(table: Table, options: Options, out: Collector) -> None:
        map_rows(mapping, table, options, out)

    return Format(mapping.name, mapping.is_header, rows, mapping.delimiter, mapping.timezone)


@cache
def builtin_mappings() -> dict[str, Mapping]:
    folder = resources.files("mappers.device_csv.mappings")
    found = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            mapping = load_mapping(json.loads(entry.read_text(encoding="utf-8")))
            found[mapping.name] = mapping
    return found


@cache
def registry() -> dict[str, Format]:
    """Every named format, in the order auto-detection tries them."""
    formats = [
        Format(libre.NAME, libre.is_header, libre.map_rows, header_names=english_header),
        Format(dexcom.NAME, dexcom.is_header, dexcom.map_rows, header_names=english_header),
        *(mapping_format(m) for m in builtin_mappings().values()),
    ]
    return {f.name: f for f in formats}
