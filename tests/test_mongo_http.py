"""The HTTP suites, run again with the server on the MongoDB backend.

CI has no MongoDB server, so the backend runs on mongomock (an in-memory imitation of
MongoDB, in the test-only single-writer transaction mode: mongomock has no sessions). The
suites run in a child pytest with DIATABASE_TEST_BACKEND=mongomock, which makes the shared
`server` fixture (tests/conftest.py) open a mongomock store instead of SQLite. With
MONGODB_URI set, the main run already uses the real server and this test is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import storage_backends

TESTS = Path(__file__).parent
# The modules that drive a server through conftest's `database_url`; the search conformance
# suite joins when it exists. (test_roundtrip_examples.py is left out for time: the same
# examples go through the MongoDB backend in test_mongo_search.py.)
SUITES = [
    "test_api_crud.py",
    "test_api_bundles.py",
    "test_api_write_conditions.py",
    "test_api_patch.py",
    "test_api_subsetting.py",
    "test_api_everything.py",
    "test_concurrency.py",
    "test_fhirpy_client.py",
    "test_search_conformance.py",
    "test_auth_patient.py",
    "test_search_units.py",
    "test_search_fulltext.py",
]


@pytest.mark.skipif(
    bool(storage_backends.MONGODB_URI),
    reason="MONGODB_URI is set: the whole suite already runs on the real MongoDB server",
)
def test_http_suites_pass_on_the_mongodb_backend() -> None:
    modules = [str(TESTS / name) for name in SUITES if (TESTS / name).exists()]
    assert len(modules) >= 4
    env = {**os.environ, "DIATABASE_TEST_BACKEND": "mongomock"}
    env.pop("PYTEST_XDIST_WORKER", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"]
        + modules,
        cwd=TESTS.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = result.stdout.strip().splitlines()[-1:] or [result.stderr[-2000:]]
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in summary[0] and "failed" not in summary[0], summary
