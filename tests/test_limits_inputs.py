"""Valid but extreme input gets an answer or a 4xx naming the limit, never a 500.

Each case here was a 500 before the limits (fhir_server/limits.py): a decimal of 1e309
(the JSON parser made it infinity, which nothing downstream could write), extensions 126
deep and Questionnaire items 130 deep (orjson writes at most 255 levels), a 6-link chain
and 8 nested `_has` (SQLite's parser stack), a parameter repeated 1,000 times (SQLite's
expression depth) and `_revinclude:iterate=*` over a page of 1,000 (one OR term per
resource of the page, past that same depth).
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

import httpx
import orjson
import pytest

from fhir_server.model import jsonio

FHIR_JSON = {"content-type": "application/fhir+json"}


def nested_extension(depth: int) -> dict:
    extension: dict = {"url": "http://example.org/leaf", "valueString": "deepest"}
    for level in range(depth):
        extension = {"url": f"http://example.org/level-{level}", "extension": [extension]}
    return extension


def nested_items(depth: int) -> dict:
    item: dict = {"linkId": "leaf", "text": "How are you?", "type": "string"}
    for level in range(depth):
        item = {"linkId": f"group-{level}", "type": "group", "item": [item]}
    return item


def issue(response: httpx.Response) -> dict:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]


@pytest.mark.parametrize("literal", ["1e309", "-1e309", "1E400", "9" * 400])
def test_a_decimal_beyond_the_fhir_range_is_a_400(client: httpx.Client, literal: str) -> None:
    """Was a 500: json parsed 1e309 as infinity, which the validator and writer refused."""
    body = (
        '{"resourceType": "Observation", "status": "final", "code": {"text": "x"}, '
        f'"valueQuantity": {{"value": {literal}, "unit": "mg/dL"}}}}'
    )
    response = client.post("/Observation", content=body, headers=FHIR_JSON)
    assert response.status_code == 400, response.text
    assert "range of FHIR decimals" in issue(response)["diagnostics"]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_a_400(client: httpx.Client, constant: str) -> None:
    body = (
        '{"resourceType": "Observation", "status": "final", "code": {"text": "x"}, '
        f'"valueQuantity": {{"value": 1.50, "unit": "mg/dL"}}, "extension": '
        f'[{{"url": "http://example.org/x", "valueDecimal": {constant}}}]}}'
    )
    response = client.post("/Observation", content=body, headers=FHIR_JSON)
    assert response.status_code == 400, response.text


def test_the_largest_double_is_kept_verbatim(client: httpx.Client) -> None:
    body = (
        '{"resourceType": "Observation", "status": "final", "code": {"text": "x"}, '
        '"valueQuantity": {"value": 1.7976931348623157e308, "unit": "mg/dL"}}'
    )
    created = client.post("/Observation", content=body, headers=FHIR_JSON)
    assert created.status_code == 201, created.text
    read = client.get(f"/Observation/{created.json()['id']}")
    assert b'"value":1.7976931348623157e308' in read.content


def _store_and_read(client: httpx.Client, resource_type: str, resource: dict) -> dict:
    created = client.post(f"/{resource_type}", content=json.dumps(resource), headers=FHIR_JSON)
    assert created.status_code == 201, created.text
    rid = created.json()["id"]
    read = client.get(f"/{resource_type}/{rid}")
    assert read.status_code == 200, read.text
    found = client.get(f"/{resource_type}", params={"_id": rid})
    assert found.status_code == 200, found.text
    assert found.json()["entry"][0]["resource"] == read.json()
    return read.json()


def test_extensions_nested_126_deep_are_stored_and_read_back(client: httpx.Client) -> None:
    """Was a 500: orjson's recursion limit (255 levels) when writing the stored JSON."""
    patient = {"resourceType": "Patient", "extension": [nested_extension(126)]}
    stored = _store_and_read(client, "Patient", patient)
    assert stored["extension"] == patient["extension"]
    assert jsonio.nesting_depth(stored) >= 255  # orjson stops at 255


def test_questionnaire_items_130_deep_are_stored_and_read_back(client: httpx.Client) -> None:
    """Was a 500, as above: Questionnaires nest items deeply and are valid that way."""
    questionnaire = {"resourceType": "Questionnaire", "status": "active"}
    questionnaire["item"] = [nested_items(130)]
    stored = _store_and_read(client, "Questionnaire", questionnaire)
    assert stored["item"] == questionnaire["item"]
    pretty = client.get(f"/Questionnaire/{stored['id']}", params={"_pretty": "true"})
    assert json.loads(pretty.content)["item"] == questionnaire["item"]


def test_json_deeper_than_the_limit_is_a_400_naming_it(client: httpx.Client) -> None:
    too_deep = {"resourceType": "Patient", "extension": [nested_extension(400)]}
    response = client.post("/Patient", content=jsonio.dumps(too_deep), headers=FHIR_JSON)
    assert response.status_code == 400, response.text
    assert issue(response)["code"] == "too-costly"
    assert "max_json_depth" in issue(response)["diagnostics"]


def test_json_deeper_than_any_parser_is_a_400(client: httpx.Client) -> None:
    body = '{"resourceType": "Patient", "x": ' + "[" * 5000 + "]" * 5000 + "}"
    response = client.post("/Patient", content=body, headers=FHIR_JSON)
    assert response.status_code == 400, response.text


@pytest.mark.parametrize(
    ("query", "limit"),
    [
        ("Observation?subject:Patient" + ".link:Patient" * 5 + ".name=x", "max_chain_depth"),
        ("Patient?" + "_has:Patient:link:" * 8 + "name=x", "max_has_depth"),
        ("Patient?" + "_has:Patient:link:" * 2 + "link:Patient." * 4 + "name=x", "max_nesting"),
        ("Observation?" + "&".join(f"value-quantity=ne{i}" for i in range(1000)),
         "max_search_parameters"),
        ("Observation?value-quantity=" + ",".join(f"ne{i}" for i in range(101)),
         "max_or_values"),
        ("Observation?" + "&".join(
            "value-quantity=" + ",".join(f"ne{i}" for i in range(91)) for _ in range(11)
        ), "max_search_values"),
    ],
    ids=["chain-6", "has-8", "has-2-chain-4", "repeated-1000", "values-101", "values-1001"],
)
def test_searches_past_a_limit_are_a_400_naming_it(
    client: httpx.Client, query: str, limit: str
) -> None:
    """The chain, _has and repeated-parameter cases were 500s (SQLite parser stack overflow,
    expression tree too large)."""
    response = client.get(f"/{query}")
    assert response.status_code == 400, response.text
    assert issue(response)["code"] == "too-costly"
    assert limit in issue(response)["diagnostics"]


def test_searches_at_the_limits_are_answered(client: httpx.Client) -> None:
    at_limits = [
        "Observation?subject:Patient" + ".link:Patient" * 3 + ".name=x",
        "Patient?" + "_has:Patient:link:" * 4 + "name=x",
        "Patient?_has:Patient:link:" + "link:Patient." * 4 + "name=x",
    ]
    for query in at_limits:
        response = client.get(f"/{query}")
        assert response.status_code == 200, (query[:80], response.text)
    most = [
        ("value-quantity", ",".join(f"ne{i * 100 + j}" for j in range(100))) for i in range(10)
    ]
    response = client.post(
        "/Observation/_search",
        content=urlencode(most),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text


def test_revinclude_iterate_over_a_page_of_a_thousand(client: httpx.Client) -> None:
    """Was a 500: `_revinclude:iterate=*` made one OR term per resource of the page, and a
    page of 1,000 went past SQLite's expression depth."""
    family = "Iterate-family"
    entries = [
        {
            "fullUrl": f"urn:uuid:00000000-0000-0000-0000-{i:012d}",
            "resource": {"resourceType": "Patient", "name": [{"family": family}]},
            "request": {"method": "POST", "url": "Patient"},
        }
        for i in range(1001)
    ]
    # each patient but the first links to the one before it
    for i in range(1, 1001):
        entries[i]["resource"]["link"] = [
            {"other": {"reference": entries[i - 1]["fullUrl"]}, "type": "seealso"}
        ]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    stored = client.post("/", content=orjson.dumps(bundle), headers=FHIR_JSON)
    assert stored.status_code == 200, stored.text
    response = client.get(
        "/Patient",
        params={"family": family, "_count": "1000", "_include": "*",
                "_revinclude:iterate": "*"},
    )
    assert response.status_code == 200, response.text
    modes = [e["search"]["mode"] for e in response.json()["entry"]]
    assert modes.count("match") == 1000
    assert modes.count("include") == 1  # the 1,001st patient, linking to the 1,000th


def test_a_bundle_past_max_bundle_entries_is_a_413_naming_it(tmp_path) -> None:
    from fhir_server.limits import Limits
    from fhir_server.settings import Settings
    from tests.conftest import RunningServer

    settings = Settings(
        db_url=f"sqlite:///{tmp_path / 'bundle.db'}",
        insecure_dev=True,
        limits=Limits(max_bundle_entries=5),
    )
    entry = {"resource": {"resourceType": "Basic", "code": {"text": "x"}},
             "request": {"method": "POST", "url": "Basic"}}
    with RunningServer(settings) as server, httpx.Client(base_url=server.url) as http:
        for count, status in ((5, 200), (6, 413)):
            bundle = {"resourceType": "Bundle", "type": "batch", "entry": [entry] * count}
            response = http.post("/", json=bundle, timeout=60)
            assert response.status_code == status, response.text
        assert "max_bundle_entries" in issue(response)["diagnostics"]


def test_a_body_of_too_many_small_objects_is_refused_before_parsing(tmp_path) -> None:
    """A body is refused when its estimated memory once parsed passes the limit (an 18.6 MB
    Observation of 150,000 components took +457 MB); the same size in a few strings passes."""
    from fhir_server.limits import Limits
    from fhir_server.settings import Settings
    from tests.conftest import RunningServer

    settings = Settings(
        db_url=f"sqlite:///{tmp_path / 'memory.db'}",
        insecure_dev=True,
        limits=Limits(max_body_memory_bytes=20 * 1024 * 1024),
    )
    component = {"code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
                 "valueQuantity": {"value": 120, "unit": "mg/dL"}}
    many = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "component": [component] * 10_000}
    text = json.dumps(many)
    few_strings = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                   "note": [{"text": "y" * 500_000} for _ in range(len(text) // 500_000 + 1)]}
    with RunningServer(settings) as server, httpx.Client(base_url=server.url) as http:
        refused = http.post("/Observation", content=text, headers=FHIR_JSON, timeout=120)
        assert refused.status_code == 413, refused.text
        assert "max_body_memory_bytes" in issue(refused)["diagnostics"]
        accepted = http.post("/Observation", json=few_strings, timeout=120)
        assert accepted.status_code == 201, accepted.text
