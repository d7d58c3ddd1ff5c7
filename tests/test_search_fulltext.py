"""Full-text search, `_text` (the narrative) and `_content` (the whole resource's text),
over a real server: SQLite's FTS5 index here, the MongoDB backend's word arrays on
mongomock through tests/test_mongo_http.py (mongomock has no `$text`).

Before, both parameters were ignored (with a warning in the Bundle): `Patient?_text=x`
answered every patient. Each test below failed for that reason on the earlier code.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

XHTML = "http://www.w3.org/1999/xhtml"


def narrative(text: str) -> dict:
    return {"status": "generated", "div": f'<div xmlns="{XHTML}"><p>{text}</p></div>'}


@pytest.fixture
def tag() -> str:
    """A word no other test writes, to keep each test's resources apart."""
    return "t" + uuid.uuid4().hex[:12]


def create(client: httpx.Client, resource: dict) -> str:
    response = client.post(f"/{resource['resourceType']}", json=resource)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def ids(client: httpx.Client, path: str, **params: str) -> set[str]:
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    return {e["resource"]["id"] for e in response.json().get("entry", [])
            if e["search"]["mode"] == "match"}


def patient(tag: str, family: str, given: str, story: str | None = None) -> dict:
    resource = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:example:tags", "value": tag}],
        "name": [{"family": family, "given": [given]}],
    }
    if story is not None:
        resource["text"] = narrative(story)
    return resource


def test_text_searches_the_narrative_accent_and_case_insensitive(client, tag) -> None:
    """The issue's example: "Hélène" is found by "helene"; a word in no narrative finds
    nothing (it found every patient before)."""
    helene = create(client, patient(tag, "Dupont", "Hélène", f"Hélène Dupont, née en 1962 {tag}"))
    create(client, patient(tag, "Martin", "Paul", f"Paul Martin {tag}"))
    assert ids(client, "/Patient", _text=f"helene {tag}") == {helene}
    assert ids(client, "/Patient", _text=f"HÉLÈNE {tag}") == {helene}
    assert ids(client, "/Patient", _text="zzzunknownword") == set()


def test_text_is_the_narrative_only_and_content_the_whole_resource(client, tag) -> None:
    """A name in the resource but not in its narrative: `_content` finds it, `_text` not."""
    francoise = create(client, patient(tag, "Lefèvre", "Françoise", f"Patiente suivie {tag}"))
    assert ids(client, "/Patient", _content=f"francoise lefevre {tag}") == {francoise}
    assert ids(client, "/Patient", _text=f"francoise {tag}") == set()
    assert ids(client, "/Patient", _text=f"suivie {tag}") == {francoise}


def test_content_finds_notes_and_displays_of_clinical_resources(client, tag) -> None:
    observation = create(client, {
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0",
                             "display": "Glucose [Mass/volume] in Blood"}]},
        "valueQuantity": {"value": 182, "unit": "mg/dL"},
        "note": [{"text": f"Hyperglycémie après le goûter {tag}"}],
    })
    assert ids(client, "/Observation", _content=f"hyperglycemie gouter {tag}") == {observation}
    assert ids(client, "/Observation", _content=f"glucose {tag}") == {observation}
    assert ids(client, "/Observation", _content=f"hypoglycemie {tag}") == set()


def test_or_prefix_and_commas(client, tag) -> None:
    anais = create(client, patient(tag, "Roux", "Anaïs", f"Anaïs Roux {tag}"))
    loic = create(client, patient(tag, "Leroy", "Loïc", f"Loïc Leroy {tag}"))
    assert ids(client, "/Patient", _content=f"{tag} anais OR {tag} loic") == {anais, loic}
    assert ids(client, "/Patient", _content=f"{tag} roux,{tag} leroy") == {anais, loic}
    assert ids(client, "/Patient", _content=f"{tag} ana*") == {anais}


def test_full_text_combines_with_other_parameters(client, tag) -> None:
    woman = create(client, {**patient(tag, "Petit", "Chloé", f"Chloé Petit {tag}"),
                            "gender": "female"})
    create(client, {**patient(tag, "Petit", "Noël", f"Noël Petit {tag}"), "gender": "male"})
    create(client, {**patient(tag, "Dubois", "Léa", f"Léa Dubois {tag}"), "gender": "female"})
    assert ids(client, "/Patient", _content=f"petit {tag}", gender="female") == {woman}


def test_an_update_replaces_the_words_and_a_delete_removes_them(client, tag) -> None:
    rid = create(client, patient(tag, "Simon", "Zoé", f"Zoé Simon {tag}"))
    updated = {**patient(tag, "Simon", "Zoé", f"Zoé Moreau {tag}"), "id": rid}
    assert client.put(f"/Patient/{rid}", json=updated).status_code == 200
    assert ids(client, "/Patient", _text=f"moreau {tag}") == {rid}
    assert ids(client, "/Patient", _text=f"simon {tag}") == set()
    assert client.delete(f"/Patient/{rid}").status_code in (200, 204)
    assert ids(client, "/Patient", _content=f"zoe {tag}") == set()


def test_a_transaction_writes_the_words_with_the_resources(client, tag) -> None:
    bundle = {
        "resourceType": "Bundle", "type": "transaction",
        "entry": [{"resource": patient(tag, "Michel", "Éloïse", f"Éloïse Michel {tag}"),
                   "request": {"method": "POST", "url": "Patient"}}],
    }
    response = client.post("/", json=bundle)
    assert response.status_code == 200, response.text
    assert len(ids(client, "/Patient", _text=f"eloise {tag}")) == 1


def test_a_value_without_words_or_with_a_modifier_is_a_400(client) -> None:
    assert client.get("/Patient", params={"_content": "***"}).status_code == 400
    assert client.get("/Patient", params={"_text:exact": "helene"}).status_code == 400


def test_missing_finds_resources_without_a_narrative(client, tag) -> None:
    told = create(client, patient(tag, "Laurent", "Marc", f"Marc Laurent {tag}"))
    untold = create(client, patient(tag, "Laurent", "Jean"))
    mine = {"identifier": f"urn:example:tags|{tag}"}
    assert ids(client, "/Patient", **{"_text:missing": "true"}, **mine) == {untold}
    assert ids(client, "/Patient", **{"_text:missing": "false"}, **mine) == {told}
    assert ids(client, "/Patient", **{"_content:missing": "false"}, **mine) == {told, untold}


def test_system_level_search_by_words(client, tag) -> None:
    rid = create(client, patient(tag, "Bernard", "Anne", f"Anne Bernard {tag}"))
    response = client.get("/", params={"_content": f"bernard {tag}", "_type": "Patient"})
    assert response.status_code == 200, response.text
    assert [e["resource"]["id"] for e in response.json()["entry"]] == [rid]


READING = {
    "resourceType": "Observation", "id": "obs-77",
    "meta": {"versionId": "3", "profile": ["https://example.org/StructureDefinition/x"]},
    "text": {"status": "generated",
             "div": f'<div xmlns="{XHTML}"><p>Glyc&#233;mie &amp; <b>repas</b></p></div>'},
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "99504-3"}]},
    "subject": {"reference": "Patient/p-secret-id"},
    "effectiveDateTime": "2024-03-05T08:00:00Z",
    "valueQuantity": {"value": 187, "unit": "mg/dL"},
}


def test_what_is_indexed_and_what_is_not() -> None:
    """Text a person searches; not ids, references, URLs, codes, dates or numbers (a CGM
    reading has none: no row)."""
    from fhir_server.search.fulltext import fulltext_entry, parse_text_value

    entry = fulltext_entry(READING)
    assert entry is not None
    assert entry.narrative == "Glycémie & repas"
    assert entry.content == ""
    assert fulltext_entry({k: v for k, v in READING.items() if k != "text"}) is None
    coded = {**READING, "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0",
                                             "display": "Glucose"}], "text": "Glycémie"}}
    assert fulltext_entry(coded).content == "Glucose Glycémie"
    value = parse_text_value("Hélène OR dup* AND x", "_content")
    assert [[(t.word, t.prefix) for t in group] for group in value.groups] == [
        [("helene", False)], [("dup", True), ("x", False)]]
