"""fhirpy's own integration suite (vendored in tests/fhirpy_upstream, see its SOURCES.md),
sync and async, run against a real Diatabase on 127.0.0.1.

It runs in a pytest process of its own (its configuration, its asyncio mode), pointed at
our server by FHIR_SERVER_URL, and reports to a JUnit XML file. Every failing case must be
listed in tests/fhirpy_upstream/EXPECTED_FAILURES with the reason, and every listed case
must still fail: the list cannot grow, nor go stale, silently."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.auth_tokens import TestIssuer
from tests.conftest import RunningServer, database_url

UPSTREAM = Path(__file__).parent / "fhirpy_upstream"
EXPECTED = UPSTREAM / "EXPECTED_FAILURES"


def expected_failures() -> dict[str, str]:
    """Case id -> reason, from `id: reason` lines (`#` starts a comment line)."""
    listed: dict[str, str] = {}
    for line in EXPECTED.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            case, _, reason = line.partition(": ")
            assert reason.strip(), f"{case}: give the reason it is listed"
            listed[case.strip()] = reason.strip()
    return listed


def outcomes(report: Path) -> dict[str, tuple[str, str]]:
    """Case id (file::Class::test) -> (passed | failed | skipped, the error on one line)."""
    found: dict[str, tuple[str, str]] = {}
    for case in ET.parse(report).iter("testcase"):
        # "test_lib_sync.TestLibSyncCase" for a method, "test_lib_sync" for a function
        module, _, cls = case.get("classname", "").partition(".")
        case_id = "::".join(p for p in (f"{module}.py", cls, case.get("name")) if p)
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is not None:
            message = " ".join((problem.get("message") or "").split())
            found[case_id] = ("failed", message[:300])
        elif case.find("skipped") is not None:
            found[case_id] = ("skipped", "")
        else:
            found[case_id] = ("passed", "")
    return found


@pytest.fixture(scope="module")
def upstream_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    # A closed server, as in production, and a real token signed by a trusted issuer:
    # fhirpy sends it on every request (its suite reads FHIR_SERVER_AUTHORIZATION), and
    # its "Bearer invalid" case meets a real 401.
    issuer = TestIssuer.create(tmp_path_factory.mktemp("fhirpy-issuer"))
    settings = issuer.settings(db_url=database_url(tmp_path_factory.mktemp("fhirpy")))
    report = tmp_path_factory.mktemp("fhirpy-report") / "report.xml"
    with RunningServer(settings) as server:
        token = issuer.token(server.url, "system/*.cruds", exp=int(time.time()) + 3600)
        env = {**os.environ, "FHIR_SERVER_URL": server.url,
               "FHIR_SERVER_AUTHORIZATION": f"Bearer {token}"}
        completed = subprocess.run(
            [sys.executable, "-m", "pytest", "-c", str(UPSTREAM / "pytest.ini"), "-q",
             "-p", "no:cacheprovider", f"--junitxml={report}", str(UPSTREAM)],
            cwd=UPSTREAM.parent.parent, env=env, capture_output=True, text=True, timeout=900,
        )
    assert report.exists(), completed.stdout[-3000:] + completed.stderr[-3000:]
    yield outcomes(report)


def test_every_failure_of_fhirpy_upstream_suite_is_listed_with_its_reason(upstream_run) -> None:
    listed = expected_failures()
    failed = {case: why for case, (state, why) in upstream_run.items() if state == "failed"}
    unlisted = {case: why for case, why in failed.items() if case not in listed}
    assert not unlisted, "new failures of fhirpy's suite (fix them, or list them with the " \
        "reason in tests/fhirpy_upstream/EXPECTED_FAILURES):\n" + "\n".join(
            f"{case}: {why}" for case, why in sorted(unlisted.items()))
    passing = sorted(c for c in listed if upstream_run.get(c, ("",))[0] == "passed")
    assert not passing, "now passing: remove it from the list (EXPECTED_FAILURES):\n" + \
        "\n".join(passing)
    stale = sorted(c for c in listed if c not in upstream_run)
    assert not stale, "listed cases that no longer exist:\n" + "\n".join(stale)


def test_the_upstream_suite_ran_sync_and_async(upstream_run) -> None:
    counts = {state: 0 for state in ("passed", "failed", "skipped")}
    for state, _ in upstream_run.values():
        counts[state] += 1
    files = {case.split("::")[0] for case in upstream_run}
    assert files == {"test_lib_sync.py", "test_lib_async.py"}
    assert counts["passed"] > 120, counts
    print(f"fhirpy upstream suite: {counts}")
