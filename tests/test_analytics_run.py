"""`ViewDefinition/$run` over HTTP on a real server (uvicorn + SQLite): stored and inline
views, every output format, the de-identified facade (a scan of the outputs for the
patients' names, identifiers and unshifted dates), a patient-context token limited to its
patient's rows, ViewDefinition stored and validated as a resource, and
`$viewdefinition-export` as a job."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from fhir_server.settings import Settings
from tests.auth_tokens import TestIssuer, bearer
from tests.bulk_client import kick_off, wait
from tests.conftest import RunningServer, database_url
from tests.deid_data import french_patients, secrets_of, transaction, write_recipients

KEY = "analytics-recipient-key-1"
PATIENTS = french_patients(count=6, readings=12)
OBSERVATIONS = [r for r in PATIENTS if r["resourceType"] == "Observation"]

GLUCOSE_VIEW: dict[str, Any] = {
    "resourceType": "ViewDefinition",
    "name": "glucose_readings",
    "status": "active",
    "resource": "Observation",
    "select": [{"column": [
        {"name": "id", "path": "getResourceKey()"},
        {"name": "patient", "path": "subject.getReferenceKey(Patient)"},
        {"name": "code", "path": "code.coding.code.first()"},
        {"name": "value", "path": "value.ofType(Quantity).value", "type": "decimal"},
        {"name": "effective", "path": "effective.ofType(dateTime)", "type": "dateTime"},
    ]}],
}  # fmt: skip
PATIENT_VIEW: dict[str, Any] = {
    "resourceType": "ViewDefinition",
    "name": "patients",
    "status": "active",
    "resource": "Patient",
    "select": [
        {"column": [
            {"name": "id", "path": "getResourceKey()"},
            {"name": "birth_date", "path": "birthDate", "type": "date"},
            {"name": "gender", "path": "gender"},
            {"name": "family", "path": "name.family.first()"},
            {"name": "identifiers", "path": "identifier.value", "collection": True},
        ]},
        {"forEachOrNull": "address", "column": [
            {"name": "postal_code", "path": "postalCode"},
            {"name": "city", "path": "city"},
        ]},
    ],
}  # fmt: skip


def _parameters(view: dict, fmt: str, resources: list[dict] | None = None) -> dict:
    parameters: list[dict] = [{"name": "viewResource", "resource": view},
                              {"name": "_format", "valueCode": fmt}]  # fmt: skip
    parameters += [{"name": "resource", "resource": r} for r in resources or ()]
    return {"resourceType": "Parameters", "parameter": parameters}


def _last_decimal(value: float) -> float:
    """One unit of the last decimal written: 0.1 for 7.4, 1 for 126."""
    text = repr(value)
    return 10.0 ** -(len(text.split(".")[1]) if "." in text and not text.endswith(".0") else 0)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("analytics")
    # k = 1: a few patients; k-anonymity of the facade is tested in test_deid_kanonymity.
    write_recipients(
        folder / "recipients.json", {"research": KEY}, {"research": {"kAnonymity": {"k": 1}}}
    )
    settings = Settings(
        db_url=database_url(folder),
        max_body_bytes=20_000_000,
        deid_secret="analytics-test-master-secret-0123456789",
        deid_recipients=str(folder / "recipients.json"),
        insecure_dev=True,
    )
    with RunningServer(settings) as running, httpx.Client(base_url=running.url, timeout=60) as h:
        assert h.post("/", json=transaction(PATIENTS)).status_code == 200
        yield running


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def stored_views(http: httpx.Client) -> dict[str, str]:
    ids = {}
    for view in (GLUCOSE_VIEW, PATIENT_VIEW):
        made = http.post("/ViewDefinition", json=view)
        assert made.status_code == 201, made.text
        ids[view["name"]] = made.json()["id"]
    return ids


def test_a_view_definition_is_stored_searched_and_validated(
    http: httpx.Client, stored_views: dict[str, str]
) -> None:
    found = http.get("/ViewDefinition", params={"name": "glucose_readings"}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [stored_views["glucose_readings"]]
    by_type = http.get("/ViewDefinition", params={"resource": "Patient"}).json()
    assert [e["resource"]["name"] for e in by_type["entry"]] == ["patients"]
    broken_path = {**GLUCOSE_VIEW, "select": [{"column": [{"name": "x", "path": "name.where("}]}]}
    refused = http.post("/ViewDefinition", json=broken_path)
    assert refused.status_code == 400
    assert refused.json()["resourceType"] == "OperationOutcome"
    assert "invalid FHIRPath" in refused.text
    unknown_element = {**GLUCOSE_VIEW, "selct": []}
    assert http.post("/ViewDefinition", json=unknown_element).status_code == 400
    no_resource = {k: v for k, v in GLUCOSE_VIEW.items() if k != "resource"}
    assert http.post("/ViewDefinition", json=no_resource).status_code == 400


def test_run_by_id_over_the_store_in_every_format(
    http: httpx.Client, stored_views: dict[str, str]
) -> None:
    url = f"/ViewDefinition/{stored_views['glucose_readings']}/$run"
    expected = {o["id"]: o["valueQuantity"]["value"] for o in OBSERVATIONS}

    as_csv = http.get(url, params={"_format": "csv"})
    assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert {r["id"]: float(r["value"]) for r in rows} == expected

    ndjson = http.get(url, params={"_format": "ndjson"})
    lines = [json.loads(line) for line in ndjson.text.splitlines()]
    assert {r["id"]: r["value"] for r in lines} == expected

    as_json = http.get(url, headers={"Accept": "application/json"}).json()
    assert len(as_json) == len(expected)

    parquet = http.get(url, params={"_format": "parquet"})
    table = pq.read_table(io.BytesIO(parquet.content))
    assert str(table.schema.field("value").type) == "double"
    assert dict(zip(table["id"].to_pylist(), table["value"].to_pylist(), strict=True)) == expected

    limited = http.get(url, params={"_format": "ndjson", "_limit": "3"})
    assert len(limited.text.splitlines()) == 3
    one = http.get(url, params={"_format": "ndjson", "patient": f"Patient/{PATIENTS[0]['id']}"})
    assert {json.loads(line)["patient"] for line in one.text.splitlines()} == {PATIENTS[0]["id"]}


def test_run_inline_view_on_inline_resources(http: httpx.Client) -> None:
    resources = [{"resourceType": "Patient", "id": "p1", "gender": "female",
                  "address": [{"postalCode": "75011"}, {"postalCode": "13001"}]},
                 {"resourceType": "Patient", "id": "p2"}]  # fmt: skip
    answer = http.post("/ViewDefinition/$run", json=_parameters(PATIENT_VIEW, "json", resources))
    assert answer.status_code == 200, answer.text
    assert [(r["id"], r["postal_code"]) for r in answer.json()] == [
        ("p1", "75011"),
        ("p1", "13001"),
        ("p2", None),
    ]


def test_errors_are_operation_outcomes(http: httpx.Client) -> None:
    several = {**GLUCOSE_VIEW, "select": [{"column": [{"name": "c", "path": "code.coding.code"}]}]}
    resource = {"resourceType": "Observation", "id": "o", "status": "final", "code": {
        "coding": [{"code": "a"}, {"code": "b"}]}}  # fmt: skip
    answer = http.post("/ViewDefinition/$run", json=_parameters(several, "csv", [resource]))
    assert answer.status_code == 400
    assert "collection" in answer.json()["issue"][0]["diagnostics"]
    assert (
        http.post("/ViewDefinition/$run", json=_parameters(GLUCOSE_VIEW, "xml")).status_code == 400
    )
    missing = http.get("/ViewDefinition/does-not-exist/$run")
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"


def test_facade_run_releases_nothing_identifying(
    http: httpx.Client, stored_views: dict[str, str]
) -> None:
    """Every column of both views, over the facade: no name, original id or identifier,
    and no unshifted birth or reading date of the loaded patients."""
    secrets: set[str] = set()
    for resource in PATIENTS:
        secrets |= secrets_of(resource)
    reading_times = {o["effectiveDateTime"] for o in OBSERVATIONS}
    auth = {"Authorization": f"Bearer {KEY}"}
    outputs = []
    for name in ("glucose_readings", "patients"):
        for fmt in ("csv", "ndjson"):
            answer = http.get(f"/deid/ViewDefinition/{stored_views[name]}/$run",
                              params={"_format": fmt}, headers=auth)  # fmt: skip
            assert answer.status_code == 200, answer.text
            outputs.append(answer.text)
    text = "\n".join(outputs)
    assert [s for s in secrets if s in text] == []
    assert [t for t in reading_times if t in text] == []
    rows = [json.loads(line) for line in outputs[1].splitlines()]
    assert len(rows) == len(OBSERVATIONS)  # the same readings, values kept
    # ... up to the value watermark: one unit of a glucose value's last decimal at most
    # (sorting pairs each released value with one within that unit of an original).
    released = sorted(r["value"] for r in rows)
    stored = sorted(o["valueQuantity"]["value"] for o in OBSERVATIONS)
    assert all(
        abs(a - b) <= _last_decimal(b) + 1e-9 for a, b in zip(released, stored, strict=True)
    )
    assert released != stored  # the watermark is there
    # the pseudonyms are those of the facade's own reads
    patient = json.loads(outputs[3].splitlines()[0])
    assert http.get(f"/deid/Patient/{patient['id']}", headers=auth).status_code == 200
    assert http.get(f"/deid/ViewDefinition/{stored_views['patients']}/$run").status_code == 401


@pytest.fixture(scope="module")
def closed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, TestIssuer]]:
    issuer = TestIssuer.create(tmp_path_factory.mktemp("issuer"))
    settings = issuer.settings(db_url=database_url(tmp_path_factory.mktemp("closed")),
                               max_body_bytes=20_000_000)  # fmt: skip
    with RunningServer(settings) as running:
        admin = bearer(issuer.token(running.url, "system/*.cruds"))
        with httpx.Client(base_url=running.url, timeout=60, headers=admin) as h:
            assert h.post("/", json=transaction(PATIENTS)).status_code == 200
        yield running, issuer


def test_patient_context_token_gets_only_its_patients_rows(
    closed: tuple[RunningServer, TestIssuer],
) -> None:
    """The rows are produced in another thread: it must carry the request's visibility."""
    server, issuer = closed
    patient = PATIENTS[0]["id"]
    token = issuer.token(server.url, "launch/patient patient/*.rs", patient=patient)
    with httpx.Client(base_url=server.url, timeout=60, headers=bearer(token)) as h:
        answer = h.post("/ViewDefinition/$run", json=_parameters(GLUCOSE_VIEW, "ndjson"))
    assert answer.status_code == 200, answer.text
    rows = [json.loads(line) for line in answer.text.splitlines()]
    mine = [o for o in OBSERVATIONS if o["subject"]["reference"] == f"Patient/{patient}"]
    assert rows and {r["patient"] for r in rows} == {patient}
    assert len(rows) == len(mine)


def test_run_needs_search_on_the_type_the_view_reads(
    closed: tuple[RunningServer, TestIssuer],
) -> None:
    server, issuer = closed
    token = issuer.token(server.url, "user/Patient.rs")
    with httpx.Client(base_url=server.url, timeout=60, headers=bearer(token)) as h:
        refused = h.post("/ViewDefinition/$run", json=_parameters(GLUCOSE_VIEW, "csv"))
        assert refused.status_code == 403
        allowed = h.post("/ViewDefinition/$run", json=_parameters(PATIENT_VIEW, "csv"))
        assert allowed.status_code == 200
        assert len(allowed.text.strip().splitlines()) > 1
    with httpx.Client(base_url=server.url, timeout=60) as anonymous:
        assert (
            anonymous.post(
                "/ViewDefinition/$run", json=_parameters(PATIENT_VIEW, "csv")
            ).status_code
            == 401
        )


def _exported(http: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, bytes]:
    """Kick off a `$viewdefinition-export`, follow it to its result, read its files."""
    started = kick_off(http, path, body=body)
    assert started.status_code == 202, started.text
    status_url = started.headers["content-location"]
    assert started.json()["parameter"][0] == {"name": "exportId",
                                              "valueString": status_url.rsplit("/", 1)[1]}
    done = wait(http, status_url)
    assert done.status_code == 303, done.text
    result = http.get(done.headers["location"])
    assert result.status_code == 200 and result.headers["expires"]
    files = {}
    for output in (p for p in result.json()["parameter"] if p["name"] == "output"):
        parts = {part["name"]: next(v for k, v in part.items() if k.startswith("value"))
                 for part in output["part"]}  # fmt: skip
        files[parts["name"]] = http.get(parts["location"]).content
    return files


def _view_part(name: str, **view: Any) -> dict[str, Any]:
    return {"name": "view", "part": [{"name": "name", "valueString": name},
                                     *({"name": k, **v} for k, v in view.items())]}  # fmt: skip


def test_view_export_runs_as_a_job(http: httpx.Client, stored_views: dict[str, str]) -> None:
    """Long runs go through the job store: two views (inline, and stored by reference)
    into CSV files, and one stored view by id into Parquet."""
    body = {"resourceType": "Parameters", "parameter": [
        _view_part("glucose", viewResource={"resource": GLUCOSE_VIEW}),
        _view_part("people", viewReference={
            "valueReference": {"reference": f"ViewDefinition/{stored_views['patients']}"}}),
        {"name": "_format", "valueCode": "csv"},
        {"name": "clientTrackingId", "valueString": "nightly-1"}]}  # fmt: skip
    files = _exported(http, "/ViewDefinition/$viewdefinition-export", body)
    glucose = list(csv.DictReader(io.StringIO(files["glucose"].decode())))
    assert {r["id"]: float(r["value"]) for r in glucose} == {
        o["id"]: o["valueQuantity"]["value"] for o in OBSERVATIONS}  # fmt: skip
    people = list(csv.DictReader(io.StringIO(files["people"].decode())))
    patients = {r["id"] for r in PATIENTS if r["resourceType"] == "Patient"}
    assert {r["id"] for r in people} == patients

    by_id = _exported(http, f"/ViewDefinition/{stored_views['glucose_readings']}"
                      "/$viewdefinition-export", {"resourceType": "Parameters", "parameter": [
                          {"name": "_format", "valueCode": "parquet"}]})  # fmt: skip
    table = pq.read_table(io.BytesIO(by_id["glucose_readings"]))
    assert table.num_rows == len(OBSERVATIONS)

    synchronous = http.post("/ViewDefinition/$viewdefinition-export", json=body)
    assert synchronous.status_code == 400  # no Prefer: respond-async
    no_view = kick_off(http, "/ViewDefinition/$viewdefinition-export",
                       body={"resourceType": "Parameters", "parameter": []})  # fmt: skip
    assert no_view.status_code == 400 and no_view.json()["resourceType"] == "OperationOutcome"
    bad_since = kick_off(http, "/ViewDefinition/$viewdefinition-export", body={
        "resourceType": "Parameters", "parameter": [
            _view_part("glucose", viewResource={"resource": GLUCOSE_VIEW}),
            {"name": "_since", "valueInstant": "yesterday"}]})  # fmt: skip
    assert bad_since.status_code == 400  # at the kick-off, not a failed job later
    # the later editions' name of $run is the same operation
    alias = http.get(f"/ViewDefinition/{stored_views['glucose_readings']}/$viewdefinition-run",
                     params={"_format": "ndjson"})  # fmt: skip
    assert len(alias.text.splitlines()) == len(OBSERVATIONS)


def test_view_export_of_a_patient_context_token_holds_its_patient_only(
    closed: tuple[RunningServer, TestIssuer],
) -> None:
    """The job runs under the kick-off token's visibility; another client cannot see it."""
    server, issuer = closed
    patient = PATIENTS[0]["id"]
    token = issuer.token(server.url, "launch/patient patient/*.rs", patient=patient)
    body = {"resourceType": "Parameters", "parameter": [
        _view_part("glucose", viewResource={"resource": GLUCOSE_VIEW}),
        {"name": "_format", "valueCode": "ndjson"}]}  # fmt: skip
    with httpx.Client(base_url=server.url, timeout=60, headers=bearer(token)) as h:
        files = _exported(h, "/ViewDefinition/$viewdefinition-export", body)
        status_url = kick_off(h, "/ViewDefinition/$viewdefinition-export",
                              body=body).headers["content-location"]  # fmt: skip
    rows = [json.loads(line) for line in files["glucose"].splitlines()]
    mine = [o for o in OBSERVATIONS if o["subject"]["reference"] == f"Patient/{patient}"]
    assert rows and {r["patient"] for r in rows} == {patient} and len(rows) == len(mine)
    other = issuer.token(server.url, "system/*.rs", client_id="another-client")
    assert httpx.get(status_url, headers=bearer(other), timeout=60).status_code == 404
    refused = issuer.token(server.url, "user/Patient.rs")
    with httpx.Client(base_url=server.url, timeout=60, headers=bearer(refused)) as h:
        assert kick_off(h, "/ViewDefinition/$viewdefinition-export",
                        body=body).status_code == 403  # fmt: skip


def test_an_objection_takes_the_patient_out_of_research_tables(
    http: httpx.Client, stored_views: dict[str, str]
) -> None:
    """Research tables go through the facade's decision of whom a recipient may see: a
    patient's objection to research use removes their rows from the next `$run`, and
    withdrawing it brings them back (the clinical `$run` keeps them throughout)."""
    from fhir_server.rights.objections import objection_consent

    auth = {"Authorization": f"Bearer {KEY}"}
    objecting = PATIENTS[0]["id"]
    theirs = [o for o in OBSERVATIONS if o["subject"]["reference"] == f"Patient/{objecting}"]

    def research_rows(view: str) -> list[dict]:
        answer = http.get(f"/deid/ViewDefinition/{stored_views[view]}/$run",
                          params={"_format": "ndjson"}, headers=auth)  # fmt: skip
        assert answer.status_code == 200, answer.text
        return [json.loads(line) for line in answer.text.splitlines()]

    patients = len(research_rows("patients"))
    made = http.post("/Consent", json=objection_consent(objecting, "letter", "2026-01-05"))
    assert made.status_code == 201, made.text
    consent = made.json()
    try:
        assert len(research_rows("patients")) == patients - 1
        assert len(research_rows("glucose_readings")) == len(OBSERVATIONS) - len(theirs)
        clinical = http.get(f"/ViewDefinition/{stored_views['glucose_readings']}/$run",
                            params={"_format": "ndjson"})  # fmt: skip
        assert len(clinical.text.splitlines()) == len(OBSERVATIONS)
    finally:
        withdrawn = http.put(f"/Consent/{consent['id']}", json={**consent, "status": "inactive"})
        assert withdrawn.status_code == 200, withdrawn.text
    assert len(research_rows("patients")) == patients


def test_research_view_export_releases_nothing_identifying(
    server: RunningServer, stored_views: dict[str, str]
) -> None:
    """A recipient's `$viewdefinition-export` runs over what the facade releases to it:
    the same scan as its `$run` (no name, identifier, original id or unshifted date)."""
    secrets = set().union(*(secrets_of(r) for r in PATIENTS))
    reading_times = {o["effectiveDateTime"] for o in OBSERVATIONS}
    body = {"resourceType": "Parameters", "parameter": [
        _view_part("glucose", viewReference={"valueReference": {
            "reference": f"ViewDefinition/{stored_views['glucose_readings']}"}}),
        _view_part("people", viewResource={"resource": PATIENT_VIEW}),
        {"name": "_format", "valueCode": "csv"}]}  # fmt: skip
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server.url, timeout=60, headers=auth) as h:
        files = _exported(h, "/deid/ViewDefinition/$viewdefinition-export", body)
        one_patient = {"name": "patient", "valueReference": {"reference": "Patient/x"}}
        refused = kick_off(h, "/deid/ViewDefinition/$viewdefinition-export",
                           body={**body, "parameter": [*body["parameter"], one_patient]})
        assert refused.status_code == 400
    text = b"\n".join(files.values()).decode()
    assert [s for s in secrets if s in text] == []
    assert [t for t in reading_times if t in text] == []
    assert len(files["glucose"].decode().strip().splitlines()) == len(OBSERVATIONS) + 1
    with httpx.Client(base_url=server.url, timeout=60) as anonymous:
        assert kick_off(anonymous, "/deid/ViewDefinition/$viewdefinition-export",
                        body=body).status_code == 401  # fmt: skip
