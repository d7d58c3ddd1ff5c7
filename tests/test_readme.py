"""The README as a newcomer meets it: the walk-through's commands run as written against a
real server with the example story loaded, and the files the READMEs name exist.

The walk-through is taken from README.md itself (its first `sh` block after "A walk
through the API"), so a command changed there is tested as changed. Only `B=` is pointed
at the test server. Before this test, its PUT and conditional update sent `obs.json`, a
file that did not exist, and its instance commands used a literal `ID`."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RunningServer

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCUMENTED_FOLDERS = ("examples", "tests", "bench", "fhir_server", "mappers", "profiles",
                      "terminology")


def walkthrough() -> str:
    text = README.read_text()
    section = text[text.index("## A walk through the API"):]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "the walk-through's sh block"
    return match.group(1)


@pytest.mark.skipif(shutil.which("curl") is None, reason="the walk-through uses curl")
def test_the_walkthrough_runs_as_written(server: RunningServer) -> None:
    loaded = subprocess.run(  # what `make load-examples` runs
        [sys.executable, "-m", "fhir_server.cli", "load", "--db",
         server.app.state.settings.db_url, "examples/patient-story.json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr
    script = walkthrough()
    assert "B=http://127.0.0.1:8080\n" in script
    script = script.replace("B=http://127.0.0.1:8080\n", f"B={server.url}\n")
    # every curl reports its status on stderr; its output is untouched
    prelude = (
        "set -e\ncurl() { command curl --write-out '%{stderr}HTTP %{http_code}\\n' \"$@\"; }\n"
    )
    done = subprocess.run(["bash", "-c", prelude + script], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    statuses = [int(s) for s in re.findall(r"^HTTP (\d{3})$", done.stderr, re.M)]
    assert len(statuses) == script.count("curl -s"), done.stderr
    # a 201 create, a 410 for the read after the delete, and no other error
    assert 201 in statuses and statuses.count(410) == 1, statuses
    assert [s for s in statuses if s >= 400 and s != 410] == [], (statuses, done.stdout[-3000:])
    assert "HTTP/1.1 201 Created" in done.stdout
    assert '"versionId":"4"' in done.stdout.replace(" ", "")  # PUT, PATCH, conditional PUT


def documented_paths(markdown: Path) -> list[str]:
    """Paths in `backticks` that start with one of the repository's folders."""
    found = re.findall(r"`([A-Za-z0-9_.\-]+(?:/[A-Za-z0-9_.\-*]+)+/?)`", markdown.read_text())
    return [p for p in found if p.split("/")[0] in DOCUMENTED_FOLDERS]


def test_files_named_in_the_readmes_exist() -> None:
    readmes = [README, *ROOT.glob("*/README.md"), *ROOT.glob("*/*/README.md")]
    readmes = [r for r in readmes if ".venv" not in r.parts and "node_modules" not in r.parts]
    missing = [
        f"{readme.relative_to(ROOT)}: {path}"
        for readme in readmes
        for path in documented_paths(readme)
        if not list(ROOT.glob(path.rstrip("/")))
    ]
    assert missing == []
    assert (ROOT / "examples" / "requests" / "obs.json").exists()
