"""Normalisation of strings for case- and accent-insensitive string search.

French names carry accents ("Hélène", "Françoise", "Œdipe"): a search for ``name=helene``
must find them. Both the index extractor and the query parser must use this same function,
or stored and searched forms drift apart.
"""

from __future__ import annotations

import re
import unicodedata

_WHITESPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """NFKD, casefold, drop combining marks, collapse whitespace.

    Casefolding runs before the marks are dropped and is followed by a second NFKD because
    casefold can itself produce decomposable characters (e.g. "İ" -> "i" + combining dot).
    """
    decomposed = unicodedata.normalize("NFKD", text).casefold()
    decomposed = unicodedata.normalize("NFKD", decomposed)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _WHITESPACE.sub(" ", stripped).strip()
