"""Find the header row and separator of an export, then read its data rows with line numbers."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter

from .errors import RejectedRow

DELIMITERS = (",", ";", "\t", "|")
HEADER_SEARCH_LINES = 40


@dataclass
class Table:
    """An export cut into: the lines before the header, the header, and the data rows.

    `rows` holds (line number, cells) for every non-blank data row; a row the csv module
    cannot read ends the table and is reported in `unreadable`.
    """

    delimiter: str
    header: list[str]
    header_line: int
    preamble: list[list[str]]
    rows: list[tuple[int, list[str]]] = field(default_factory=list)
    unreadable: list[RejectedRow] = field(default_factory=list)

    def column(self, *names: str, prefix: bool = False) -> int | None:
        """Index of the first header cell equal to (or starting with) one of `names`."""
        lowered = [cell.lower() for cell in self.header]
        for name in names:
            name = name.lower()
            for index, cell in enumerate(lowered):
                if cell == name or (prefix and cell.startswith(name)):
                    return index
        return None


def picker(columns: tuple[int | None, ...]) -> Callable[[list[str]], tuple[str, ...]]:
    """A function giving a row's cells at `columns` as they are (not stripped: the caller
    strips what it uses); "" for a column the header lacks (None) or the row is too short
    to have. One C-level lookup per row."""

    def general(cells: list[str]) -> tuple[str, ...]:
        return tuple(cells[c] if c is not None and c < len(cells) else "" for c in columns)

    present = [c for c in columns if c is not None]
    if len(present) < 2 or len(present) < len(columns):
        return general
    get = itemgetter(*columns)
    needed = max(present) + 1

    def pick(cells: list[str]) -> tuple[str, ...]:
        return get(cells) if len(cells) >= needed else general(cells)

    return pick


def normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _split(line: str, delimiter: str) -> list[str]:
    try:
        return [cell.strip() for cell in next(csv.reader([line], delimiter=delimiter))]
    except (csv.Error, StopIteration):
        return []


def find_header(
    text: str, is_header: Callable[[list[str]], bool], delimiter: str | None = None
) -> tuple[int, str, list[str]] | None:
    """(0-based line index, delimiter, cells) of the first line `is_header` accepts."""
    lines = text.split("\n", HEADER_SEARCH_LINES)[:HEADER_SEARCH_LINES]
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        candidates = (delimiter,) if delimiter else sorted(
            DELIMITERS, key=lambda d: -line.count(d)
        )
        for candidate in candidates:
            cells = _split(line, candidate)
            if (len(cells) > 1 or delimiter) and is_header(cells):
                return index, candidate, cells
    return None


def read_table(text: str, header_index: int, delimiter: str, header: list[str]) -> Table:
    lines = text.split("\n", header_index + 1)
    preamble = [_split(line, delimiter) for line in lines[:header_index]]
    table = Table(delimiter, header, header_index + 1, preamble)
    body = lines[header_index + 1] if len(lines) > header_index + 1 else ""
    reader = csv.reader(body.split("\n"), delimiter=delimiter)
    previous = first = header_index + 1
    keep = table.rows.append
    try:
        for cells in reader:
            start = previous + 1
            previous = first + reader.line_num  # a quoted cell may span lines
            # not blank: the first cell says so for nearly every row, without a generator
            if (cells and cells[0].strip()) or any(cell.strip() for cell in cells):
                keep((start, cells))
    except csv.Error as exc:
        table.unreadable.append(RejectedRow(previous + 1, f"unreadable CSV: {exc}"))
    return table
