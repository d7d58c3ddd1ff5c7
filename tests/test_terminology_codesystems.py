"""Loaders of ICD-10, CIM-10 (SNDS tables and ClaML), ATC and the LOINC subset."""

import re
from pathlib import Path

import pytest

from terminology.atc import atc_level, atc_parent, load_shipped_atc, load_who_atc
from terminology.cim10 import dotted, load_cim10, load_cim10_claml, load_shipped_cim10
from terminology.errors import TerminologyError
from terminology.icd10 import load_icd10
from terminology.loinc import LOINC_COPYRIGHT, load_loinc_subset

DATA = Path(__file__).parent / "data" / "terminology"


@pytest.fixture(scope="module")
def icd10():
    return load_icd10()


def test_icd10_has_chapters_blocks_and_subcategories(icd10):
    assert len(icd10) > 12000
    assert icd10.version == "2019"
    e119 = icd10.get("E11.9")
    assert e119.display == "Type 2 diabetes mellitus without complications"
    assert icd10.ancestors("E11.9") == ["E11", "E10-E14", "IV"]
    assert icd10.get("IV").properties["kind"] == "chapter"
    assert icd10.get("E10-E14").properties["kind"] == "block"
    assert "E11.9" in icd10.descendants("E10-E14")
    assert "E11" in icd10.get("E10-E14").children
    assert icd10.get("E11.9").children == []


@pytest.mark.parametrize(
    ("snds", "fhir"),
    [("E119", "E11.9"), ("E1100", "E11.00"), ("E11", "E11"), ("e119", "E11.9"),
     ("E11.9", "E11.9"), ("F55+0", "F55.+0")],
)
def test_dotted(snds, fhir):
    assert dotted(snds) == fhir


def test_shipped_cim10_subset_covers_diabetes():
    cim10 = load_shipped_cim10()
    assert cim10.content == "fragment"
    assert cim10.get("E11.9").display == "Diabète sucré de type 2, sans complication"
    # the ATIH extension E11.00 hangs under E11.0, itself under E11
    assert cim10.ancestors("E11.00") == ["E11.0", "E11"]
    assert cim10.get("E11").properties["ald"] == "8"
    assert "ald" not in cim10.get("E16").properties
    for code in ("O24.4", "H36.0", "N08.3", "G63.2", "E66", "R73.9", "Z13.1"):
        assert code in cim10, code
    assert "C51" not in cim10  # outside the shipped part


def test_snds_tables_merge_labels_and_ald():
    cim10 = load_cim10(DATA / "snds_MS_CIM_V_sample.csv", DATA / "snds_IR_CIM_V_sample.csv")
    # double spaces of the source are tidied; the long label (CIM_LIL) wins
    assert cim10.get("E11").display == "Diabète sucré de type 2"
    assert cim10.get("E11.00").display == "Diabète sucré de type 2 insulinotraité, avec coma"
    assert cim10.get("E11.00").parent == "E11.0"
    assert cim10.get("E11.0").parent == "E11"
    assert cim10.get("E11").parent is None  # the SNDS tables have no chapters or blocks
    assert cim10.get("E11.9").properties["ald"] == "8"
    assert "ald" not in cim10.get("F55").properties  # 99 means no ALD
    assert cim10.get("F55.+0").parent == "F55"
    assert cim10.get("E10").designations == {"fr": "Diabète sucré de type 1"}


def test_claml_loader_reads_hierarchy_and_labels():
    cim10 = load_cim10(DATA / "cim10_synthetic.claml.xml")
    assert cim10.version == "2099-test"
    assert cim10.ancestors("E11.00") == ["E11.0", "E11", "E10-E14", "IV"]
    assert cim10.get("E10-E14").properties["kind"] == "block"
    assert cim10.get("E11.00").display.endswith("(libellé long)")  # preferredLong wins
    assert cim10.get("E11.0").display == "Diabète sucré de type 2, avec coma"


def test_claml_rejects_other_xml(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<NotClaML/>", encoding="utf-8")
    with pytest.raises(TerminologyError, match="expected ClaML"):
        load_cim10_claml(bad)
    broken = tmp_path / "broken.xml"
    broken.write_text("<ClaML><Class", encoding="utf-8")
    with pytest.raises(TerminologyError, match="not well-formed"):
        load_cim10(broken)


def test_snds_loader_rejects_other_csv(tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("a;b\n1;2\n", encoding="utf-8")
    with pytest.raises(TerminologyError, match="not an SNDS CIM-10 table"):
        load_cim10(other)


def test_atc_levels_by_code_length():
    assert [atc_level(c) for c in ("A", "A10", "A10B", "A10BA", "A10BA02")] == [1, 2, 3, 4, 5]
    assert atc_parent("A10BA02") == "A10BA"
    assert atc_parent("A10") == "A"
    assert atc_parent("A") is None
    with pytest.raises(TerminologyError):
        atc_level("A10BA0")


def test_shipped_atc_subset_in_english_and_french():
    atc = load_shipped_atc()
    glargine = atc.get("A10AE04")
    assert glargine.display == "insulin glargine"
    assert glargine.designations["fr"] == "insuline glargine"
    assert atc.ancestors("A10AE04") == ["A10AE", "A10A", "A10", "A"]
    assert {"A10BH", "A10BJ", "A10BK", "A10BD", "A10BB"} <= set(atc.get("A10B").children)
    assert atc.get("C10AA05").designations["fr"] == "atorvastatine"
    assert {"C09AA", "C09CA"} <= {c.code for c in atc}


def test_who_atc_csv_loader(tmp_path):
    atc = load_who_atc(DATA / "who_atc_synthetic.csv")
    assert len(atc) == 9
    metformin = atc.get("A10BA02")
    assert metformin.parent == "A10BA"
    # two DDD rows for one code are kept together
    assert metformin.properties["ddd"] == "1.5 g O; 1.5 g O"
    assert "ddd" not in atc.get("A10BA").properties
    bad = tmp_path / "bad.csv"
    bad.write_text("code,name\nA,x\n", encoding="utf-8")
    with pytest.raises(TerminologyError, match="missing columns"):
        load_who_atc(bad)


def test_loinc_subset():
    loinc = load_loinc_subset()
    assert loinc.copyright == LOINC_COPYRIGHT
    assert loinc.get("4548-4").display == "Hemoglobin A1c/Hemoglobin.total in Blood"
    assert loinc.get("2339-0").designations["fr"].startswith("Glucose")
    for code in ("99504-3", "105272-9", "97510-2", "97506-0", "104638-2", "39156-5",
                 "29463-7", "85354-9", "8480-6", "8462-4", "9318-7", "33914-3", "2093-3"):
        assert code in loinc, code
    assert loinc.get("97510-2").properties["group"] == "cgm-summary"


def test_code_system_resource_nests_concepts():
    atc = load_shipped_atc()
    resource = atc.to_resource()
    assert resource["resourceType"] == "CodeSystem"
    assert resource["content"] == "fragment"
    assert resource["count"] == len(atc)
    top = {c["code"]: c for c in resource["concept"]}
    assert set(top) == {"A", "C"}
    a10 = next(c for c in top["A"]["concept"] if c["code"] == "A10")
    assert {"language": "fr", "value": "MÉDICAMENTS DU DIABÈTE"} in a10["designation"]


def test_code_system_resource_declares_its_properties():
    resource = load_shipped_atc().to_resource()
    assert resource["property"] == [{"code": "level", "type": "integer"}]
    cim = load_shipped_cim10().to_resource()
    assert {"code": "ald", "type": "string"} in cim["property"]


def test_package_never_imports_fhir_server():
    package = Path(__file__).parent.parent / "terminology"
    importing = re.compile(r"^\s*(from|import)\s+fhir_server\b", re.MULTILINE)
    offenders = [p.name for p in package.rglob("*.py") if importing.search(p.read_text("utf-8"))]
    assert offenders == []
