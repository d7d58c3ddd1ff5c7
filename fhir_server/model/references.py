"""References inside resources: finding them and rewriting them.

A transaction Bundle refers between its entries with `urn:uuid:` fullUrls and conditional
references (`Patient?identifier=sys|val`); once the server knows the real ids, every such
reference is rewritten, wherever it sits in the resource.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


def iter_references(node: Any) -> Iterator[dict[str, Any]]:
    """Every Reference-shaped object (a dict with a string `reference`) in a resource."""
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield node
        for key, value in node.items():
            if key != "contained" and isinstance(value, dict | list):
                yield from iter_references(value)
    elif isinstance(node, list):
        for item in node:
            yield from iter_references(item)


def rewrite_strings(node: Any, replace: Callable[[str], str | None]) -> Any:
    """Replace, in place, every string value for which `replace` returns a new string.

    Used for fullUrl rewriting: the spec asks for `urn:uuid:` references to be rewritten
    anywhere (Reference.reference, canonical, uri and narrative links alike).
    """
    # `type(...) is` rather than isinstance: this walks every element of every entry of
    # large uploads, and parsed JSON holds exact builtin types (FhirDecimal is never a str).
    kind = type(node)
    if kind is dict:
        for key, value in node.items():
            value_kind = type(value)
            if value_kind is str:
                new = replace(value)
                if new is not None:
                    node[key] = new
            elif value_kind is dict or value_kind is list:
                rewrite_strings(value, replace)
    elif kind is list:
        for i, value in enumerate(node):
            value_kind = type(value)
            if value_kind is str:
                new = replace(value)
                if new is not None:
                    node[i] = new
            elif value_kind is dict or value_kind is list:
                rewrite_strings(value, replace)
    return node
