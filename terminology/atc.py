"""ATC (WHO Anatomical Therapeutic Chemical classification).

The repository ships a small subset written by the project (data/atc_subset.csv: the A10
drugs used in diabetes tree and a few cardiovascular classes, English and French names).
The full WHO table is not redistributable (WHOCC terms: no commercial copying): an
operator loads it with `diatabase terminology load --atc FILE`, the WHO CSV layout
`atc_code,atc_name,ddd,uom,adm_r,note` ("NA" meaning empty), one row per DDD.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

from terminology.codesystem import CodeSystemData, Concept
from terminology.errors import invalid
from terminology.text import tidy_label
from terminology.uris import ATC

DATA_DIR = Path(__file__).parent / "data"
SHIPPED_SUBSET = DATA_DIR / "atc_subset.csv"
SHIPPED_VERSION = "diatabase-subset-1"
LEVEL_LENGTHS = (1, 3, 4, 5, 7)
WHO_COLUMNS = ("atc_code", "atc_name", "ddd", "uom", "adm_r", "note")


def atc_level(code: str) -> int:
    try:
        return LEVEL_LENGTHS.index(len(code)) + 1
    except ValueError as exc:
        raise invalid(f"'{code}' is not an ATC code (1, 3, 4, 5 or 7 characters)") from exc


def atc_parent(code: str) -> str | None:
    """The ATC parent is the code cut to the previous level's length (A10BA02 -> A10BA)."""
    level = atc_level(code)
    return code[: LEVEL_LENGTHS[level - 2]] if level > 1 else None


def new_atc_system(version: str | None, content: str) -> CodeSystemData:
    return CodeSystemData(
        url=ATC,
        name="ATC",
        title="Anatomical Therapeutic Chemical classification (WHO)",
        version=version,
        language="en",
        content=content,
        publisher="WHO Collaborating Centre for Drug Statistics Methodology",
    )


def _concept(code: str, name_en: str) -> Concept:
    return Concept(
        code=code,
        display=tidy_label(name_en),
        parent=atc_parent(code),
        properties={"level": atc_level(code)},
    )


def load_shipped_atc() -> CodeSystemData:
    system = new_atc_system(SHIPPED_VERSION, "fragment")
    with SHIPPED_SUBSET.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle, delimiter=";"):
            concept = _concept(row["atc_code"], row["name_en"])
            concept.designations["en"] = concept.display
            concept.designations["fr"] = tidy_label(row["name_fr"])
            system.add(concept)
    return system.finalize()


def read_who_atc(path: Path) -> list[Concept]:
    """Concepts of a WHO ATC CSV; DDDs become `ddd` properties ("10 mg O")."""
    concepts: dict[str, Concept] = {}
    with Path(path).open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = set(WHO_COLUMNS[:2]) - set(reader.fieldnames or [])
        if missing:
            raise invalid(f"{path}: not a WHO ATC table, missing columns {sorted(missing)}")
        for row in reader:
            code = (row["atc_code"] or "").strip().upper()
            name = (row["atc_name"] or "").strip()
            if not code or not name:
                continue
            concept = concepts.get(code) or _concept(code, name)
            ddd = _na(row.get("ddd"))
            if ddd:
                text = " ".join(p for p in (ddd, _na(row.get("uom")), _na(row.get("adm_r"))) if p)
                existing = concept.properties.get("ddd")
                concept.properties["ddd"] = f"{existing}; {text}" if existing else text
            concepts[code] = concept
    if not concepts:
        raise invalid(f"{path}: no ATC code found")
    return list(concepts.values())


def _na(value: str | None) -> str:
    value = (value or "").strip()
    return "" if value == "NA" else value


def load_who_atc(path: Path, version: str | None = None) -> CodeSystemData:
    system = new_atc_system(version or f"loaded:{Path(path).name}", "complete")
    for concept in read_who_atc(path):
        system.add(concept)
    return system.finalize()


def merged_atc(loaded: Iterable[Concept], version: str) -> CodeSystemData:
    """The full WHO table over the shipped subset, keeping the subset's French names."""
    system = load_shipped_atc()
    system.version = version
    system.content = "complete"
    system.merge(loaded)
    system.concepts = dict(sorted(system.concepts.items()))
    return system.finalize()
