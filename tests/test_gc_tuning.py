"""The server's collector settings: the start-up heap is frozen, young collections are rarer,
and cyclic garbage made afterwards is still collected."""

from __future__ import annotations

import gc
import weakref

from fhir_server.gc_tuning import YOUNG_THRESHOLD, tune_for_server


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_tuning_freezes_the_heap_and_still_collects_cycles() -> None:
    before = gc.get_threshold()
    try:
        long_lived = {"registry": [object() for _ in range(10)]}
        tune_for_server()
        assert gc.get_threshold()[0] >= YOUNG_THRESHOLD
        assert gc.get_freeze_count() > 0
        assert not any(o is long_lived for o in gc.get_objects())  # frozen: not scanned
        a, b = _Node(), _Node()
        a.other, b.other = b, a  # a cycle: only the collector can free it
        alive = weakref.ref(a)
        del a, b
        gc.collect()
        assert alive() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
