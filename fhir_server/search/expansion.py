"""The hook through which storage evaluates token :below, :above, :in and :not-in.

The parser only records these modifiers. Evaluating them needs terminology (code system
hierarchies, value set expansions) that the terminology package provides; storage asks a
TokenExpander for the codes and matches them like plain tokens. Without an expander the
search is refused (UnsupportedModifier), never run without the filter.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from fhir_server.search.errors import SearchError, UnsupportedModifier
from fhir_server.search.query import Clause
from fhir_server.search.values import TokenValue, UriValue

TERMINOLOGY_MODIFIERS = frozenset({"below", "above", "in", "not-in"})


class TokenExpander(Protocol):
    """Terminology as storage needs it. Each method raises LookupError for an unknown code
    system, code or value set."""

    def descendants(self, system: str, code: str) -> Iterable[str]:
        """Codes of `system` subsumed by `code` (not necessarily including `code`)."""
        ...

    def ancestors(self, system: str, code: str) -> Iterable[str]:
        """Codes of `system` that subsume `code` (not necessarily including `code`)."""
        ...

    def value_set_codes(self, url: str) -> Iterable[tuple[str, str]]:
        """The (system, code) pairs of the expansion of the value set `url`."""
        ...


def needs_expansion(clause: Clause) -> bool:
    return clause.param.type == "token" and clause.modifier in TERMINOLOGY_MODIFIERS


def expand_token_clause(clause: Clause, expander: TokenExpander | None) -> tuple[TokenValue, ...]:
    """The plain system|code tokens a token :below/:above/:in/:not-in clause stands for.

    For :not-in the caller negates the match on the returned codes. :below and :above keep
    the given code itself (a code subsumes itself).
    """
    if not needs_expansion(clause):
        raise ValueError(f"{clause.key} needs no terminology expansion")
    if expander is None:
        raise UnsupportedModifier(
            f":{clause.modifier} on token parameters needs a terminology service, and none is"
            " configured",
            clause.key,
        )
    expanded: dict[TokenValue, None] = {}
    try:
        for value in clause.values:
            if isinstance(value, UriValue):
                for system, code in expander.value_set_codes(value.value):
                    expanded[TokenValue(system, code, True)] = None
                continue
            assert isinstance(value, TokenValue)
            if value.system is None or value.code is None:
                raise SearchError(f":{clause.modifier} needs system|code", clause.key)
            related = (
                expander.descendants(value.system, value.code)
                if clause.modifier == "below"
                else expander.ancestors(value.system, value.code)
            )
            expanded[TokenValue(value.system, value.code, True)] = None
            for code in related:
                expanded[TokenValue(value.system, code, True)] = None
    except LookupError as error:
        raise SearchError(f"{clause.key}: {error}", clause.key) from None
    return tuple(expanded)
