"""ConceptMaps: the derived ones we ship, and $translate over any ConceptMap resource."""

from __future__ import annotations

from dataclasses import dataclass

from terminology.codesystem import CodeSystemData
from terminology.errors import invalid
from terminology.uris import CM_ATC_PARENT, CM_CIM10_TO_ICD10, CM_ICD10_TO_CIM10

# Reading a map backwards turns "the target is wider" into "the target is narrower".
REVERSED_EQUIVALENCE = {
    "wider": "narrower",
    "narrower": "wider",
    "subsumes": "specializes",
    "specializes": "subsumes",
}
NO_MATCH = {"unmatched", "disjoint"}


def _concept_map(url: str, name: str, title: str, description: str, groups: list) -> dict:
    return {
        "resourceType": "ConceptMap",
        "id": url.rsplit("/", 1)[-1],
        "url": url,
        "version": "0.1.0",
        "name": name,
        "title": title,
        "status": "active",
        "experimental": False,
        "publisher": "Diatabase",
        "description": description,
        "group": groups,
    }


def _nearest_in(target: CodeSystemData, source: CodeSystemData, code: str) -> str | None:
    for ancestor in source.ancestors(code):
        if ancestor in target:
            return ancestor
    # The SNDS tables have no chapters/blocks; fall back to the 3-character category.
    category = code[:3]
    return category if category in target and category != code else None


def cim10_icd10_maps(cim10: CodeSystemData, icd10: CodeSystemData) -> tuple[dict, dict]:
    """CIM-10 -> ICD-10 and ICD-10 -> CIM-10, derived from the two code lists.

    A CIM-10 code that exists in ICD-10 maps to itself (equivalent); a French extension
    (E11.00) maps to its nearest ancestor that WHO has (E11.0), which is wider.
    """
    forward: list[dict] = []
    backward: dict[str, list[dict]] = {}
    for concept in cim10:
        if concept.code in icd10:
            target, equivalence = concept.code, "equivalent"
        else:
            target, equivalence = _nearest_in(icd10, cim10, concept.code), "wider"
        if target is None:
            continue
        forward.append({
            "code": concept.code,
            "display": concept.display,
            "target": [{"code": target, "display": icd10.concepts[target].display,
                        "equivalence": equivalence}],
        })
        reverse = {
            "code": concept.code, "display": concept.display,
            "equivalence": REVERSED_EQUIVALENCE.get(equivalence, equivalence),
        }
        if reverse["equivalence"] == "narrower":
            # R4 cmd-1: a narrower (or inexact) mapping SHALL carry a comment
            reverse["comment"] = "A French extension, more specific than the ICD-10 code"
        backward.setdefault(target, []).append(reverse)
    to_icd = _concept_map(
        CM_CIM10_TO_ICD10, "Cim10ToIcd10", "CIM-10 FR to ICD-10 (WHO)",
        "Derived: a CIM-10 code maps to the same ICD-10 code when WHO has it, else to its "
        "nearest WHO ancestor (equivalence wider).",
        [{"source": cim10.url, "sourceVersion": cim10.version, "target": icd10.url,
          "targetVersion": icd10.version, "element": forward}],
    )
    to_cim = _concept_map(
        CM_ICD10_TO_CIM10, "Icd10ToCim10", "ICD-10 (WHO) to CIM-10 FR",
        "Derived: an ICD-10 code maps to the same CIM-10 code (equivalent) and to the "
        "French extensions below it (narrower).",
        [{"source": icd10.url, "sourceVersion": icd10.version, "target": cim10.url,
          "targetVersion": cim10.version,
          "element": [
              {"code": code, "display": icd10.concepts[code].display, "target": targets}
              for code, targets in backward.items()
          ]}],
    )
    return to_icd, to_cim


def atc_parent_map(atc: CodeSystemData) -> dict:
    elements = [
        {"code": c.code, "display": c.display,
         "target": [{"code": c.parent, "display": atc.concepts[c.parent].display,
                     "equivalence": "wider"}]}
        for c in atc if c.parent is not None
    ]
    return _concept_map(
        CM_ATC_PARENT, "AtcParent", "ATC code to its parent level",
        "Each ATC code maps to the code one level up (A10BA02 -> A10BA), which is wider.",
        [{"source": atc.url, "sourceVersion": atc.version, "target": atc.url,
          "targetVersion": atc.version, "element": elements}],
    )


@dataclass(frozen=True, slots=True)
class Mapping:
    system: str
    code: str
    display: str | None
    equivalence: str
    comment: str | None
    map_url: str | None


class MapIndex:
    """Forward and reverse lookup tables over one ConceptMap resource."""

    def __init__(self, concept_map: dict) -> None:
        if concept_map.get("resourceType") != "ConceptMap":
            raise invalid("not a ConceptMap resource")
        groups = concept_map.get("group") or []
        if not isinstance(groups, list):
            raise invalid("ConceptMap.group must be a list")
        self.url: str | None = concept_map.get("url")
        self.forward: dict[tuple[str, str], list[Mapping]] = {}
        self.reverse: dict[tuple[str, str], list[Mapping]] = {}
        for group in groups:
            source, target = group.get("source"), group.get("target")
            if not source or not target:
                raise invalid("each ConceptMap.group needs source and target systems")
            for element in group.get("element") or []:
                code = element.get("code")
                if not isinstance(code, str):
                    raise invalid("ConceptMap.group.element needs a code")
                for tgt in element.get("target") or []:
                    equivalence = tgt.get("equivalence", "equivalent")
                    if "code" not in tgt:
                        continue  # an unmatched element has no target code
                    self.forward.setdefault((source, code), []).append(Mapping(
                        target, tgt["code"], tgt.get("display"), equivalence,
                        tgt.get("comment"), self.url))
                    self.reverse.setdefault((target, tgt["code"]), []).append(Mapping(
                        source, code, element.get("display"),
                        REVERSED_EQUIVALENCE.get(equivalence, equivalence),
                        tgt.get("comment"), self.url))

    def sources(self) -> set[str]:
        return {system for system, _ in self.forward}

    def lookup(self, system: str, code: str, reverse: bool) -> list[Mapping]:
        table = self.reverse if reverse else self.forward
        return table.get((system, code), [])
