"""Search keys for displays: accent- and case-insensitive, so `diabete` finds `Diabète`."""

from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"\s+")


def search_key(text: str) -> str:
    """Fold case, strip accents (NFKD then drop combining marks), collapse spaces."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _SPACES.sub(" ", stripped).strip()


def tidy_label(text: str) -> str:
    """Source labels sometimes carry doubled spaces ("Diabète sucré  de type 2")."""
    return _SPACES.sub(" ", text).strip()
