"""Fuzzing: any input to to_bundle gives a Bundle or a MappingError, never another error;
the MLLP deframer never fails and does not depend on how bytes are chunked."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mappers.hl7v2 import MappingError, build_ack, split_batch, to_bundle
from mappers.mllp import Deframer

DATA = Path(__file__).parent / "data" / "hl7v2"
SAMPLE = (DATA / "diatabase" / "glucose_hba1c_oru_r01_v251.hl7").read_text(encoding="utf-8")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SEGMENT_NAMES = ["MSH", "PID", "PD1", "NK1", "PV1", "ORC", "OBR", "OBX", "NTE", "SPM", "DG1",
                 "AL1", "ZXY", "EVN", "BHS", "FHS", "XXX"]
TYPES = ["ORU^R01", "ADT^A01", "ADT^A08", "ADT^A31", "ORM^O01", "ORU", "MFN^M02", ""]
VALUE_TYPES = ["NM", "SN", "ST", "TX", "FT", "CE", "CWE", "DT", "TS", "DTM", "TM", "ED", "RP",
               "XX", ""]
field_text = st.text(
    alphabet=st.sampled_from(list("^~\\&|#0123456789.-+<>=:/ abcHILOFEXTRS_,\"")), max_size=25
)


def check(data: str | bytes) -> None:
    try:
        bundle = to_bundle(data)
    except MappingError as error:
        assert str(error)
        # to_bundle turns an internal slip into a MappingError as a last resort; none of
        # these inputs should need that net.
        assert error.__cause__ is None, repr(error.__cause__)
        assert build_ack(data, "AE", str(error), error=error).startswith("MSH")
        return
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    for entry in bundle["entry"]:
        assert entry["fullUrl"].startswith("urn:uuid:")
        assert entry["request"]["method"] in ("POST", "PUT")


@FUZZ
@given(st.binary(max_size=400))
def test_any_bytes(data: bytes) -> None:
    check(data)
    split_batch(data)


@FUZZ
@given(st.text(max_size=400))
def test_any_text(data: str) -> None:
    check(data)
    check("MSH|^~\\&|A|B|||20240101||ORU^R01|1|P|2.5\r" + data)


@st.composite
def hl7_like(draw) -> str:
    """Messages with HL7 shape and hostile content: odd delimiters, types, values."""
    encoding = draw(st.sampled_from(["^~\\&", "^~\\&#", "^~&", "^\\&", "^~\\\\&", "$*!%", ""]))
    msh = f"MSH|{encoding}|APP|FAC|||{draw(field_text)}||{draw(st.sampled_from(TYPES))}|" \
          f"{draw(field_text)}|P|{draw(st.sampled_from(['2.2', '2.3', '2.5.1', '2.8', 'x']))}"
    segments = [msh]
    for _ in range(draw(st.integers(0, 8))):
        name = draw(st.sampled_from(SEGMENT_NAMES))
        fields = draw(st.lists(field_text, max_size=26))
        if name == "OBX" and fields:
            fields[1 % len(fields)] = draw(st.sampled_from(VALUE_TYPES))
        segments.append("|".join([name, *fields]))
    line_end = draw(st.sampled_from(["\r", "\n", "\r\n"]))
    return line_end.join(segments)


@FUZZ
@given(hl7_like())
def test_hl7_shaped_messages(message: str) -> None:
    check(message)
    check(message.encode("latin-1", errors="replace"))


@FUZZ
@given(st.data())
def test_mutated_real_message(data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(SAMPLE)))
    insert = data.draw(field_text)
    cut = data.draw(st.integers(0, 20))
    check(SAMPLE[:position] + insert + SAMPLE[position + cut :])


@FUZZ
@given(st.binary(max_size=300), st.lists(st.integers(1, 40), max_size=20))
def test_deframer_is_total_and_chunking_independent(data: bytes, cuts: list[int]) -> None:
    whole = [(f.data, f.complete) for f in Deframer(max_frame=64).feed(data)]
    deframer = Deframer(max_frame=64)
    pieces = []
    start = 0
    for size in cuts:
        pieces.extend(deframer.feed(data[start : start + size]))
        start += size
    pieces.extend(deframer.feed(data[start:]))
    assert [(f.data, f.complete) for f in pieces] == whole
    for payload, _ in whole:
        assert b"\x0b" not in payload and b"\x1c" not in payload


@FUZZ
@given(st.lists(st.sampled_from([b"\x0b", b"\x1c", b"\r", b"MSH|x", b"junk"]), max_size=30))
def test_deframer_on_framing_bytes_soup(parts: list[bytes]) -> None:
    frames = Deframer().feed(b"".join(parts))
    assert all(isinstance(f.data, bytes) for f in frames)
