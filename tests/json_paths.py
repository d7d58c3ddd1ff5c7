"""Paths to every element of a parsed JSON document (for fuzz tests that replace one)."""

from __future__ import annotations


def paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """Every key/index path below `value`, depth first (the root itself excluded)."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found.extend(paths(child, (*prefix, key)))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found.extend(paths(child, (*prefix, index)))
    return found
