"""The Bundle slot (api/rest.py) is held while a Bundle's work is CPU-bound: a batch leaves
it once its creates are prepared, before it waits for the write lock; a transaction keeps it
for its whole run. Real SQLite, in-process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage import open_storage
from tests.test_api_crud import glucose


class RecordingSlot:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def __enter__(self) -> None:
        self.events.append("slot taken")

    def __exit__(self, *exc: object) -> None:
        self.events.append("slot left")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[FhirService]:
    url = f"sqlite:///{tmp_path / 'slot.db'}"
    svc = FhirService(open_storage(url), Settings(db_url=url))
    svc.audit.act_as_command("test")
    yield svc
    svc.storage.close()


def run(service: FhirService, kind: str, entries: list[dict[str, Any]]) -> tuple[dict, list[str]]:
    events: list[str] = []
    storage = service.resources.storage
    opened = storage.transaction

    @contextmanager
    def transaction() -> Iterator[Any]:
        events.append("write begins")
        with opened() as tx:
            yield tx

    storage.transaction = transaction  # type: ignore[method-assign]
    try:
        bundle = {"resourceType": "Bundle", "type": kind, "entry": entries}
        response = service.bundles("http://test").process(
            bundle, lambda url, items: (404, None), cpu_slot=RecordingSlot(events)
        )
    finally:
        del storage.transaction
    return response, events


def creates(count: int) -> list[dict[str, Any]]:
    return [
        {"resource": glucose(), "request": {"method": "POST", "url": "Observation"}}
        for _ in range(count)
    ]


def test_a_batch_leaves_the_slot_before_it_writes(service: FhirService) -> None:
    refused = {"resource": {"resourceType": "Observation"}, "request": {"method": "POST",
                                                                       "url": "Observation"}}
    response, events = run(service, "batch", [*creates(3), refused])
    assert events == ["slot taken", "slot left", "write begins"]
    statuses = [e["response"]["status"] for e in response["entry"]]
    assert statuses == ["201 Created"] * 3 + ["400 Bad Request"]


def test_a_transaction_keeps_the_slot_while_it_writes(service: FhirService) -> None:
    response, events = run(service, "transaction", creates(2))
    assert events == ["slot taken", "write begins", "slot left"]
    assert [e["response"]["status"] for e in response["entry"]] == ["201 Created"] * 2
