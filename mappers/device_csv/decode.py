"""Bytes of an export to text: byte-order marks, UTF-8, UTF-16 and the Windows code page."""

from __future__ import annotations

import codecs

from .errors import CsvMappingError

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def _guess_utf16_without_bom(data: bytes) -> str | None:
    """Excel and some meter tools write UTF-16 without a BOM: ASCII text then has a NUL
    in every other byte."""
    sample = data[:400]
    if len(sample) < 4:
        return None
    even_nuls = sample[0::2].count(0)
    odd_nuls = sample[1::2].count(0)
    half = len(sample) // 2
    if odd_nuls > 0.4 * half and even_nuls < 0.05 * half:
        return "utf-16-le"
    if even_nuls > 0.4 * half and odd_nuls < 0.05 * half:
        return "utf-16-be"
    return None


def decode_text(data: str | bytes) -> str:
    """Return the text of an export, without BOM; raise CsvMappingError if it is not text."""
    if isinstance(data, str):
        text = data
    elif isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        encoding = next((enc for bom, enc in _BOMS if raw.startswith(bom)), None)
        if encoding is not None:
            raw = raw[len(next(bom for bom, enc in _BOMS if enc == encoding)) :]
        else:
            encoding = _guess_utf16_without_bom(raw)
        if encoding is not None:
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError as exc:
                raise CsvMappingError(f"not valid {encoding} text: {exc.reason}") from None
        else:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                # Exports saved by Excel on Windows (accents in French / German headers).
                text = raw.decode("cp1252", errors="replace")
    else:
        raise CsvMappingError(f"expected str or bytes, got {type(data).__name__}")
    text = text.lstrip("\ufeff")
    if "\x00" in text:
        raise CsvMappingError("the file contains NUL characters: binary data or wrong encoding")
    return text
