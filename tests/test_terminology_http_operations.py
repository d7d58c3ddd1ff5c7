"""The FHIR terminology operations over HTTP, against a real server (uvicorn + SQLite):
GET with query parameters and POST with a Parameters body, type and instance level,
and bad input answered with an OperationOutcome or result=false, never a 500."""

from __future__ import annotations

import httpx
import pytest

ICD10 = "http://hl7.org/fhir/sid/icd-10"
CIM10 = "https://smt.esante.gouv.fr/terminologie-cim-10/"
ATC = "http://www.whocc.no/atc"
LOINC = "http://loinc.org"
VS_DIABETES = "https://diatabase.org/fhir/ValueSet/diabetes-conditions"
VS_DRUGS = "https://diatabase.org/fhir/ValueSet/drugs-used-in-diabetes"
CM_CIM10_TO_ICD10 = "https://diatabase.org/fhir/ConceptMap/cim10-to-icd10"
FHIR_JSON = "application/fhir+json"


def values(parameters: dict, name: str) -> list:
    """The value[x] of every top-level parameter called `name`."""
    assert parameters["resourceType"] == "Parameters", parameters
    out = []
    for entry in parameters["parameter"]:
        if entry["name"] == name:
            out.append(next(v for k, v in entry.items() if k.startswith("value") or k == "part"))
    return out


def one(parameters: dict, name: str) -> object:
    found = values(parameters, name)
    assert len(found) == 1, (name, parameters)
    return found[0]


def parts(part_list: list) -> dict:
    return {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in part_list}


def post_parameters(client: httpx.Client, path: str, *entries: dict) -> httpx.Response:
    body = {"resourceType": "Parameters", "parameter": list(entries)}
    return client.post(path, json=body, headers={"content-type": FHIR_JSON})


def assert_outcome(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert all(issue["diagnostics"] for issue in body["issue"])
    if code is not None:
        assert code in {issue["code"] for issue in body["issue"]}, body
    return body


# -- CodeSystem/$lookup ---------------------------------------------------------------------


def test_lookup_get_in_french_and_english(client: httpx.Client) -> None:
    fr = client.get("/CodeSystem/$lookup",
                    params={"system": ICD10, "code": "E11.9", "displayLanguage": "fr"})
    assert fr.status_code == 200, fr.text
    assert one(fr.json(), "display") == "Diabète sucré de type 2, sans complication"
    en = client.get("/CodeSystem/$lookup",
                    params={"system": ICD10, "code": "E11.9", "displayLanguage": "en"})
    assert one(en.json(), "display") == "Type 2 diabetes mellitus without complications"
    designations = [parts(p) for p in values(en.json(), "designation")]
    assert {"language": "fr", "value": "Diabète sucré de type 2, sans complication"} in designations


def test_lookup_post_with_coding_gives_hierarchy_properties(client: httpx.Client) -> None:
    response = post_parameters(
        client, "/CodeSystem/$lookup",
        {"name": "coding", "valueCoding": {"system": ATC, "code": "A10BA02"}},
        {"name": "displayLanguage", "valueCode": "fr"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert one(body, "display") == "metformine"
    properties = [parts(p) for p in values(body, "property")]
    assert {"code": "parent", "value": "A10BA", "description": "Biguanides"} in properties


def test_lookup_property_filter(client: httpx.Client) -> None:
    response = client.get("/CodeSystem/$lookup",
                          params={"system": ICD10, "code": "E11", "property": "child"})
    properties = [parts(p) for p in values(response.json(), "property")]
    assert properties and {p["code"] for p in properties} == {"child"}
    assert "E11.9" in {p["value"] for p in properties}


def test_lookup_unknown_system_and_code_are_404(client: httpx.Client) -> None:
    assert_outcome(client.get("/CodeSystem/$lookup",
                              params={"system": "http://example.org/none", "code": "X"}),
                   404, "not-found")
    assert_outcome(client.get("/CodeSystem/$lookup", params={"system": ICD10, "code": "E99.99"}),
                   404, "not-found")
    assert_outcome(client.get("/CodeSystem/$lookup", params={"system": ICD10}), 400, "invalid")


# -- CodeSystem/$validate-code and $subsumes ----------------------------------------------------


def test_code_system_validate_code_true_and_false(client: httpx.Client) -> None:
    ok = client.get("/CodeSystem/$validate-code", params={"url": ICD10, "code": "E11.9"})
    assert ok.status_code == 200 and one(ok.json(), "result") is True
    unknown = client.get("/CodeSystem/$validate-code", params={"url": ICD10, "code": "E11.99"})
    assert unknown.status_code == 200
    assert one(unknown.json(), "result") is False
    assert "E11.99" in one(unknown.json(), "message")
    wrong_display = client.get("/CodeSystem/$validate-code",
                               params={"url": ICD10, "code": "E11.9", "display": "Asthma"})
    assert one(wrong_display.json(), "result") is False
    accents_ignored = client.get(
        "/CodeSystem/$validate-code",
        params={"url": ICD10, "code": "E11.9",
                "display": "diabete sucre de type 2, sans complication"},
    )
    assert one(accents_ignored.json(), "result") is True


def test_code_system_validate_code_instance_level(client: httpx.Client) -> None:
    found = client.get("/CodeSystem", params={"url": ATC}).json()
    assert found["total"] == 1
    rid = found["entry"][0]["resource"]["id"]
    ok = post_parameters(client, f"/CodeSystem/{rid}/$validate-code",
                         {"name": "code", "valueCode": "A10BH01"})
    assert ok.status_code == 200, ok.text
    assert one(ok.json(), "result") is True
    not_there = client.get(f"/CodeSystem/{rid}/$validate-code", params={"code": "E11.9"})
    assert one(not_there.json(), "result") is False
    assert_outcome(client.get("/CodeSystem/no-such-system/$validate-code",
                              params={"code": "E11"}), 404)


def test_subsumes_get_post_and_instance(client: httpx.Client) -> None:
    get = client.get("/CodeSystem/$subsumes",
                     params={"system": ICD10, "codeA": "E11", "codeB": "E11.9"})
    assert one(get.json(), "outcome") == "subsumes"
    post = post_parameters(
        client, "/CodeSystem/$subsumes",
        {"name": "codingA", "valueCoding": {"system": ICD10, "code": "E11.9"}},
        {"name": "codingB", "valueCoding": {"system": ICD10, "code": "E10-E14"}},
    )
    assert post.status_code == 200, post.text
    assert one(post.json(), "outcome") == "subsumed-by"
    rid = client.get("/CodeSystem", params={"url": ICD10}).json()["entry"][0]["resource"]["id"]
    instance = client.get(f"/CodeSystem/{rid}/$subsumes", params={"codeA": "E10", "codeB": "E11"})
    assert one(instance.json(), "outcome") == "not-subsumed"
    assert_outcome(client.get("/CodeSystem/$subsumes",
                              params={"system": ICD10, "codeA": "E11", "codeB": "NOPE"}), 400)


# -- ValueSet/$expand -----------------------------------------------------------------------


def test_expand_filter_is_accent_insensitive_and_applied_before_paging(
    client: httpx.Client,
) -> None:
    everything = client.get("/ValueSet/$expand",
                            params={"url": VS_DIABETES, "filter": "diabete"}).json()
    total = everything["expansion"]["total"]
    codes = [c["code"] for c in everything["expansion"]["contains"]]
    assert total == len(codes) > 10
    assert all("diab" in c["display"].lower() or c["system"] == ICD10
               for c in everything["expansion"]["contains"])
    page = client.get("/ValueSet/$expand", params={
        "url": VS_DIABETES, "filter": "diabete", "offset": 5, "count": 3,
        "displayLanguage": "fr"}).json()
    assert page["expansion"]["total"] == total
    assert page["expansion"]["offset"] == 5
    assert [c["code"] for c in page["expansion"]["contains"]] == codes[5:8]
    assert any("Diabète" in c["display"] for c in page["expansion"]["contains"])


def test_expand_count_zero_gives_the_total_only(client: httpx.Client) -> None:
    body = client.get("/ValueSet/$expand", params={"url": VS_DRUGS, "count": 0}).json()
    assert body["expansion"]["total"] > 20
    assert "contains" not in body["expansion"]


def test_expand_display_language(client: httpx.Client) -> None:
    def metformin(language: str) -> str:
        body = client.get("/ValueSet/$expand", params={
            "url": VS_DRUGS, "filter": "A10BA02", "displayLanguage": language}).json()
        (entry,) = body["expansion"]["contains"]
        return entry["display"]

    assert metformin("fr") == "metformine"
    assert metformin("en") == "metformin"


def test_expand_instance_level_and_post_with_inline_value_set(client: httpx.Client) -> None:
    rid = client.get("/ValueSet", params={"url": VS_DRUGS}).json()["entry"][0]["resource"]["id"]
    instance = client.get(f"/ValueSet/{rid}/$expand", params={"filter": "gliptine"}).json()
    assert {c["code"] for c in instance["expansion"]["contains"]} >= {"A10BH01"}
    inline = {
        "resourceType": "ValueSet", "status": "active",
        "compose": {"include": [{"system": ICD10, "concept": [{"code": "E10.9"},
                                                              {"code": "E11.9"}]}]},
    }
    posted = post_parameters(client, "/ValueSet/$expand",
                             {"name": "valueSet", "resource": inline})
    assert posted.status_code == 200, posted.text
    assert [c["code"] for c in posted.json()["expansion"]["contains"]] == ["E10.9", "E11.9"]


def test_expand_bad_input(client: httpx.Client) -> None:
    assert_outcome(client.get("/ValueSet/$expand",
                              params={"url": "http://example.org/ValueSet/none"}), 404)
    assert_outcome(client.get("/ValueSet/$expand", params={"url": VS_DRUGS, "count": "-1"}), 400)
    assert_outcome(client.get("/ValueSet/$expand", params={"url": VS_DRUGS, "offset": "x"}), 400)
    assert_outcome(client.get("/ValueSet/$expand"), 400)


# -- ValueSet/$validate-code ------------------------------------------------------------------


def test_value_set_validate_code(client: httpx.Client) -> None:
    inside = client.get("/ValueSet/$validate-code",
                        params={"url": VS_DIABETES, "system": CIM10, "code": "E11.9"})
    assert one(inside.json(), "result") is True
    outside = client.get("/ValueSet/$validate-code",
                         params={"url": VS_DIABETES, "system": ICD10, "code": "I10"})
    assert outside.status_code == 200
    assert one(outside.json(), "result") is False
    posted = post_parameters(
        client, "/ValueSet/$validate-code",
        {"name": "url", "valueUri": VS_DRUGS},
        {"name": "coding", "valueCoding": {"system": ATC, "code": "A10BA02",
                                           "display": "Metformin"}},
    )
    assert one(posted.json(), "result") is True
    rid = client.get("/ValueSet", params={"url": VS_DRUGS}).json()["entry"][0]["resource"]["id"]
    instance = client.get(f"/ValueSet/{rid}/$validate-code",
                          params={"system": ATC, "code": "C10AA01"})
    assert one(instance.json(), "result") is False


# -- ConceptMap/$translate --------------------------------------------------------------------


def test_translate_cim10_extension_to_icd10_and_back(client: httpx.Client) -> None:
    forward = client.get("/ConceptMap/$translate", params={"system": CIM10, "code": "E11.00"})
    assert forward.status_code == 200, forward.text
    assert one(forward.json(), "result") is True
    matches = [parts(p) for p in values(forward.json(), "match")]
    assert {"system": ICD10, "code": "E11.0"} in [
        {"system": m["concept"]["system"], "code": m["concept"]["code"]} for m in matches]
    assert {m["equivalence"] for m in matches} == {"wider"}
    backward = post_parameters(
        client, "/ConceptMap/$translate",
        {"name": "url", "valueUri": CM_CIM10_TO_ICD10},
        {"name": "coding", "valueCoding": {"system": ICD10, "code": "E11.0"}},
        {"name": "reverse", "valueBoolean": True},
    )
    assert backward.status_code == 200, backward.text
    reversed_matches = [parts(p) for p in values(backward.json(), "match")]
    by_code = {m["concept"]["code"]: m["equivalence"] for m in reversed_matches}
    assert by_code["E11.00"] == "narrower"
    assert by_code["E11.0"] == "equivalent"


def test_translate_instance_level_and_atc_level_up(client: httpx.Client) -> None:
    found = client.get("/ConceptMap", params={"url": CM_CIM10_TO_ICD10}).json()
    rid = found["entry"][0]["resource"]["id"]
    instance = client.get(f"/ConceptMap/{rid}/$translate",
                          params={"system": CIM10, "code": "E11.9"})
    (match,) = [parts(p) for p in values(instance.json(), "match")]
    assert match["concept"]["code"] == "E11.9" and match["equivalence"] == "equivalent"
    atc = client.get("/ConceptMap/$translate",
                     params={"system": ATC, "code": "A10BA02", "targetsystem": ATC})
    assert [parts(p)["concept"]["code"] for p in values(atc.json(), "match")] == ["A10BA"]


def test_translate_without_mapping_is_result_false(client: httpx.Client) -> None:
    response = client.get("/ConceptMap/$translate", params={"system": LOINC, "code": "2339-0"})
    assert response.status_code == 200
    assert one(response.json(), "result") is False
    assert_outcome(client.get("/ConceptMap/$translate",
                              params={"url": "http://example.org/cm", "system": ICD10,
                                      "code": "E11"}), 404)


# -- malformed requests ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"resourceType": "Patient"},
        {"resourceType": "Parameters", "parameter": "system"},
        {"resourceType": "Parameters", "parameter": [{"valueString": "no name"}]},
        {"resourceType": "Parameters", "parameter": [{"name": "code", "valueInteger": 5}]},
        {"resourceType": "Parameters", "parameter": [
            {"name": "coding", "valueCoding": {"system": ICD10, "code": 11}}]},
        {"resourceType": "Parameters", "parameter": [
            {"name": "codeableConcept", "valueCodeableConcept": {"coding": ["E11"]}}]},
        {"resourceType": "Parameters", "parameter": [
            {"name": "system", "valueUri": ICD10}, {"name": "code", "valueCode": "E11"},
            {"name": "code", "valueCode": "E10"}]},
        [1, 2, 3],
    ],
)
def test_malformed_parameters_are_a_400_outcome(client: httpx.Client, body: object) -> None:
    for path in ("/CodeSystem/$lookup", "/CodeSystem/$validate-code", "/ValueSet/$expand",
                 "/ValueSet/$validate-code", "/ConceptMap/$translate", "/CodeSystem/$subsumes"):
        response = client.post(path, json=body, headers={"content-type": FHIR_JSON})
        assert_outcome(response, 400)


def test_broken_json_and_xml_are_refused_cleanly(client: httpx.Client) -> None:
    broken = client.post("/CodeSystem/$lookup", content=b"{not json",
                         headers={"content-type": FHIR_JSON})
    assert_outcome(broken, 400)
    xml = client.post("/CodeSystem/$lookup", content=b"<Parameters/>",
                      headers={"content-type": "application/fhir+xml"})
    assert_outcome(xml, 415)


def test_operations_are_in_the_capability_statement(client: httpx.Client) -> None:
    statement = client.get("/metadata").json()
    listed = {
        entry["type"]: {op["name"] for op in entry.get("operation", [])}
        for entry in statement["rest"][0]["resource"]
    }
    assert listed["CodeSystem"] >= {"lookup", "validate-code", "subsumes"}
    assert listed["ValueSet"] >= {"expand", "validate-code"}
    assert listed["ConceptMap"] >= {"translate"}


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/ValueSet/$expand", {"url": f"{ICD10}?fhir_vs", "count": "99999999999999999999"}, 400),
        ("/ValueSet/$expand", {"url": f"{ICD10}?fhir_vs", "filter": "x" * 3000}, 200),
        ("/ValueSet/$expand", {"url": f"{ICD10}?fhir_vs=unsupported"}, 400),
        ("/ValueSet/$expand", {"url": VS_DRUGS, "count": "1.5"}, 400),
        ("/ValueSet/$validate-code", {"url": VS_DRUGS}, 400),
        ("/ConceptMap/$translate", {"system": ICD10}, 400),
        ("/ConceptMap/$translate", {"system": ICD10, "code": "E11", "reverse": "maybe"}, 400),
        ("/CodeSystem/$subsumes", {"system": "http://example.org/x", "codeA": "A",
                                   "codeB": "B"}, 404),
        ("/CodeSystem/$lookup", {"system": ICD10, "code": "E11", "version": "1999"}, 404),
        ("/ValueSet/no-such-id/$expand", {}, 404),
    ],
)
def test_odd_get_inputs_never_give_a_500(
    client: httpx.Client, path: str, params: dict, status: int
) -> None:
    response = client.get(path, params=params)
    assert response.status_code == status, response.text
    expected = "OperationOutcome" if status >= 400 else ("ValueSet", "Parameters")
    assert response.json()["resourceType"] in expected


@pytest.mark.parametrize(
    "compose",
    [
        {"include": "x"},
        {"include": [5]},
        {"include": [{}]},
        {"include": [{"system": ICD10, "filter": "x"}]},
        {"include": [{"system": ICD10, "filter": [{"op": "is-a"}]}]},
        {"include": [{"system": ICD10, "filter": [{"property": "concept", "op": "regex",
                                                    "value": "("}]}]},
        {"include": [{"system": "http://example.org/unknown"}]},
        {"include": [{"valueSet": ["http://example.org/ValueSet/unknown"]}]},
        "x",
    ],
)
def test_malformed_inline_value_sets_are_refused_cleanly(
    client: httpx.Client, compose: object
) -> None:
    response = post_parameters(client, "/ValueSet/$expand", {
        "name": "valueSet", "resource": {"resourceType": "ValueSet", "compose": compose}})
    assert response.status_code in (400, 404), response.text
    assert response.json()["resourceType"] == "OperationOutcome"


def test_accept_language_gives_the_display_language(client: httpx.Client) -> None:
    params = {"system": ICD10, "code": "E11.9"}
    french = client.get("/CodeSystem/$lookup", params=params,
                        headers={"accept-language": "fr-FR,fr;q=0.9,en;q=0.5"})
    assert one(french.json(), "display") == "Diabète sucré de type 2, sans complication"
    english = client.get("/CodeSystem/$lookup", params={**params, "displayLanguage": "en"},
                         headers={"accept-language": "fr-FR"})
    assert one(english.json(), "display") == "Type 2 diabetes mellitus without complications"
