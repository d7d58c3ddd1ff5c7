"""The R4 cases of the HL7 validator's test suite (fhir-test-cases, Apache-2.0, see
`tests/data/validator-cases/`) and `$validate`'s verdict on each.

Selected from the suite's manifest: version 4.0, a JSON file, no package, supporting file,
profile or logical model to load, and not in the terminology-server modules (`tx`,
`tx-advanced`); a case without an outcome for the Java validator is left out. The verdict
compared is the Java validator's: any issue of severity error or fatal, or none.

A case run by the reference validator with an option the server has as a setting
(`OPTION_SETTINGS`) is posted to a server configured so; other options are not mapped.

`python -m tests.validator_cases` prints each disagreement and the count.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

CASES_FILE = Path(__file__).parent / "data" / "validator-cases" / "r4-cases.json.gz"
ERRORS = ("error", "fatal")
# reference validator option -> the server setting doing the same
OPTION_SETTINGS: dict[str, dict[str, str]] = {
    "security-checks": {"html_in_text": "reject"},
    "noHtmlInMarkdown": {"html_in_text": "reject"},
}
ClientFor = Callable[[dict[str, str]], httpx.Client]


@dataclass(frozen=True)
class Case:
    name: str
    module: str
    body: str
    expected: list[dict]

    options: dict[str, Any]

    @property
    def settings(self) -> dict[str, str]:
        """The server settings the case's reference options correspond to."""
        found: dict[str, str] = {}
        for option, value in self.options.items():
            if value is True and option in OPTION_SETTINGS:
                found.update(OPTION_SETTINGS[option])
        return found

    @property
    def expected_invalid(self) -> bool:
        return any(i["severity"] in ERRORS for i in self.expected)


def load_cases() -> list[Case]:
    data = json.loads(gzip.decompress(CASES_FILE.read_bytes()))
    return [
        Case(c["name"], c["module"], c["body"], c["expected"], c.get("options", {}))
        for c in data["cases"]
    ]


def verdict(client: httpx.Client, case: Case) -> tuple[bool, list[dict]]:
    """(invalid?, issues) from `POST /{type}/$validate` with the case's file as it is."""
    try:
        resource: Any = json.loads(case.body)
    except ValueError:
        resource = None
    resource_type = resource.get("resourceType") if isinstance(resource, dict) else None
    if not isinstance(resource_type, str) or not resource_type.isalpha():
        resource_type = "Basic"  # not a resource at all: the server must still say invalid
    content = case.body.encode()
    if resource_type == "Parameters":
        # a bare Parameters body is read as the operation's own parameters
        wrapped = {"name": "resource", "resource": resource}
        content = json.dumps({"resourceType": "Parameters", "parameter": [wrapped]}).encode()
    response = client.post(
        f"/{resource_type}/$validate",
        content=content,
        headers={"Content-Type": "application/fhir+json"},
    )
    body = response.json()
    issues = body.get("issue", []) if isinstance(body, dict) else []
    invalid = response.status_code >= 400 or any(i.get("severity") in ERRORS for i in issues)
    return invalid, issues


def run(client_for: ClientFor) -> list[tuple[Case, bool, list[dict]]]:
    """Every case with the verdict and issues of a server with the case's settings."""
    return [(case, *verdict(client_for(case.settings), case)) for case in load_cases()]


@contextmanager
def servers(db_folder: Callable[[], str]) -> Iterator[ClientFor]:
    """A client per combination of settings, its server started on first use."""
    from fhir_server.settings import Settings
    from tests.conftest import RunningServer

    started: dict[tuple, httpx.Client] = {}
    with ExitStack() as stack:
        def client_for(overrides: dict[str, str]) -> httpx.Client:
            key = tuple(sorted(overrides.items()))
            if key not in started:
                settings = Settings(db_url=f"sqlite:///{db_folder()}/cases.db",
                                    insecure_dev=True, **overrides)
                running = stack.enter_context(RunningServer(settings))
                started[key] = stack.enter_context(
                    httpx.Client(base_url=running.url, timeout=120)
                )
            return started[key]

        yield client_for


def main() -> None:
    import tempfile

    with (
        tempfile.TemporaryDirectory() as folder,
        servers(lambda: tempfile.mkdtemp(dir=folder)) as client_for,
    ):
        results = run(client_for)
    agree = 0
    for case, invalid, issues in results:
        if invalid == case.expected_invalid:
            agree += 1
            continue
        expected = [i["text"][:100] for i in case.expected if i["severity"] in ERRORS]
        found = [i.get("diagnostics", "")[:100] for i in issues if i.get("severity") in ERRORS]
        wanted = "invalid" if case.expected_invalid else "valid"
        print(f"{case.module}/{case.name}: expected {wanted} {expected[:2]} found {found[:2]}")
    print(f"agree {agree}/{len(results)} ({100 * agree / len(results):.1f} %)")


if __name__ == "__main__":
    main()
