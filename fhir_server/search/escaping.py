"""FHIR search value escaping: ``\\,`` ``\\|`` ``\\$`` and ``\\\\``.

Values are split in stages (OR on ``,``, composite parts on ``$``, system/code on ``|``), so
splitting keeps escapes intact and only the final leaf is unescaped. A backslash before any
other character, or at the very end, is kept literally: it is data, not an escape.
"""

from __future__ import annotations

ESCAPABLE = ",|$\\"


def split_escaped(text: str, separator: str) -> list[str]:
    """Split on unescaped `separator`, leaving escape sequences in the parts."""
    if "\\" not in text:
        return text.split(separator)  # nothing escaped: the common case, at C speed
    parts: list[str] = []
    current: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            current.append(text[index : index + 2])
            index += 2
            continue
        if char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append("".join(current))
    return parts


def unescape(text: str) -> str:
    """Remove the escaping backslash from ``\\,`` ``\\|`` ``\\$`` ``\\\\``."""
    if "\\" not in text:
        return text
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text) and text[index + 1] in ESCAPABLE:
            out.append(text[index + 1])
            index += 2
            continue
        out.append(char)
        index += 1
    return "".join(out)


def escape(text: str) -> str:
    """Escape a plain value so that it survives `split_escaped` + `unescape` unchanged."""
    if not any(char in text for char in ESCAPABLE):
        return text
    return "".join("\\" + char if char in ESCAPABLE else char for char in text)
