"""`diatabase mongo init`: collections, indexes, sharding refused where there is no mongos.

Runs on mongomock (an in-memory imitation of a standalone MongoDB; CI has no server).
"""

from __future__ import annotations

import uuid

import pytest

from fhir_server.cli import main
from fhir_server.storage import open_storage
from fhir_server.storage.mongo_admin import CORE_TYPES, ShardingUnavailable, init_database
from fhir_server.storage.mongo_indexes import RESOURCE_INDEXES


def url() -> str:
    return f"mongomock://localhost/init_{uuid.uuid4().hex[:8]}"


def test_init_creates_collections_with_their_indexes() -> None:
    storage = open_storage(url())
    report = init_database(storage, ["Observation", "Patient"])
    assert report.collections == ["Observation", "Patient"]
    assert storage.resource_types() == ["Observation", "Patient"]
    for rtype in ("Observation", "Patient"):
        names = set(storage.collection(rtype).index_information())
        assert {model.document["name"] for model in RESOURCE_INDEXES} <= names
    assert "instance" in storage.history_collection.index_information()


def test_shard_needs_a_sharded_cluster() -> None:
    storage = open_storage(url())
    with pytest.raises(ShardingUnavailable, match="mongos"):
        init_database(storage, ["Patient"], shard=True)
    assert storage.resource_types() == ["Patient"]  # collections and indexes were made


def test_cli_init_reports_what_it_made(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mongo", "init", "--db", url()]) == 0
    out = capsys.readouterr().out
    assert f"{len(CORE_TYPES)} resource collections with {len(RESOURCE_INDEXES)} indexes" in out
    assert "transactions: standalone" in out
    assert main(["mongo", "init", "--db", url(), "--types", "Patient", "--shard"]) == 2
    assert "mongos" in capsys.readouterr().out


def test_cli_init_refuses_other_urls_and_unknown_types() -> None:
    with pytest.raises(SystemExit, match="not a MongoDB URL"):
        main(["mongo", "init", "--db", "sqlite:///x.db"])
    with pytest.raises(SystemExit, match="Bogus"):
        main(["mongo", "init", "--db", url(), "--types", "Patient,Bogus"])
