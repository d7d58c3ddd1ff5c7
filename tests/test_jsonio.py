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
    in_array = f'{{"values":[1, {literal} ,2]}}'.encode()
    assert jsonio.dumps(jsonio.loads(in_array)) == in_array.replace(b" ", b"")


def test_digits_inside_strings_keep_the_fast_path() -> None:
    """A uuid or hex id with a long digit run is text, not a number: parsing it with the
    standard library (seven times slower) would gain nothing."""
    raw = b'{"id":"1be59f386a24578260497284030ea6ed","when":"2024-01-01T10:00:00.000+01:00"}'
    assert jsonio._LOSSY_NUMBER.search(raw) is None
    assert jsonio._LOSSY_NUMBER.search(b'{"a":[{"v":2.50}]}') is not None


def test_plain_gives_builtin_floats() -> None:
    parsed = jsonio.loads(b'{"a":[1.50]}')
    assert isinstance(parsed["a"][0], jsonio.FhirDecimal)
    assert type(jsonio.plain(parsed)["a"][0]) is float


@pytest.mark.parametrize("raw", [b"{", b"nope", b"\xff\xfe", b'{"a":}'])
def test_invalid_json_raises_json_error(raw: bytes) -> None:
    with pytest.raises(jsonio.JsonError):
        jsonio.loads(raw)


def test_documents_deeper_than_orjson_are_written_whole() -> None:
    """orjson stops at 255 levels (a TypeError, which was a 500); deeper documents are
    written in slices, decimals kept verbatim and keys sorted when asked."""
    depth = 300
    raw = b'{"b":1.50,"a":' + b'{"z":[' * depth + b"2.50" + b"]}" * depth + b"}"
    parsed = jsonio.loads(raw)
    assert jsonio.nesting_depth(parsed) == 2 * depth + 1
    assert jsonio.dumps(parsed) == raw
    assert jsonio.loads(jsonio.dumps(parsed, pretty=True)) == parsed
    assert jsonio.dumps(parsed, sort_keys=True).startswith(b'{"a":{"z":[{"z":')


def test_the_depth_limit_names_itself() -> None:
    raw = b'{"a":' + b"[" * 30 + b"]" * 30 + b"}"
    assert jsonio.loads(raw, max_depth=31)["a"]
    with pytest.raises(jsonio.JsonError, match="max_json_depth") as caught:
        jsonio.loads(raw, max_depth=30)
    assert caught.value.code == "too-costly"


@pytest.mark.parametrize("raw", [b'{"a":1e309}', b'{"a":-1E999}', b'{"a":NaN}', b'{"a":Infinity}'])
def test_numbers_outside_fhir_decimals_are_refused(raw: bytes) -> None:
    with pytest.raises(jsonio.JsonError) as caught:
        jsonio.loads(raw)
    assert caught.value.code in ("value", "structure")


def test_long_integers_are_kept_as_written() -> None:
    raw = b'{"a":123456789012345678901234567890}'
    assert jsonio.dumps(jsonio.loads(raw)) == raw


@pytest.mark.parametrize(
    "raw",
    [b'{"a":[{"b":[5.40]}]}', b'{"a":-1234567890123456789}', b'{"a":12345678901234567890}',
     b"[[1e2]]"],
)
def test_literals_orjson_would_change_are_found_after_its_parse(raw: bytes) -> None:
    """orjson parses first; an integer of 18 digits or more, or a float anywhere in its
    result, sends the body to the exact parse."""
    assert jsonio.dumps(jsonio.loads(raw)) == raw


def test_exact_integers_and_strings_are_orjson_s_result() -> None:
    raw = b'{"a":[{"v":120,"n":-7,"big":123456789012345678},"5.40",true,null]}'
    parsed = jsonio.loads(raw, max_depth=3)
    assert parsed == {"a": [{"v": 120, "n": -7, "big": 123456789012345678}, "5.40", True, None]}
    assert jsonio.dumps(parsed) == raw
    with pytest.raises(jsonio.JsonError, match="nested 3 levels"):
        jsonio.loads(raw, max_depth=2)
