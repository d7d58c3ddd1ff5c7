"""TerminologyService: the logic of $lookup, $validate-code, $subsumes, $expand and
$translate, the search helpers, and errors on bad input."""

import pytest

from terminology.errors import TerminologyError
from terminology.service import TerminologyService
from terminology.uris import (
    ATC,
    CIM10,
    CM_ATC_PARENT,
    CM_CIM10_TO_ICD10,
    ICD10,
    LOINC,
    VS_DIABETES_CONDITIONS,
    VS_DRUGS_USED_IN_DIABETES,
    VS_GLUCOSE_CODES,
    VS_GLUCOSE_UNITS,
    VS_HBA1C_CODES,
)

SNOMED = "http://snomed.info/sct"
ALL_ICD10 = ICD10 + "?fhir_vs"


@pytest.fixture(scope="module")
def service():
    return TerminologyService()


def values(parameters: dict, name: str) -> list:
    """Values of the named top-level parameters (value[x] or the part list)."""
    out = []
    for entry in parameters["parameter"]:
        if entry["name"] == name:
            if "part" in entry:
                out.append({p["name"]: next(v for k, v in p.items() if k != "name")
                            for p in entry["part"]})
            else:
                out.append(next(v for k, v in entry.items() if k != "name"))
    return out


def value(parameters: dict, name: str):
    found = values(parameters, name)
    assert len(found) == 1, (name, found)
    return found[0]


def codes(expansion: dict) -> list[str]:
    return [c["code"] for c in expansion["expansion"].get("contains", [])]


# ---- $lookup ------------------------------------------------------------------------

def test_lookup_icd10_in_english_and_french(service):
    english = service.lookup(ICD10, "E11.9")
    assert value(english, "display") == "Type 2 diabetes mellitus without complications"
    assert value(english, "version") == "2019"
    french = service.lookup(ICD10, "E11.9", display_language="fr")
    assert value(french, "display") == "Diabète sucré de type 2, sans complication"
    designations = {d["language"]: d["value"] for d in values(french, "designation")}
    assert designations == {"en": "Type 2 diabetes mellitus without complications",
                            "fr": "Diabète sucré de type 2, sans complication"}


def test_lookup_properties_parent_and_children(service):
    result = service.lookup(ICD10, "E11")
    props = values(result, "property")
    assert {"code": "parent", "value": "E10-E14", "description": "Diabetes mellitus"} in props
    children = [p["value"] for p in props if p["code"] == "child"]
    assert children == [f"E11.{i}" for i in range(10)]
    only_parent = service.lookup(ICD10, "E11", properties=["parent"])
    assert [p["code"] for p in values(only_parent, "property")] == ["parent"]


def test_lookup_atc_french_and_cim10(service):
    assert value(service.lookup(ATC, "A10BA02", display_language="fr"), "display") == \
        "metformine"
    assert value(service.lookup(ATC, "A10BA02", display_language="en"), "display") == \
        "metformin"
    cim = service.lookup(CIM10, "E11.00")
    assert value(cim, "display") == "Diabète sucré de type 2 insulinotraité, avec coma"
    props = values(cim, "property")
    assert {"code": "parent", "value": "E11.0",
            "description": "Diabète sucré de type 2, avec coma"} in props


def test_lookup_errors(service):
    with pytest.raises(TerminologyError) as unknown_system:
        service.lookup("http://example.org/nothing", "X")
    assert (unknown_system.value.code, unknown_system.value.status) == ("not-found", 404)
    with pytest.raises(TerminologyError) as unknown_code:
        service.lookup(ICD10, "E99.99")
    assert unknown_code.value.status == 404
    with pytest.raises(TerminologyError) as wrong_version:
        service.lookup(ICD10, "E11", version="2010")
    assert "2019" in wrong_version.value.message
    with pytest.raises(TerminologyError) as no_code:
        service.lookup(ICD10, "")
    assert no_code.value.status == 400


# ---- $validate-code -----------------------------------------------------------------

def test_validate_code(service):
    ok = service.validate_code(LOINC, "4548-4")
    assert value(ok, "result") is True
    assert value(ok, "display") == "Hemoglobin A1c/Hemoglobin.total in Blood"
    unknown = service.validate_code(ICD10, "E11.99")
    assert value(unknown, "result") is False
    assert "E11.99" in value(unknown, "message")


def test_units_are_a_code_system(service):
    ucum = "http://unitsofmeasure.org"
    assert value(service.validate_code(ucum, "mmol/L"), "result") is True
    unknown = service.validate_code(ucum, "mg/dl")  # UCUM codes are case-sensitive
    assert value(unknown, "result") is False
    assert "only part" in value(unknown, "message")
    props = values(service.lookup(ucum, "mg/dL"), "property")
    assert {"code": "canonical", "value": "g/L"} in props
    expansion = service.expand("https://diatabase.org/fhir/ValueSet/glucose-units")
    assert [c["display"] for c in expansion["expansion"]["contains"]] == [
        "milligram per deciliter", "millimole per liter", "gram per liter"]


def test_validate_code_checks_display_in_any_language(service):
    assert value(service.validate_code(ATC, "A10BA02", display="Metformine"), "result")
    wrong = service.validate_code(ATC, "A10BA02", display="insulin")
    assert value(wrong, "result") is False
    assert "metformin" in value(wrong, "message")


def test_validate_code_unknown_system_is_an_error(service):
    with pytest.raises(TerminologyError) as error:
        service.validate_code("urn:oid:9.9.9", "1")
    assert error.value.status == 404


# ---- $subsumes ----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("system", "a", "b", "outcome"),
    [
        (ICD10, "E10-E14", "E11.9", "subsumes"),
        (ICD10, "E11.9", "IV", "subsumed-by"),
        (ICD10, "E11.9", "E11.9", "equivalent"),
        (ICD10, "E10", "E11.9", "not-subsumed"),
        (ATC, "A10", "A10BK03", "subsumes"),
        (CIM10, "E11.00", "E11", "subsumed-by"),
    ],
)
def test_subsumes(service, system, a, b, outcome):
    assert value(service.subsumes(system, a, b), "outcome") == outcome


def test_subsumes_unknown_code_is_an_error(service):
    with pytest.raises(TerminologyError, match="E11.77"):
        service.subsumes(ICD10, "E11", "E11.77")


# ---- search helpers -----------------------------------------------------------------

def test_descendants_and_ancestors(service):
    below = service.descendants(ICD10, "E11")
    assert below == {"E11"} | {f"E11.{i}" for i in range(10)}
    assert "E11" not in service.descendants(ICD10, "E11", include_self=False)
    assert {"A10BA02", "A10BH01", "A10BK03", "A10B"} <= service.descendants(ATC, "A10B")
    assert "A10AE04" not in service.descendants(ATC, "A10B")
    assert service.ancestors(ICD10, "E11.9") == {"E11.9", "E11", "E10-E14", "IV"}
    assert service.ancestors(CIM10, "E11.00", include_self=False) == {"E11.0", "E11"}
    # a code the (partial) table lacks still matches itself
    assert service.descendants(CIM10, "C51.9") == {"C51.9"}
    with pytest.raises(TerminologyError):
        service.descendants(SNOMED, "73211009")


def test_value_set_codes(service):
    members = service.value_set_codes(VS_DIABETES_CONDITIONS)
    assert {(ICD10, "E11.9"), (CIM10, "E11.00"), (ICD10, "O24.4"), (SNOMED, "44054006"),
            (CIM10, "O24")} <= members
    assert (ICD10, "E15") not in members
    assert (ICD10, "E66.0") not in members
    drugs = service.value_set_codes(VS_DRUGS_USED_IN_DIABETES)
    assert (ATC, "A10AE04") in drugs and (ATC, "C10AA05") not in drugs
    assert service.value_set_codes(VS_HBA1C_CODES) == {
        (LOINC, "4548-4"), (LOINC, "17856-6"), (LOINC, "59261-8")}
    assert (LOINC, "99504-3") in service.value_set_codes(VS_GLUCOSE_CODES)
    assert service.value_set_codes(VS_GLUCOSE_UNITS) == {
        ("http://unitsofmeasure.org", u) for u in ("mg/dL", "mmol/L", "g/L")}


# ---- $expand ------------------------------------------------------------------------

def test_expand_filter_is_accent_insensitive_and_before_paging(service):
    full = service.expand(VS_DIABETES_CONDITIONS, filter="diabete", display_language="fr")
    total = full["expansion"]["total"]
    assert total == len(codes(full)) > 50
    assert all("diab" in c["display"].lower() for c in full["expansion"]["contains"])
    page = service.expand(VS_DIABETES_CONDITIONS, filter="DIABÈTE", offset=10, count=5,
                          display_language="fr")
    assert page["expansion"]["total"] == total
    assert page["expansion"]["offset"] == 10
    assert codes(page) == codes(full)[10:15]


def test_expand_filter_words_all_match(service):
    result = service.expand(VS_DIABETES_CONDITIONS, filter="diabète type 2 coma")
    assert set(codes(result)) == {"E11.0", "E11.00", "E11.08"}
    systems = {c["system"] for c in result["expansion"]["contains"]}
    assert systems == {ICD10, CIM10}


def test_expand_count_zero_gives_total_only(service):
    result = service.expand(ALL_ICD10, filter="diabetes", count=0)
    assert result["expansion"]["total"] > 50
    assert "contains" not in result["expansion"]


def test_expand_all_of_icd10_and_implicit_isa(service):
    everything = service.expand(ALL_ICD10, count=3)
    assert everything["expansion"]["total"] > 12000
    assert codes(everything) == ["I", "A00-A09", "A00"]
    under = service.expand(ICD10 + "?fhir_vs=isa/E11", filter="coma")
    assert codes(under) == ["E11.0"]


def test_expand_display_language_and_shipped_resource_fields(service):
    result = service.expand(VS_DRUGS_USED_IN_DIABETES, filter="glargine", display_language="fr")
    assert result["url"] == VS_DRUGS_USED_IN_DIABETES
    assert "compose" not in result
    assert result["expansion"]["contains"] == [
        {"system": ATC, "code": "A10AE04", "display": "insuline glargine",
         "version": "diatabase-subset-1"}]


def test_expand_inline_value_set_and_exclude(service):
    value_set = {
        "resourceType": "ValueSet",
        "compose": {
            "include": [{"system": ATC, "filter": [
                {"property": "concept", "op": "is-a", "value": "A10B"}]}],
            "exclude": [{"system": ATC, "filter": [
                {"property": "concept", "op": "is-a", "value": "A10BD"}]}],
        },
    }
    result = service.expand(value_set)
    assert "A10BA02" in codes(result)
    assert not any(code.startswith("A10BD") for code in codes(result))


def test_expand_errors(service):
    with pytest.raises(TerminologyError) as unknown:
        service.expand("https://example.org/ValueSet/nope")
    assert unknown.value.status == 404
    with pytest.raises(TerminologyError):
        service.expand(VS_GLUCOSE_CODES, offset=-1)
    with pytest.raises(TerminologyError):
        service.expand(VS_GLUCOSE_CODES, count=-2)
    with pytest.raises(TerminologyError):
        service.expand({"resourceType": "ValueSet"})  # nothing to expand
    with pytest.raises(TerminologyError) as snomed_filter:
        service.expand({"resourceType": "ValueSet", "compose": {"include": [
            {"system": SNOMED, "filter": [
                {"property": "concept", "op": "is-a", "value": "73211009"}]}]}})
    assert snomed_filter.value.status == 404


# ---- ValueSet/$validate-code ----------------------------------------------------------

def test_validate_code_in_value_set(service):
    ok = service.validate_code_in_value_set(VS_DIABETES_CONDITIONS, CIM10, "E11.00")
    assert value(ok, "result") is True
    assert value(service.validate_code_in_value_set(
        VS_DIABETES_CONDITIONS, SNOMED, "44054006"), "result") is True
    outside = service.validate_code_in_value_set(VS_DIABETES_CONDITIONS, ICD10, "I10")
    assert value(outside, "result") is False
    # E11 is in two systems of the value set: without a system it is ambiguous
    ambiguous = service.validate_code_in_value_set(VS_DIABETES_CONDITIONS, None, "E11")
    assert value(ambiguous, "result") is False
    assert value(service.validate_code_in_value_set(
        VS_GLUCOSE_UNITS, None, "mmol/L"), "result") is True
    wrong_display = service.validate_code_in_value_set(
        VS_HBA1C_CODES, LOINC, "4548-4", display="Glucose")
    assert value(wrong_display, "result") is False


# ---- $translate ---------------------------------------------------------------------

def test_translate_cim10_to_icd10(service):
    same = service.translate(system=CIM10, code="E11.9", target=ICD10)
    assert value(same, "result") is True
    match = value(same, "match")
    assert match["equivalence"] == "equivalent"
    assert match["concept"]["code"] == "E11.9"
    assert match["source"] == CM_CIM10_TO_ICD10
    extension = value(service.translate(system=CIM10, code="E11.00"), "match")
    assert (extension["equivalence"], extension["concept"]["code"]) == ("wider", "E11.0")


def test_translate_icd10_to_cim10_both_ways(service):
    reverse = service.translate(url=CM_CIM10_TO_ICD10, system=ICD10, code="E11.0",
                                reverse=True)
    found = {(m["concept"]["code"], m["equivalence"]) for m in values(reverse, "match")}
    assert found == {("E11.0", "equivalent"), ("E11.00", "narrower"), ("E11.08", "narrower")}
    forward = service.translate(system=ICD10, code="E11.0", target=CIM10)
    assert {(m["concept"]["code"], m["equivalence"]) for m in values(forward, "match")} == found


def test_translate_atc_level_up(service):
    result = service.translate(url=CM_ATC_PARENT, system=ATC, code="A10BA02")
    match = value(result, "match")
    assert (match["concept"]["code"], match["equivalence"]) == ("A10BA", "wider")
    down = service.translate(url=CM_ATC_PARENT, system=ATC, code="A10BA", reverse=True)
    assert {m["concept"]["code"] for m in values(down, "match")} == {"A10BA02"}


def test_translate_no_match_and_errors(service):
    nothing = service.translate(system=LOINC, code="4548-4")
    assert value(nothing, "result") is False
    assert values(nothing, "match") == []
    with pytest.raises(TerminologyError) as unknown_map:
        service.translate(url="https://example.org/ConceptMap/x", system=ATC, code="A10")
    assert unknown_map.value.status == 404
    with pytest.raises(TerminologyError):
        service.translate(system=ATC)


# ---- resources added at run time ----------------------------------------------------

def test_added_value_set_and_concept_map():
    service = TerminologyService()
    url = "https://hospital.example/fhir/ValueSet/metformin-only"
    service.add_value_set({
        "resourceType": "ValueSet", "url": url, "status": "active",
        "compose": {"include": [{"system": ATC, "concept": [{"code": "A10BA02"}]}]},
    })
    assert service.value_set_codes(url) == {(ATC, "A10BA02")}
    assert url in {vs["url"] for vs in service.value_sets()}
    # a ValueSet built on another one is re-evaluated when that one changes
    service.add_value_set({
        "resourceType": "ValueSet", "url": url + "-wrapper", "status": "active",
        "compose": {"include": [{"valueSet": [url]}]}})
    assert service.value_set_codes(url + "-wrapper") == {(ATC, "A10BA02")}
    service.add_value_set({
        "resourceType": "ValueSet", "url": url, "status": "active",
        "compose": {"include": [{"system": ATC, "concept": [{"code": "A10BH01"}]}]},
    })
    assert service.value_set_codes(url + "-wrapper") == {(ATC, "A10BH01")}

    map_url = "https://hospital.example/fhir/ConceptMap/lab-to-loinc"
    service.add_concept_map({
        "resourceType": "ConceptMap", "url": map_url, "status": "active",
        "group": [{"source": "urn:hospital:lab", "target": LOINC, "element": [
            {"code": "GLY", "display": "Glycémie", "target": [
                {"code": "2345-7", "equivalence": "equivalent"}]}]}],
    })
    match = value(service.translate(system="urn:hospital:lab", code="GLY"), "match")
    assert match["concept"] == {"system": LOINC, "code": "2345-7"}
    assert service.concept_map(map_url)["url"] == map_url


@pytest.mark.parametrize(
    "resource",
    [
        {"resourceType": "Patient"},
        {"resourceType": "ValueSet", "compose": {"include": []}},  # no url
        {"resourceType": "ValueSet", "url": "https://x.example/vs"},  # no compose
    ],
)
def test_add_value_set_rejects_bad_resources(resource):
    with pytest.raises(TerminologyError):
        TerminologyService().add_value_set(resource)


def test_add_concept_map_rejects_bad_resources():
    service = TerminologyService()
    with pytest.raises(TerminologyError):
        service.add_concept_map({"resourceType": "ConceptMap", "url": "https://x.example/cm",
                                 "group": [{"element": []}]})  # no source/target
    with pytest.raises(TerminologyError):
        service.add_concept_map({"resourceType": "ConceptMap", "group": []})  # no url


# ---- resources for reads ------------------------------------------------------------

def test_resources_for_reads(service):
    systems = {cs["url"]: cs for cs in service.code_systems()}
    assert set(systems) == {ICD10, CIM10, ATC, LOINC, "http://unitsofmeasure.org"}
    assert systems[ICD10]["content"] == "not-present"
    assert systems[ICD10]["count"] > 12000
    assert systems[LOINC]["content"] == "fragment" and systems[LOINC]["concept"]
    assert "Regenstrief" in systems[LOINC]["copyright"]
    assert {VS_DIABETES_CONDITIONS, VS_DRUGS_USED_IN_DIABETES, VS_GLUCOSE_CODES,
            VS_HBA1C_CODES, VS_GLUCOSE_UNITS} <= {vs["url"] for vs in service.value_sets()}
    maps = {cm["url"] for cm in service.concept_maps()}
    assert {CM_CIM10_TO_ICD10, CM_ATC_PARENT} <= maps


def test_default_is_shared_and_resettable():
    first = TerminologyService.default()
    assert first is TerminologyService.default()
    TerminologyService.reset_default()
    assert TerminologyService.default() is not first


def test_operation_outcome_from_error():
    outcome = TerminologyError("nope", code="not-found", status=404).to_operation_outcome()
    assert outcome["issue"][0] == {"severity": "error", "code": "not-found",
                                   "diagnostics": "nope"}


def test_filter_word_rules(service):
    # long alphabetic words match inside words; digits must start a word
    gliptins = service.expand("https://diatabase.org/fhir/ValueSet/drugs-used-in-diabetes",
                              filter="gliptine", display_language="fr")
    assert {"A10BH01", "A10BH02", "A10BH03", "A10BH05", "A10BD07", "A10BD08"} <= set(
        codes(gliptins))
    type2 = service.expand(ICD10 + "?fhir_vs=isa/E10-E14", filter="type 2")
    assert codes(type2)[0] == "E11"
    assert not any(code.startswith("E10") for code in codes(type2))
    assert codes(service.expand(ALL_ICD10, filter="e11.9")) == ["E11.9"]
    assert codes(service.expand(ALL_ICD10, filter="E119")) == ["E11.9"]
