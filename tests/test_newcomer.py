"""What a newcomer meets first: the API docs at /docs, error messages, the progress of
`generate --load`, and `make` targets that do not reinstall the package every time."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_swagger_ui_and_redoc_are_served_from_the_server_itself(client: httpx.Client) -> None:
    """Before: Swagger UI at /_docs loaded its scripts from a CDN (nothing on an offline
    hospital network) and there was no ReDoc; FastAPI users look at /docs and /redoc."""
    for page in ("/docs", "/redoc"):
        response = client.get(page)
        assert response.status_code == 200 and "text/html" in response.headers["content-type"]
        assets = re.findall(r'(?:src|href)="([^"]+)"', response.text)
        assert assets, page
        assert [a for a in assets if not a.startswith("/")] == [], page  # nothing external
        for asset in assets:
            loaded = client.get(asset)
            assert loaded.status_code == 200 and len(loaded.content) > 1000, asset
        assert "/openapi.json" in response.text
    assert "https://" not in client.get("/docs").text  # no online validator badge either
    openapi = client.get("/openapi.json").json()
    assert openapi["info"]["title"] == "Diatabase FHIR R4 server"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/", {"resourceType": "Bundle"}),
        ("POST", "/", {"resourceType": "Bundle", "type": "transaction",
                       "entry": [{"resource": {"resourceType": "Patient"}, "request": {}}]}),
        ("POST", "/Patient", {"name": [{"family": "X"}]}),
        ("POST", "/Patient", {"resourceType": None}),
        ("POST", "/Patient/$validate?mode=update", {"resourceType": "Patient"}),
    ],
)
def test_errors_never_show_a_python_none(client: httpx.Client, method, path, body) -> None:
    """Each answered "... 'None' ..." before (a Bundle without type, an entry without
    request.method, a body without resourceType, $validate of an update without id)."""
    if path.endswith("mode=update"):
        client.put("/Patient/newcomer", json={"resourceType": "Patient", "id": "newcomer"})
        path = "/Patient/newcomer/$validate?mode=update"
    response = client.request(method, path, json=body)
    text = " ".join(i["diagnostics"] for i in response.json()["issue"])
    assert response.json()["resourceType"] == "OperationOutcome"
    assert "None" not in text, text
    assert response.status_code == 400 or "needs the resource's id" in text, text


def _run_in_a_terminal(command: list[str]) -> tuple[int, str]:
    """Run with stderr on a pseudo-terminal, as in a shell (progress bars show only there)."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    # a terminal of 120 columns (a new pseudo-terminal has 0, and tqdm fits its bar to it)
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=follower,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process has ended
            break
        if not chunk:
            break
        output += chunk
    process.communicate(timeout=300)
    os.close(leader)
    return process.returncode, output.decode(errors="replace")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs a pseudo-terminal")
def test_generate_load_shows_progress_like_load(tmp_path: Path) -> None:
    """`generate --load` printed nothing until the end (a 10-minute load looked hung);
    it now shows the same bar as `load`: resources stored and resources per second."""
    command = [sys.executable, "-m", "fhir_server.cli", "generate", "--patients", "2",
               "--days", "2", "--load", "--db", f"sqlite:///{tmp_path / 'g.db'}"]
    code, terminal = _run_in_a_terminal(command)
    assert code == 0, terminal
    assert re.search(r"\d+ resources \[.*resources/s\]", terminal), terminal
    quiet_code, quiet = _run_in_a_terminal([*command, "--quiet"])
    assert quiet_code == 0 and "resources/s]" not in quiet


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_targets_reinstall_only_when_pyproject_changes(tmp_path: Path) -> None:
    """`make load-examples` (and serve, test, ...) ran `pip install -e .` every time."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    for stamp in (".installed", ".installed-test"):
        (venv / stamp).touch()

    def planned(target: str) -> str:
        done = subprocess.run(["make", "-n", "-C", str(ROOT), target, f"VENV={venv}"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    for target in ("load-examples", "serve", "lint"):
        assert "pip install" not in planned(target), target
    older = (ROOT / "pyproject.toml").stat().st_mtime - 60
    for stamp in (".installed", ".installed-test"):
        os.utime(venv / stamp, (older, older))
    assert "pip install" in planned("load-examples")
    assert "pip install" in planned("test")
    assert time.time() > older  # (the repository's files are untouched)
