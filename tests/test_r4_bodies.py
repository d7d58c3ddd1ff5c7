"""The checker every HTTP response of the suite goes through (tests/r4_bodies.py) does
refuse what is not R4, with both parsers, and leaves what is not FHIR JSON alone."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.r4_bodies import BodyCheck


def response(body: object, media_type: str = "application/fhir+json") -> httpx.Response:
    return httpx.Response(
        200,
        headers={"content-type": media_type},
        content=json.dumps(body).encode(),
        request=httpx.Request("GET", "http://127.0.0.1/Observation/x"),
    )


@pytest.fixture(scope="module")
def checker():
    check = BodyCheck()
    yield check
    check.close()


def test_an_observation_without_status_and_code_is_refused(checker: BodyCheck) -> None:
    with pytest.raises(AssertionError, match="fhirclient") as refused:
        checker.check(response({"resourceType": "Observation", "id": "x"}))
    if checker.fhirjs.available:
        assert "FHIR.js" in str(refused.value) and "Observation.status" in str(refused.value)


def test_wrong_types_and_unknown_resource_types_are_refused(checker: BodyCheck) -> None:
    for body in (
        {"resourceType": "Patient", "active": "yes"},
        {"resourceType": "Patient", "name": {"family": "not a list"}},
        {"resourceType": "NotAType"},
    ):
        with pytest.raises(AssertionError, match="not valid R4"):
            checker.check(response(body))


def test_valid_bodies_pass_and_other_bodies_are_only_counted(checker: BodyCheck) -> None:
    before = checker.counts.fhir_bodies, checker.counts.not_fhir
    checker.check(response({"resourceType": "Patient", "id": "p", "birthDate": "1970-02-03"}))
    checker.check(response({"transactionTime": "2024-01-01T00:00:00Z", "output": []},
                           "application/json"))  # a bulk export manifest: not a resource
    checker.check(response("<html></html>", "text/html"))
    assert (checker.counts.fhir_bodies, checker.counts.not_fhir) == (before[0] + 1, before[1] + 2)
