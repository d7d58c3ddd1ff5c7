"""Nothing is ignored without a note (R4 search.html#errors): a parameter the server does
not support, `near` on Location among them, is answered with an OperationOutcome entry
(`search.mode = outcome`) in lenient handling and refused with 400 under
`Prefer: handling=strict`. This pins what the server already did for searches when the
rest of issue 18 was fixed ($everything, writes); it is not a defect fix."""

from __future__ import annotations

import httpx
import pytest

from tests.test_api_crud import assert_outcome


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/Location", {"near": "45.75|4.85|10|km"}),
        ("/Patient", {"not-a-parameter": "x"}),
        ("/Patient/p1/Observation", {"not-a-parameter": "x"}),
    ],
)
def test_unsupported_parameters_are_noted_or_refused(
    client: httpx.Client, path: str, params: dict[str, str]
) -> None:
    (name,) = params
    lenient = client.get(path, params=params)
    assert lenient.status_code == 200, lenient.text
    outcomes = [
        e["resource"] for e in lenient.json()["entry"] if e["search"]["mode"] == "outcome"
    ]
    assert len(outcomes) == 1
    assert any(name in issue["diagnostics"] for issue in outcomes[0]["issue"])
    strict = client.get(path, params=params, headers={"Prefer": "handling=strict"})
    assert_outcome(strict, 400)
