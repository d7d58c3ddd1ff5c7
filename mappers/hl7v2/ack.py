"""HL7 v2 acknowledgements (original mode ACK with MSA; ERR when not AA, and ERR segments
of severity W beside an AA for content accepted but not stored)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from itertools import count

from mappers.hl7v2.errors import MappingError, MappingWarning
from mappers.hl7v2.parser import Delimiters, Message, decode, delimiters_from_msh, segment_lines

ACK_CODES = ("AA", "AE", "AR", "CA", "CE", "CR")
# HL7 table 0357 (message error condition codes) that MappingError.condition may name.
_CONDITIONS = {
    "100": "Segment sequence error", "101": "Required field missing",
    "102": "Data type error", "103": "Table value not found",
    "200": "Unsupported message type", "201": "Unsupported event code",
    "202": "Unsupported processing id", "203": "Unsupported version id",
    "204": "Unknown key identifier", "205": "Duplicate key identifier",
    "206": "Application record locked", "207": "Application internal error",
}
_control_ids = count(1)


def _escape(text: str, delims: Delimiters) -> str:
    """Escape the delimiters in free text we put into the ACK (error messages)."""
    esc = delims.escape or "\\"
    pairs = [(esc, f"{esc}E{esc}"), (delims.field, f"{esc}F{esc}"),
             (delims.component, f"{esc}S{esc}")]
    if delims.repetition:
        pairs.append((delims.repetition, f"{esc}R{esc}"))
    if delims.subcomponent:
        pairs.append((delims.subcomponent, f"{esc}T{esc}"))
    for char, replacement in pairs:
        text = text.replace(char, replacement)
    return text.replace("\r", " ").replace("\n", " ")


def _msh_fields(message: str | bytes | Message) -> tuple[list[str], Delimiters]:
    """The raw MSH fields of the message acknowledged (empty when there is no MSH)."""
    if isinstance(message, Message):
        return message.msh.fields, message.delims
    try:
        text, charset = decode(message)
    except (UnicodeDecodeError, LookupError):
        return [], Delimiters()
    for line in segment_lines(text):
        if line.startswith("MSH") and len(line) >= 8:
            delims = delimiters_from_msh(line, charset)
            return ["MSH", delims.field, *line[4:].split(delims.field)], delims
    return [], Delimiters()


def build_ack(
    message: str | bytes | Message,
    code: str = "AA",
    error_text: str | None = None,
    error: MappingError | None = None,
    warnings: Sequence[MappingWarning] = (),
) -> str:
    """An ACK for `message`: sender and receiver swapped, MSA-2 = its MSH-10.

    With a code other than AA (or CA) an ERR segment says why (ERR-3 = 207 application
    error for AE, 200 unsupported type or 201 unsupported event for AR; ERR-2 the location
    when `error` knows it). Each of `warnings` adds an ERR of severity W (ERR-4) with
    ERR-3 = 0 "Message accepted": the message was taken, that part of it was not stored.
    Works on garbage too: an ACK without a control id to refer to.
    """
    if code not in ACK_CODES:
        raise ValueError(f"unknown acknowledgement code {code!r}")
    fields, delims = _msh_fields(message)

    def msh(n: int) -> str:
        return fields[n] if n < len(fields) else ""

    sep, comp = delims.field, delims.component
    trigger = msh(9).split(comp)[1] if comp in msh(9) else ""
    version = msh(12) or "2.5"
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
    control_id = f"ACK{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}{next(_control_ids)}"
    header = [
        "MSH", delims.encoding_characters(), msh(5), msh(6), msh(3), msh(4), now, "",
        f"ACK{comp}{trigger}{comp}ACK" if trigger else "ACK", control_id, msh(11) or "P",
        version,
    ]
    if msh(18):
        header += ["", "", "", "", "", msh(18)]
    segments = [sep.join(header)]
    text = _escape(error_text or "", delims)
    msa = ["MSA", code, msh(10)]
    if code not in ("AA", "CA") and text:
        msa.append(text[:80])  # MSA-3 (withdrawn after 2.4, still read by many engines)
    segments.append(sep.join(msa))
    if code not in ("AA", "CA"):
        segments.append(_err_segment(code, text, error, delims))
    for warning in warnings:
        segments.append(_warning_segment(warning, delims))
    return "\r".join(segments) + "\r"


def _warning_segment(warning: MappingWarning, delims: Delimiters) -> str:
    comp = delims.component
    location = ""
    if warning.segment:
        location = comp.join([warning.segment, str(warning.sequence)])
        if warning.field is not None:
            location += comp + str(warning.field)
    err = [
        "ERR",
        "",
        location,  # ERR-2 error location
        comp.join(["0", "Message accepted", "HL70357"]),  # ERR-3
        "W",  # ERR-4 severity: warning
        "", "", "",
        _escape(warning.text, delims),  # ERR-8 user message
    ]
    return delims.field.join(err)


def _err_segment(code: str, text: str, error: MappingError | None, delims: Delimiters) -> str:
    comp = delims.component
    location = ""
    if error is not None and error.segment:
        location = error.segment + comp + "1"
        if error.field is not None:
            location += comp + str(error.field)
    unsupported = error is not None and error.segment == "MSH" and error.field == 9
    condition, label = (
        ("200", "Unsupported message type") if unsupported else ("207", "Application error")
    )
    if error is not None and error.condition in _CONDITIONS:
        condition, label = error.condition, _CONDITIONS[error.condition]
    err = [
        "ERR",
        "",  # ERR-1 (error code and location, before 2.5)
        location,  # ERR-2 error location
        comp.join([condition, label, "HL70357"]),  # ERR-3 HL7 error code
        "E",  # ERR-4 severity
        "", "", "",
        text,  # ERR-8 user message
    ]
    return delims.field.join(err)
