"""Server-assigned ids are version 4 UUIDs, distinct, and not shared with a forked child."""

from __future__ import annotations

import os
import uuid

from fhir_server.model.ids import new_id
from fhir_server.model.resource_types import is_valid_id


def test_ids_are_distinct_version_4_uuids() -> None:
    ids = [new_id() for _ in range(3000)]  # several reads of random bytes
    assert len(set(ids)) == len(ids)
    for rid in ids:
        parsed = uuid.UUID(rid)
        assert str(parsed) == rid and parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert is_valid_id(rid)


def test_a_forked_child_does_not_reuse_the_parent_s_random_bytes() -> None:
    new_id()  # the parent now holds unused random bytes
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(read)
        os.write(write, "".join(new_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        from_child = pipe.read()
    os.waitpid(child, 0)
    assert len(from_child) == 3 * 36
    parent = "".join(new_id() for _ in range(3))
    assert from_child != parent
