"""The LOINC codes a diabetes warehouse needs (glucose, HbA1c, CGM, lipids, renal, vitals).

Only a subset (data/loinc_subset.csv). English displays are LOINC long common names,
except the CGM summary codes whose display is the concept name the HL7 CGM IG gives
(column display_source). French displays are the project's own translations, not the
official LOINC French linguistic variant.
"""

from __future__ import annotations

import csv
from pathlib import Path

from terminology.codesystem import CodeSystemData, Concept
from terminology.uris import LOINC

SHIPPED_SUBSET = Path(__file__).parent / "data" / "loinc_subset.csv"
LOINC_COPYRIGHT = (
    "This material contains content from LOINC (http://loinc.org). LOINC is copyright "
    "Regenstrief Institute, Inc. and the Logical Observation Identifiers Names and Codes "
    "(LOINC) Committee and is available at no cost under the license at "
    "http://loinc.org/license. LOINC® is a registered United States trademark of "
    "Regenstrief Institute, Inc."
)


def load_loinc_subset() -> CodeSystemData:
    system = CodeSystemData(
        url=LOINC,
        name="LOINC",
        title="LOINC (diabetes subset)",
        version=None,
        language="en",
        content="fragment",
        publisher="Regenstrief Institute, Inc.",
        copyright=LOINC_COPYRIGHT,
    )
    with SHIPPED_SUBSET.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle, delimiter=";"):
            concept = Concept(
                code=row["code"],
                display=row["display_en"],
                properties={"group": row["group"], "display-source": row["display_source"]},
            )
            concept.designations["en"] = row["display_en"]
            concept.designations["fr"] = row["display_fr"]
            system.add(concept)
    return system.finalize()
