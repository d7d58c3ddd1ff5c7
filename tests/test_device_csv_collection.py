"""Garbage collection is paused while an export is mapped, and resumed exactly as it was."""

from __future__ import annotations

import gc
import threading

import pytest

from mappers.device_csv import CsvMappingError, to_bundle
from mappers.device_csv.collection import collection_paused

LIBRE = (
    "Device,Serial Number,Device Timestamp,Record Type,Historic Glucose mg/dL,"
    "Scan Glucose mg/dL\nFreeStyle Libre 3,SN-1,01-30-2024 08:00 AM,0,101,\n"
)


def test_collection_is_paused_inside_and_resumed_after() -> None:
    assert gc.isenabled()
    with collection_paused():
        assert not gc.isenabled()
        with collection_paused():  # nested (another thread mapping at the same time)
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_disabled_collector_stays_disabled() -> None:
    gc.disable()
    try:
        with collection_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_mapping_resumes_collection_even_when_it_fails() -> None:
    assert to_bundle(LIBRE, patient="Patient/p1", timezone="UTC").readings == 1
    assert gc.isenabled()
    with pytest.raises(CsvMappingError, match="NUL"):
        to_bundle(b"\x00\x01 not a csv", patient="Patient/p1")
    assert gc.isenabled()


def test_concurrent_mappings_resume_collection_once_all_end() -> None:
    inside = threading.Barrier(3)
    leave = threading.Event()

    def hold() -> None:
        with collection_paused():
            inside.wait()
            leave.wait(5)

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for thread in threads:
        thread.start()
    inside.wait()
    assert not gc.isenabled()
    leave.set()
    for thread in threads:
        thread.join()
    assert gc.isenabled()
