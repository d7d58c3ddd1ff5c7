"""The outbox stores themselves: event numbers per subscription in the write transaction
(SQLite, and MongoDB as mongomock: no MongoDB server here), an event undone with its
write, and the MongoDB delivery lease (one worker per database)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fhir_server.storage import open_storage
from fhir_server.storage.sqlite import SqliteStorage
from fhir_server.subscriptions.manager import open_outbox
from fhir_server.subscriptions.matcher import Event
from tests.storage_backends import mongomock_url


@pytest.fixture(params=["sqlite", "mongomock"])
def backend(request: pytest.FixtureRequest, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'o.db'}" if request.param == "sqlite" else mongomock_url()
    storage = open_storage(url)
    yield storage
    storage.close()


def test_events_are_numbered_per_subscription_and_undone_with_their_write(backend):
    outbox = open_outbox(backend)
    with backend.transaction() as tx:
        outbox.append(tx, [Event("a", "Observation", "1", 1, 10.0),
                           Event("b", "Observation", "1", 1, 10.0),
                           Event("a", "Observation", "2", 1, 11.0)], 10.0)
    undone = isinstance(backend, SqliteStorage)
    if undone:
        # (MongoDB undoes it with its session's transaction; mongomock has none, and its
        # single-writer mode appends the events last, after every write of the transaction)
        with pytest.raises(RuntimeError), backend.transaction() as tx:
            outbox.append(tx, [Event("a", "Observation", "3", 1, 12.0)], 12.0)
            raise RuntimeError("the write fails")
    with backend.transaction() as tx:
        outbox.append(tx, [Event("a", "Observation", "4", 1, 13.0)], 13.0)
    assert [(n, fid) for n, _, _, fid, _ in outbox.events("a", 1, 10)] == [
        (1, "1"), (2, "2"), (3, "4")]
    assert [n for n, *_ in outbox.events("b", 1, 10)] == [1]
    streams = {row[0]: row for row in outbox.streams()}
    assert streams["a"][1:3] == (3, 0)  # three events, none delivered
    with backend.transaction() as tx:
        outbox.mark(tx, [("a", 2, 20.0)], [("b", 1, 30.0, "HTTP 500")])
    streams = {row[0]: row for row in outbox.streams()}
    assert streams["a"][2] == 2 and streams["b"][4:7] == (1, 30.0, "HTTP 500")


def test_the_mongodb_delivery_lease_has_one_holder_until_it_expires():
    storage = open_storage(mongomock_url())
    try:
        outbox = open_outbox(storage)
        assert outbox.acquire_lease("first", 100.0, 30.0)
        assert not outbox.acquire_lease("second", 110.0, 30.0)
        assert outbox.acquire_lease("first", 120.0, 30.0)  # renewed: until 150
        assert not outbox.acquire_lease("second", 149.0, 30.0)
        assert outbox.acquire_lease("second", 151.0, 30.0)  # expired: taken over
        assert not outbox.acquire_lease("first", 152.0, 30.0)
    finally:
        storage.close()
