"""The code systems and value sets of the FHIR R4 specification (4.0.1, CC0), as data.

`data/r4-codesystems.json.gz` holds the codes of every complete CodeSystem the
specification defines (`http://hl7.org/fhir/observation-status`,
`http://terminology.hl7.org/CodeSystem/v3-ActCode`, ...), `data/r4-valuesets.json.gz` the
codes of every ValueSet that a core element is bound to; both were made from the official
R4 package by `profiles/r4/vendor.py`. A ValueSet that draws on a system outside the
specification (SNOMED CT, LOINC) by filter is not expanded: it names the systems it draws
on, so that a code from one of them is "not checked" rather than wrong.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import orjson

DATA_DIR = Path(__file__).parent / "data"


@dataclass(frozen=True, slots=True)
class R4ValueSet:
    url: str
    codes: frozenset[tuple[str, str]]  # (system, code); empty when not expanded
    bare_codes: frozenset[str]
    systems: frozenset[str]  # the code systems it draws on
    complete: bool  # False: drawn by filter from a system not held here

    def contains(self, system: str | None, code: str) -> bool:
        if system is None:
            return code in self.bare_codes
        return (system, code) in self.codes


@dataclass(frozen=True, slots=True)
class R4CodeSystem:
    url: str
    codes: frozenset[str]
    case_sensitive: bool

    def has(self, code: str) -> bool:
        if self.case_sensitive:
            return code in self.codes
        return code.lower() in {c.lower() for c in self.codes}


def _read(name: str) -> dict:
    return orjson.loads(gzip.decompress((DATA_DIR / name).read_bytes()))


@cache
def _value_sets() -> dict[str, R4ValueSet]:
    out = {}
    for url, entry in _read("r4-valuesets.json.gz").items():
        if "systems" in entry:
            out[url] = R4ValueSet(url, frozenset(), frozenset(), frozenset(entry["systems"]),
                                  False)
        else:
            pairs = frozenset((s, c) for s, codes in entry.items() for c in codes)
            out[url] = R4ValueSet(url, pairs, frozenset(c for _, c in pairs),
                                  frozenset(entry), True)
    return out


@cache
def _code_systems() -> dict[str, R4CodeSystem]:
    return {
        url: R4CodeSystem(url, frozenset(entry["codes"]), entry.get("caseSensitive", True))
        for url, entry in _read("r4-codesystems.json.gz").items()
    }


def value_set(url: str) -> R4ValueSet | None:
    """A ValueSet of the R4 specification that a core element is bound to (url without
    version), or None."""
    return _value_sets().get(url.split("|")[0])


def code_system(url: str) -> R4CodeSystem | None:
    """A complete CodeSystem of the R4 specification, or None."""
    return _code_systems().get(url.split("|")[0])
