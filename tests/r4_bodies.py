"""Every FHIR body the test suite receives over HTTP, parsed by R4 parsers nobody here wrote.

tests/conftest.py routes every `httpx` response through `BodyCheck.check`: a body that is
FHIR JSON (a `resourceType`, a FHIR or JSON media type) must keep the R4 JSON rules (no
empty arrays or objects, no nulls but in a primitive's arrays), load into the SMART
`fhirclient` R4 models (4.0.1, strict: unknown elements, wrong types and missing required
elements are errors) and, where Node and tests/node/node_modules exist (`make test`
installs them when npm is there), pass FHIR.js's R4 validator (npm `fhir`). A body that
fails either fails the test that received it, with the parser's words.

NDJSON, HTML, CSV and JSON that is not a FHIR resource (a bulk export's status manifest)
are not FHIR bodies and are only counted as skipped; so are resources of the types the
server adds to R4 (ViewDefinition) and Bundles holding them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fhirclient.models.fhirabstractbase import FHIRValidationError
from fhirclient.models.fhirelementfactory import FHIRElementFactory

from fhir_server.model.resource_types import ADDITIONAL_RESOURCE_TYPES

NODE_DIR = Path(__file__).parent / "node"
FHIR_MEDIA_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")


def _holds_additional_type(body: dict[str, Any]) -> bool:
    """A resource of a type the server adds to R4 (the SQL on FHIR ViewDefinition), or a
    Bundle holding one."""
    if body["resourceType"] in ADDITIONAL_RESOURCE_TYPES:
        return True
    entries = body.get("entry") if body["resourceType"] == "Bundle" else None
    return any(
        isinstance(e, dict) and isinstance(e.get("resource"), dict)
        and e["resource"].get("resourceType") in ADDITIONAL_RESOURCE_TYPES
        for e in entries or ()
    )


class TooDeep(Exception):
    """The body nests deeper than fhirclient's recursive parser can go (it meets Python's
    recursion limit near 120 levels of extensions, which R4 allows)."""


def _root_cause(exc: BaseException) -> BaseException:
    while isinstance(exc, FHIRValidationError) and exc.errors:
        exc = exc.errors[0]
    return exc


def fhirclient_problem(body: dict[str, Any]) -> str | None:
    """Why fhirclient's R4 models cannot load `body` (None if they can)."""
    rtype = body.get("resourceType")
    try:
        model = FHIRElementFactory.instantiate(rtype, body)
    except RecursionError as exc:
        raise TooDeep from exc
    except FHIRValidationError as exc:
        if isinstance(_root_cause(exc), RecursionError):
            raise TooDeep from exc
        return str(exc)[:2000]
    except Exception as exc:  # the models raise what their parsing meets
        return f"{type(exc).__name__}: {exc}"[:2000]
    if getattr(model, "resource_type", None) != rtype:
        return f"fhirclient has no R4 resource type {rtype!r}"
    return None


def json_rule_problem(value: Any, path: str = "") -> str | None:
    """Where `value` breaks the R4 JSON representation's own rules (json.html): an array is
    never empty, an object is never empty, and null stands only inside the arrays of a
    primitive's values and extensions (`"_given": [null, {...}]`)."""
    if isinstance(value, dict):
        if not value:
            return f"{path or 'the body'} is an empty object"
        for key, item in value.items():
            if item is None:
                return f"{path}.{key} is null"
            found = json_rule_problem(item, f"{path}.{key}" if path else key)
            if found:
                return found
    elif isinstance(value, list):
        if not value:
            return f"{path} is an empty array"
        for index, item in enumerate(value):
            if item is not None:
                found = json_rule_problem(item, f"{path}[{index}]")
                if found:
                    return found
    return None


class FhirJsValidator:
    """One long-lived `node tests/node/validate.js` per test process (a line in, a line
    out), or nothing where Node or the npm package is missing."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        node = shutil.which("node")
        if node and (NODE_DIR / "node_modules" / "fhir").is_dir():
            self._process = subprocess.Popen(
                [node, str(NODE_DIR / "validate.js")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
            )

    @property
    def available(self) -> bool:
        return self._process is not None

    def problem(self, text: str) -> str | None:
        """FHIR.js's errors for one body (None if valid or if the validator is absent)."""
        if self._process is None:
            return None
        assert self._process.stdin is not None and self._process.stdout is not None
        line = json.dumps(json.loads(text))  # one line, whatever the server's layout
        with self._lock:
            self._process.stdin.write(line + "\n")
            self._process.stdin.flush()
            answer = json.loads(self._process.stdout.readline())
        if answer["valid"]:
            return None
        return "; ".join(answer["errors"])[:2000] or "invalid (no detail given)"

    def close(self) -> None:
        if self._process is not None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            self._process.wait(timeout=60)
            self._process = None


@dataclass
class Counts:
    fhir_bodies: int = 0
    fhirclient_parsed: int = 0
    fhirjs_valid: int = 0
    too_deep_for_fhirclient: int = 0
    not_fhir: int = 0
    failures: list[str] = field(default_factory=list)


class BodyCheck:
    def __init__(self) -> None:
        self.counts = Counts()
        self.fhirjs = FhirJsValidator()
        self._lock = threading.Lock()

    def check(self, response: httpx.Response) -> None:
        """Raise AssertionError if `response` carries FHIR JSON that an R4 parser refuses."""
        body = self._fhir_body(response)
        if body is None:
            with self._lock:
                self.counts.not_fhir += 1
            return
        where = f"{response.request.method} {response.request.url} -> {response.status_code}"
        problems = []
        too_deep = False
        try:
            by_fhirclient = fhirclient_problem(body)
        except TooDeep:
            by_fhirclient, too_deep = None, True
        if by_fhirclient:
            problems.append(f"fhirclient (R4 4.0.1): {by_fhirclient}")
        by_json_rules = json_rule_problem(body)
        if by_json_rules:
            problems.append(f"R4 JSON rules (json.html): {by_json_rules}")
        by_fhirjs = self.fhirjs.problem(response.text)
        if by_fhirjs:
            problems.append(f"FHIR.js (R4): {by_fhirjs}")
        with self._lock:
            self.counts.fhir_bodies += 1
            self.counts.fhirclient_parsed += by_fhirclient is None and not too_deep
            self.counts.too_deep_for_fhirclient += too_deep
            self.counts.fhirjs_valid += self.fhirjs.available and by_fhirjs is None
            if problems:
                self.counts.failures.append(f"{where}: {problems[0][:300]}")
        if problems:
            raise AssertionError(f"{where}: the body is not valid R4:\n" + "\n".join(problems))

    @staticmethod
    def _fhir_body(response: httpx.Response) -> dict[str, Any] | None:
        media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in FHIR_MEDIA_TYPES or not response.content:
            return None
        try:
            body = json.loads(response.content)
        except ValueError:
            return None
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            return None
        if _holds_additional_type(body):
            return None  # not R4: an R4 parser has no model for it
        return body

    def close(self) -> None:
        self.fhirjs.close()

    def summary(self) -> dict[str, Any]:
        c = self.counts
        return {
            "fhir_bodies": c.fhir_bodies,
            "fhirclient_parsed": c.fhirclient_parsed,
            "fhirjs_valid": c.fhirjs_valid,
            "too_deep_for_fhirclient": c.too_deep_for_fhirclient,
            "not_fhir": c.not_fhir,
            "fhirjs_available": self.fhirjs.available,
            "failures": c.failures,
        }
