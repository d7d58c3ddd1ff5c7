"""build_ack: MSA, ERR, swapped sender/receiver; hl7apy (strict) accepts what we build."""

from __future__ import annotations

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from mappers.hl7v2 import MappingError, build_ack

MESSAGE = (
    "MSH|^~\\&|LABAPP|LABFAC|DIATABASE|DIAFAC|20240315103000||ORU^R01^ORU_R01|CTRL-42|P|2.5\r"
    "PID|1||P1"
)


def fields(ack: str, name: str) -> list[str]:
    line = next(s for s in ack.split("\r") if s.startswith(name))
    return line.split("|")


def test_aa_ack_swaps_sender_and_receiver_and_echoes_the_control_id() -> None:
    ack = build_ack(MESSAGE)
    msh = fields(ack, "MSH")
    assert msh[2:6] == ["DIATABASE", "DIAFAC", "LABAPP", "LABFAC"]
    assert msh[8] == "ACK^R01^ACK"
    assert msh[10:12] == ["P", "2.5"]
    assert fields(ack, "MSA")[:3] == ["MSA", "AA", "CTRL-42"]
    assert "ERR" not in ack


def test_error_ack_has_an_err_segment_with_location_and_escaped_text() -> None:
    error = MappingError("bad value | with ^ delimiters", segment="OBX", field=5)
    ack = build_ack(MESSAGE, "AE", str(error), error=error)
    msa = fields(ack, "MSA")
    assert msa[1:3] == ["AE", "CTRL-42"]
    err = fields(ack, "ERR")
    assert err[2] == "OBX^1^5"
    assert err[3].startswith("207^")
    assert err[4] == "E"
    assert "\\F\\" in err[8] and "\\S\\" in err[8]


def test_ar_for_unsupported_type() -> None:
    error = MappingError("unsupported message type MFN", segment="MSH", field=9)
    ack = build_ack(MESSAGE.replace("ORU^R01^ORU_R01", "MFN^M02"), "AR", str(error), error=error)
    assert fields(ack, "MSA")[1] == "AR"
    assert fields(ack, "ERR")[3].startswith("200^")


@pytest.mark.parametrize("code", ["AA", "AE", "AR"])
def test_hl7apy_strict_validation_accepts_our_ack(code: str) -> None:
    ack = build_ack(MESSAGE, code, None if code == "AA" else "failed")
    parsed = parse_message(ack, validation_level=VALIDATION_LEVEL.STRICT)
    assert parsed.msa.msa_1.value == code
    assert parsed.msa.msa_2.value == "CTRL-42"


def test_ack_for_garbage_still_says_something() -> None:
    ack = build_ack(b"\x00\xffnot hl7 at all", "AR", "no MSH")
    assert ack.startswith("MSH|^~\\&|")
    assert fields(ack, "MSA")[:3] == ["MSA", "AR", ""]


def test_ack_keeps_the_senders_encoding_characters_and_charset() -> None:
    message = "MSH#$*!%#APP#FAC#####ADT$A08#C2#P#2.4######8859/1\rPID#1"
    ack = build_ack(message, "AA")
    assert ack.startswith("MSH#$*!%#")
    assert ack.split("\r")[0].split("#")[17] == "8859/1"
    assert "ACK$A08$ACK" in ack


def test_unknown_code_is_refused() -> None:
    with pytest.raises(ValueError):
        build_ack(MESSAGE, "OK")
