"""Search keys for displays: accent- and case-insensitive, so `diabete` finds `Diabète`."""

from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"\s+")
# Word separators for filtering; '.', '-' and '+' stay inside codes (E11.9, 2339-0, F55+0).
_SEPARATORS = re.compile(r"[^\w.\-+]+")


def search_key(text: str) -> str:
    """Fold case, strip accents (NFKD then drop combining marks), collapse spaces."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _SPACES.sub(" ", stripped).strip()


def search_words(text: str) -> list[str]:
    return [word for word in _SEPARATORS.split(search_key(text)) if word]


def word_index(texts: list[str]) -> str:
    """One string holding every word once, each preceded by a space, so that
    `" " + prefix in index` tells whether some word starts with `prefix`."""
    words = dict.fromkeys(word for text in texts for word in search_words(text))
    return " " + " ".join(words)


def tidy_label(text: str) -> str:
    """Source labels sometimes carry doubled spaces ("Diabète sucré  de type 2")."""
    return _SPACES.sub(" ", text).strip()
