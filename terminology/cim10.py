"""CIM-10 FR, the French ATIH modification of ICD-10 used for hospital coding (PMSI).

Two source formats:
- the SNDS nomenclature tables (`;`-separated, UTF-8, codes without the dot: `E119`):
  MS_CIM_V (CIM_COD;CIM_LIC;CIM_LIL;...) and IR_CIM_V (CIM_COD;CIM_LIB;ALD_030_COD;...).
  The hierarchy is derived from the code (E1100 -> E110 -> E11); these tables have no
  chapters or blocks.
- the ATIH ClaML XML release (chapters, blocks, categories with SuperClass links).

The repository ships the diabetes part of the SNDS tables (data/cim10_fr_diabetes.csv,
MPL-2.0); `load_cim10(path)` reads a full table.
"""

from __future__ import annotations

import csv
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

from terminology.codesystem import CodeSystemData, Concept
from terminology.errors import invalid
from terminology.text import tidy_label
from terminology.uris import CIM10

DATA_DIR = Path(__file__).parent / "data"
SHIPPED_SUBSET = DATA_DIR / "cim10_fr_diabetes.csv"
SHIPPED_VERSION = "snds-2020-12-15"
# ALD_030_COD of the SNDS tables: 99 means "not an ALD" (affection de longue durée).
_NO_ALD = {"", "99", "0"}
_CATEGORY_CODE = re.compile(r"^[A-Z][0-9]{2}[0-9A-Z+]*$")


def dotted(code: str) -> str:
    """SNDS form to FHIR ICD-10 form: E119 -> E11.9, E1100 -> E11.00, E11 -> E11."""
    code = code.strip().upper()
    if "." in code or len(code) <= 3 or not _CATEGORY_CODE.match(code):
        return code
    return f"{code[:3]}.{code[3:]}"


def _derived_parent(code: str, known: set[str] | dict) -> str | None:
    """The nearest shorter code present in the table (E11.00 -> E11.0, else E11)."""
    compact = code.replace(".", "")
    for length in range(len(compact) - 1, 2, -1):
        candidate = dotted(compact[:length])
        if candidate in known:
            return candidate
    return None


def new_cim10_system(version: str | None, content: str) -> CodeSystemData:
    return CodeSystemData(
        url=CIM10,
        name="CIM10FR",
        title="CIM-10 FR (ATIH, modification française de la CIM-10)",
        version=version,
        language="fr",
        content=content,
        publisher="ATIH",
        source_note="SNDS nomenclature tables (indsante/schema-snds, MPL-2.0)",
    )


def read_snds_rows(path: Path) -> Iterable[dict[str, str]]:
    with Path(path).open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=";")
        header = reader.fieldnames or []
        if "CIM_COD" not in header or not ({"CIM_LIL", "CIM_LIB", "CIM_LIC"} & set(header)):
            raise invalid(
                f"{path}: not an SNDS CIM-10 table (expected CIM_COD and CIM_LIL/CIM_LIB)"
            )
        yield from reader


def load_cim10_snds(
    *paths: Path, version: str | None = None, content: str = "complete"
) -> CodeSystemData:
    """Read one or more SNDS tables (MS_CIM_V and/or IR_CIM_V) into one code system.

    The long label (CIM_LIL) wins over CIM_LIB, which wins over the upper-case short
    label (CIM_LIC); the ALD number comes from IR_CIM_V.
    """
    labels: dict[str, tuple[int, str]] = {}
    ald: dict[str, str] = {}
    rank = {"CIM_LIL": 3, "CIM_LIB": 2, "CIM_LIC": 1}
    for path in paths:
        for row in read_snds_rows(path):
            code = dotted(row.get("CIM_COD") or "")
            if not code:
                continue
            for column, weight in rank.items():
                text = tidy_label(row.get(column) or "")
                if text and weight > labels.get(code, (0, ""))[0]:
                    labels[code] = (weight, text)
            ald_code = (row.get("ALD_030_COD") or "").strip()
            if ald_code not in _NO_ALD:
                ald[code] = ald_code
    if not labels:
        raise invalid(f"no CIM-10 code found in {', '.join(map(str, paths))}")
    system = new_cim10_system(version, content)
    for code in sorted(labels):
        properties: dict = {"ald": ald[code]} if code in ald else {}
        system.add(
            Concept(
                code=code,
                display=labels[code][1],
                parent=_derived_parent(code, labels),
                properties=properties,
            )
        )
    return system.finalize()


def _label_text(element: ET.Element) -> str:
    return tidy_label("".join(element.itertext()))


def load_cim10_claml(path: Path, version: str | None = None) -> CodeSystemData:
    """Read an ATIH ClaML file: Class elements with kind, SuperClass and Rubric labels."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise invalid(f"{path}: not well-formed XML ({exc})") from exc
    if root.tag != "ClaML":
        raise invalid(f"{path}: root element is {root.tag}, expected ClaML")
    title = root.find("Title")
    if version is None and title is not None:
        version = title.get("version")
    system = new_cim10_system(version, "complete")
    for cls in root.iter("Class"):
        code = cls.get("code")
        if not code:
            continue
        code = dotted(code)
        labels: dict[str, dict[str, str]] = {}
        for rubric in cls.findall("Rubric"):
            kind = rubric.get("kind", "")
            for label in rubric.findall("Label"):
                lang = label.get("{http://www.w3.org/XML/1998/namespace}lang", "fr")
                labels.setdefault(kind, {})[lang] = _label_text(label)
        chosen = labels.get("preferredLong") or labels.get("preferred") or {}
        display = chosen.get("fr") or next(iter(chosen.values()), code)
        superclass = cls.find("SuperClass")
        parent = dotted(superclass.get("code", "")) if superclass is not None else None
        concept = Concept(code=code, display=display, parent=parent or None)
        concept.properties["kind"] = cls.get("kind", "category")
        for lang, text in chosen.items():
            concept.designations.setdefault(lang, text)
        system.add(concept)
    if not system.concepts:
        raise invalid(f"{path}: no Class element found")
    return system.finalize()


def load_cim10(*paths: Path, version: str | None = None) -> CodeSystemData:
    """Load CIM-10 from SNDS tables or from one ClaML file (chosen by file content)."""
    if not paths:
        raise invalid("load_cim10 needs at least one file")
    first = Path(paths[0])
    with first.open("rb") as handle:
        head = handle.read(512).lstrip()
    if head.startswith(b"<"):
        return load_cim10_claml(first, version=version)
    return load_cim10_snds(*paths, version=version or f"loaded:{first.name}")


def load_shipped_cim10() -> CodeSystemData:
    return load_cim10_snds(SHIPPED_SUBSET, version=SHIPPED_VERSION, content="fragment")


# Codes outside chapter IV that diabetes coding needs (complications coded with the
# dagger/asterisk convention, pregnancy, neonatal, screening, family history, drugs).
DIABETES_EXTRA_PREFIXES = (
    "O24", "G590", "G632", "G990", "H280", "H360", "I792", "M142", "N083", "L97", "R73",
    "Z131", "Z833", "P70", "T383", "Y423",
)


def write_subset(ms_path: Path, ir_path: Path, out_path: Path) -> int:
    """Rebuild data/cim10_fr_diabetes.csv from the SNDS tables (chapter IV E + extras).

    Writes the IR_CIM_V column layout (CIM_COD;CIM_LIB;ALD_030_COD) so the normal loader
    reads it. Returns the number of rows written.
    """
    full = load_cim10_snds(ms_path, ir_path)
    wanted = {
        c.code for c in full
        if c.code.startswith("E")
        or c.code.replace(".", "").startswith(DIABETES_EXTRA_PREFIXES)
    }
    for code in list(wanted):
        wanted.update(full.ancestors(code))
    with Path(out_path).open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter=";", lineterminator="\n")
        writer.writerow(["CIM_COD", "CIM_LIB", "ALD_030_COD"])
        for code in sorted(wanted):
            concept = full.concepts[code]
            writer.writerow(
                [code.replace(".", ""), concept.display, concept.properties.get("ald", "")]
            )
    return len(wanted)


if __name__ == "__main__":  # python -m terminology.cim10 MS_CIM_V.csv IR_CIM_V.csv OUT.csv
    import sys

    count = write_subset(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
    print(f"wrote {count} codes to {sys.argv[3]}")
