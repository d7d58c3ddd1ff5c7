"""A search's size checked before it is parsed: repeats, values, chain and `_has` depth.

Each bound is a field of `fhir_server.limits.Limits` (see there why it is what it is); past
one, the search is refused with a SearchLimitError (a 400 OperationOutcome, code
`too-costly`, naming the limit) instead of reaching the database, which would fail on it
(SQLite's parser stack, its expression depth) or run without end. Checked on the raw items,
so that the parser's own recursion never sees a chain 1,000 links long.
"""

from __future__ import annotations

from collections.abc import Sequence

from fhir_server.limits import Limits
from fhir_server.search.errors import SearchError
from fhir_server.search.escaping import split_escaped

DEFAULT_LIMITS = Limits()


class SearchLimitError(SearchError):
    """The search asks for more than the server's limits allow."""

    code = "too-costly"


def check_search_size(items: Sequence[tuple[str, str]], limits: Limits | None = None) -> None:
    limits = limits or DEFAULT_LIMITS
    if len(items) > limits.max_search_parameters:
        raise SearchLimitError(
            f"The search has {len(items)} parameters; this server takes at most "
            f"{limits.max_search_parameters} (limit max_search_parameters)"
        )
    values = 0
    for key, value in items:
        if key.partition(":")[0] == "_id":
            # one lookup whatever its length (search/id_lists.py), bounded on its own
            if value.count(",") >= limits.max_id_values:
                check_id_count(len(split_escaped(value, ",")), limits, key)
            continue
        values += value.count(",") + 1
        if values > limits.max_search_values:
            raise SearchLimitError(
                f"The search has more than {limits.max_search_values} values in all "
                "(limit max_search_values)",
                key,
            )
        has = key.count("_has:")
        chain = key.count(".")
        if chain > limits.max_chain_depth:
            raise SearchLimitError(
                f"{key}: a chain of {chain} links; this server follows at most "
                f"{limits.max_chain_depth} (limit max_chain_depth)",
                key,
            )
        if has > limits.max_has_depth:
            raise SearchLimitError(
                f"{key}: {has} nested _has; this server takes at most "
                f"{limits.max_has_depth} (limit max_has_depth)",
                key,
            )
        if has + chain > limits.max_nesting:
            raise SearchLimitError(
                f"{key}: {has} _has and {chain} chain links; this server takes at most "
                f"{limits.max_nesting} together (limit max_nesting)",
                key,
            )
        if value.count(",") >= limits.max_or_values and (
            len(split_escaped(value, ",")) > limits.max_or_values
        ):
            raise SearchLimitError(
                f"at most {limits.max_or_values} comma-separated values per parameter "
                "(limit max_or_values)",
                key,
            )


def check_id_count(count: int, limits: Limits, key: str = "_id") -> None:
    """An `_id` list of `count` ids (search/id_lists.py) within `max_id_values`."""
    if count > limits.max_id_values:
        raise SearchLimitError(
            f"{key} lists {count:,} ids; this server takes at most {limits.max_id_values:,} "
            "in one search (limit max_id_values): split the list over several searches",
            key,
        )
