"""Cyclic garbage collection paused while an export is mapped.

Mapping a 90-day CGM export allocates about half a million small dicts and lists (the
Bundle), none of them in a reference cycle; with the collector on, CPython scans the young
ones every 700 allocations and the whole heap (a server's too) again and again as they
age: a third of the mapping time. Paused, they are scanned once afterwards. The pause is
process-wide, hence counted: concurrent mappings (server threads) resume collection when
the last one ends, and only if it was on when the first one began.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_active = 0
_was_enabled = False


@contextmanager
def collection_paused() -> Iterator[None]:
    global _active, _was_enabled
    with _lock:
        if _active == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0 and _was_enabled:
                gc.enable()
