"""Decimal precision survives parsing and writing; bad JSON gives a clear error."""

from __future__ import annotations

import pytest

from fhir_server.model import jsonio


@pytest.mark.parametrize(
    "literal",
    [
        "5.40",
        "1e2",
        "1.5E-3",
        "66.899999999999991",
        "0.00001",
        "100",
        "100.0",
        "-0.0",
        "6.3",
        "0.1",
    ],
)
def test_number_literals_are_written_back_verbatim(literal: str) -> None:
    raw = f'{{"value":{literal}}}'.encode()
    assert jsonio.dumps(jsonio.loads(raw)) == raw


def test_plain_gives_builtin_floats() -> None:
    parsed = jsonio.loads(b'{"a":[1.50]}')
    assert isinstance(parsed["a"][0], jsonio.FhirDecimal)
    assert type(jsonio.plain(parsed)["a"][0]) is float


@pytest.mark.parametrize("raw", [b"{", b"nope", b"\xff\xfe", b'{"a":}'])
def test_invalid_json_raises_json_error(raw: bytes) -> None:
    with pytest.raises(jsonio.JsonError):
        jsonio.loads(raw)
