"""The R4 cases of the HL7 validator's test suite (fhir-test-cases, Apache-2.0, see
`tests/data/validator-cases/`) and `$validate`'s verdict on each.

Selected from the suite's manifest: version 4.0, a JSON file, no package, supporting file,
profile or logical model to load, and not in the terminology-server modules (`tx`,
`tx-advanced`); a case without an outcome for the Java validator is left out. The verdict
compared is the Java validator's: any issue of severity error or fatal, or none.

`python -m tests.validator_cases` prints each disagreement and the count.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

CASES_FILE = Path(__file__).parent / "data" / "validator-cases" / "r4-cases.json.gz"
ERRORS = ("error", "fatal")


@dataclass(frozen=True)
class Case:
    name: str
    module: str
    body: str
    expected: list[dict]

    @property
    def expected_invalid(self) -> bool:
        return any(i["severity"] in ERRORS for i in self.expected)


def load_cases() -> list[Case]:
    data = json.loads(gzip.decompress(CASES_FILE.read_bytes()))
    return [Case(c["name"], c["module"], c["body"], c["expected"]) for c in data["cases"]]


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


def run(client: httpx.Client) -> list[tuple[Case, bool, list[dict]]]:
    """Every case with the server's verdict and issues."""
    return [(case, *verdict(client, case)) for case in load_cases()]


def main() -> None:
    import tempfile

    from fhir_server.settings import Settings
    from tests.conftest import RunningServer

    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(db_url=f"sqlite:///{folder}/cases.db", insecure_dev=True)
        with RunningServer(settings) as server, httpx.Client(
            base_url=server.url, timeout=120
        ) as client:
            results = run(client)
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
