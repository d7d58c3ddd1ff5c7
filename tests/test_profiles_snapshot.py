"""The published diabetes profiles carry `fhirVersion` and a snapshot generated from their
differential and the R4 base definitions, so that other tools can load them: the SMART
`fhirclient` R4 models (an independent, strict R4 parser) read every one, and each passes
the R4 core rules for StructureDefinition (sdf-*, eld-*). Before, the files had neither
(`fhirVersion` absent, no snapshot)."""

from __future__ import annotations

import pytest
from fhirclient.models.structuredefinition import StructureDefinition

from profiles import CoreValidator
from profiles.definitions import load_structure_definitions
from profiles.snapshot import SnapshotError, with_snapshot
from terminology import TerminologyService

SHIPPED = load_structure_definitions()


@pytest.mark.parametrize("definition", SHIPPED, ids=lambda d: d["name"])
def test_an_independent_r4_parser_reads_the_published_profile(definition: dict) -> None:
    published = with_snapshot(definition)
    parsed = StructureDefinition(published, strict=True)
    assert parsed.fhirVersion == "4.0.1"
    assert parsed.snapshot is not None and parsed.snapshot.element[0].path == definition["type"]


@pytest.mark.parametrize("definition", SHIPPED, ids=lambda d: d["name"])
def test_the_snapshot_holds_every_differential_element_merged(definition: dict) -> None:
    published = with_snapshot(definition)
    snapshot = {e["id"]: e for e in published["snapshot"]["element"]}
    assert len(snapshot) == len(published["snapshot"]["element"])  # ids are unique
    for diff in definition["differential"]["element"]:
        element = snapshot[diff["id"]]
        for key in ("min", "max", "sliceName", "binding", "patternCodeableConcept",
                    "fixedUri", "maxLength"):
            if key in diff:
                assert element[key] == diff[key], (diff["id"], key)
        for constraint in diff.get("constraint", ()):
            assert constraint in element["constraint"]
        assert "base" in element
    # the base's elements are all there (Observation.status, Patient.name...)
    assert f"{definition['type']}.meta" in snapshot


@pytest.mark.parametrize("definition", SHIPPED, ids=lambda d: d["name"])
def test_the_published_profile_meets_the_r4_rules(definition: dict) -> None:
    validator = CoreValidator(TerminologyService.default())
    found = [i for i in validator.validate(with_snapshot(definition))
             if i.severity in ("error", "fatal")]
    assert found == []


def test_a_differential_element_outside_the_base_is_refused() -> None:
    broken = {**SHIPPED[0], "differential": {"element": [
        {"id": f"{SHIPPED[0]['type']}.valueBla", "path": f"{SHIPPED[0]['type']}.valueBla"}]}}
    with pytest.raises(SnapshotError, match="valueBla"):
        with_snapshot(broken)
