"""MongoDB backend: the transaction modes, writer races, and connection settings.

CI has no MongoDB server: these tests run on mongomock (an in-memory imitation of a
standalone MongoDB, without sessions). Two MongoStorage objects on one mongomock client
stand for two server processes sharing a database. The multi-document transaction tests
need a replica set: they run when MONGODB_URI names one, and are skipped otherwise.
"""

from __future__ import annotations

import uuid

import httpx
import mongomock
import pytest
from pymongo import MongoClient

from fhir_server.model.outcome import FhirError
from fhir_server.search.types import TokenEntry
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage import open_storage
from fhir_server.storage.mongo import MongoStorage, client_settings
from tests import storage_backends
from tests.conftest import RunningServer
from tests.test_api_bundles import patient, urn
from tests.test_api_crud import glucose


def standalone() -> MongoStorage:
    return open_storage(f"mongomock://localhost/s{uuid.uuid4().hex[:8]}?txmode=standalone")


def put(tx, rtype: str, rid: str, version: int, index=()) -> None:
    tx.put(rtype, rid, version, 1000.0 + version, b'{"v":%d}' % version, list(index), "PUT")


# -- standalone: one resource per transaction -------------------------------------------------


def test_mongomock_is_detected_as_standalone() -> None:
    store = open_storage(f"mongomock://localhost/d{uuid.uuid4().hex[:8]}")
    assert store.txmode == "standalone"


def test_standalone_writes_one_resource_per_transaction() -> None:
    store = standalone()
    with store.transaction() as tx:
        put(tx, "Patient", "a", 1)
        assert tx.read("Patient", "a").version == 1  # the pending write is visible inside
    assert store.read("Patient", "a").json == b'{"v":1}'
    assert [e.version for e in store.history("Patient", "a", None, None, 10, None).entries] == [1]


def test_standalone_refuses_a_second_write_and_writes_nothing() -> None:
    store = standalone()
    with pytest.raises(FhirError) as refused, store.transaction() as tx:
        put(tx, "Patient", "a", 1)
        put(tx, "Patient", "b", 1)
    assert refused.value.status == 400
    assert refused.value.issues[0].code == "not-supported"
    assert "replica set" in str(refused.value)
    assert store.read("Patient", "a") is None and store.read("Patient", "b") is None
    assert store.history(None, None, None, None, 10, None).entries == []


def test_standalone_refuses_a_search_after_a_write() -> None:
    store = standalone()
    service = FhirService(store, Settings())
    query = service.search.parse("Patient", [("_id", "a")], strict=True)
    with pytest.raises(FhirError), store.transaction() as tx:
        put(tx, "Patient", "a", 1)
        tx.search_ids(query, 2)
    assert store.read("Patient", "a") is None


def test_standalone_savepoints_apply_one_entry_each() -> None:
    store = standalone()
    with store.transaction() as tx:
        with tx.savepoint():
            put(tx, "Patient", "a", 1)
        with pytest.raises(RuntimeError), tx.savepoint():
            put(tx, "Patient", "b", 1)
            raise RuntimeError("entry fails")
        with tx.savepoint():
            put(tx, "Patient", "c", 1)
    assert store.read("Patient", "a") is not None and store.read("Patient", "c") is not None
    assert store.read("Patient", "b") is None


@pytest.fixture(scope="module")
def standalone_server() -> RunningServer:
    url = f"mongomock://localhost/h{uuid.uuid4().hex[:8]}?txmode=standalone"
    with RunningServer(Settings(db_url=url, insecure_dev=True)) as running:
        yield running


def test_transaction_bundle_is_refused_over_http_on_standalone(standalone_server) -> None:
    ident = uuid.uuid4().hex
    p = urn()
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": p,
                "resource": patient(ident),
                "request": {"method": "POST", "url": "Patient"},
            },
            {"resource": glucose(patient=p), "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    with httpx.Client(base_url=standalone_server.url, timeout=60) as http:
        response = http.post("/", json=bundle)
        assert response.status_code == 400, response.text
        body = response.json()
        assert body["resourceType"] == "OperationOutcome"
        assert "replica set" in body["issue"][0]["diagnostics"]
        found = http.get("/Patient", params={"identifier": f"urn:oid:1.2.250.1.213.1.4.10|{ident}"})
        assert found.json()["total"] == 0
        # Single interactions and batches still work on a standalone server.
        batch = {**bundle, "type": "batch"}
        batch["entry"] = [bundle["entry"][0], {**bundle["entry"][1], "resource": glucose()}]
        response = http.post("/", json=batch)
        assert response.status_code == 200, response.text
        assert [e["response"]["status"] for e in response.json()["entry"]] == ["201 Created"] * 2
        assert http.post("/Observation", json=glucose()).status_code == 201


# -- races between processes -------------------------------------------------------------------


@pytest.mark.parametrize("txmode", ["standalone", "single-writer"])
def test_racing_writers_in_two_processes_never_lose_an_update(txmode: str) -> None:
    """Both read version 1 and write version 2: the second writer gets a 409, A's v2 stays."""
    client = mongomock.MongoClient()
    process_a = MongoStorage(client, "race", txmode)
    process_b = MongoStorage(client, "race", txmode)
    with process_a.transaction() as tx:
        put(tx, "Basic", "counter", 1)
    with process_a.transaction() as tx_a:
        seen = tx_a.read("Basic", "counter").version
        tx_a.put("Basic", "counter", seen + 1, 2000.0, b'{"by":"a"}', [], "PUT")
    with pytest.raises(FhirError) as lost, process_b.transaction() as tx_b:
        tx_b.put("Basic", "counter", seen + 1, 2001.0, b'{"by":"b"}', [], "PUT")
    assert lost.value.status == 409
    current = process_b.read("Basic", "counter")
    assert current.version == 2 and current.json == b'{"by":"a"}'
    versions = process_b.history("Basic", "counter", None, None, 10, None).entries
    assert [(e.version, e.json) for e in versions] == [(2, b'{"by":"a"}'), (1, b'{"v":1}')]


def test_a_stale_create_of_an_existing_id_is_a_conflict() -> None:
    store = standalone()
    with store.transaction() as tx:
        put(tx, "Patient", "x", 1)
    with pytest.raises(FhirError) as conflict, store.transaction() as tx:
        put(tx, "Patient", "x", 1)
    assert conflict.value.status == 409
    assert store.read("Patient", "x").version == 1


def test_single_writer_savepoint_undoes_only_its_scope() -> None:
    store = open_storage(storage_backends.mongomock_url())
    entries = [TokenEntry("gender", None, "female", None)]
    with store.transaction() as tx:
        put(tx, "Patient", "kept", 1, entries)
        with pytest.raises(RuntimeError), tx.savepoint():
            put(tx, "Patient", "kept", 2)
            put(tx, "Patient", "undone", 1)
            raise RuntimeError("entry fails")
    assert store.read("Patient", "undone") is None
    kept = store.read("Patient", "kept")
    assert kept.version == 1 and kept.json == b'{"v":1}'
    assert store.vread("Patient", "kept", 2) is None
    service = FhirService(store, Settings())
    query = service.search.parse("Patient", [("gender", "female")], strict=True)
    assert [m.id for m in store.search(query, 10, None).matches] == ["kept"]


# -- multi-document transactions (a real replica set only) --------------------------------------

needs_replica_set = pytest.mark.skipif(
    not storage_backends.MONGODB_URI or not storage_backends.real_mongodb_supports_transactions(),
    reason="multi-document transactions need a MongoDB replica set (set MONGODB_URI to one); "
    "mongomock has no sessions",
)


@needs_replica_set
def test_replica_set_runs_transactions_atomically() -> None:
    store = open_storage(storage_backends.real_mongodb_url())
    assert store.txmode == "multi-document"
    with store.transaction() as tx:
        put(tx, "Patient", "keep", 1)
    with pytest.raises(RuntimeError), store.transaction() as tx:
        put(tx, "Patient", "new", 1)
        put(tx, "Patient", "keep", 2)
        raise RuntimeError("abort")
    assert store.read("Patient", "new") is None
    assert store.read("Patient", "keep").version == 1
    with store.transaction() as tx:
        put(tx, "Patient", "a", 1)
        put(tx, "Patient", "b", 1)
    assert store.read("Patient", "a") and store.read("Patient", "b")
    store.close()


# -- connection settings ----------------------------------------------------------------------


def test_url_options_reach_pymongo_and_write_concern_defaults_to_majority_journaled() -> None:
    url = (
        "mongodb://db1.example:27017,db2.example:27017/warehouse?replicaSet=rs0"
        "&maxPoolSize=17&serverSelectionTimeoutMS=1500&readPreference=secondaryPreferred"
        "&tls=true&txmode=standalone"
    )
    client_url, kwargs, database, txmode = client_settings(url)
    assert (database, txmode) == ("warehouse", "standalone")
    assert "txmode" not in client_url
    client = MongoClient(client_url, connect=False, **kwargs)
    try:
        assert client.write_concern.document == {"w": "majority", "j": True}
        assert client.options.pool_options.max_pool_size == 17
        assert client.options.server_selection_timeout == 1.5
        assert client.read_preference.mongos_mode == "secondaryPreferred"
        assert client.options.pool_options._ssl_context is not None
    finally:
        client.close()


def test_an_explicit_write_concern_in_the_url_wins() -> None:
    client_url, kwargs, database, txmode = client_settings("mongodb://localhost/db?w=1")
    assert "w" not in kwargs and (database, txmode) == ("db", "auto")
    client_url, kwargs, database, txmode = client_settings("mongodb://h/db?journal=false")
    assert "journal" not in kwargs
    with pytest.raises(ValueError):
        open_storage("mongomock://localhost/db?txmode=sometimes")


def test_other_options_pass_through_as_written() -> None:
    url = (
        "mongodb://h/db?tlsCAFile=/etc/ssl/ca%20x.pem&txmode=single-writer&readPreferenceTags=dc:ny"
    )
    client_url, kwargs, database, txmode = client_settings(url)
    assert client_url == "mongodb://h/db?tlsCAFile=/etc/ssl/ca%20x.pem&readPreferenceTags=dc:ny"
    assert (database, txmode, kwargs["w"]) == ("db", "single-writer", "majority")
