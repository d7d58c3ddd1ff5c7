"""The storage backends the contract suite runs against.

Each entry opens a fresh, empty store. The MongoDB backend adds itself here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fhir_server.storage import open_storage
from fhir_server.storage.base import Storage


def sqlite_store(tmp_path: Path) -> Storage:
    return open_storage(f"sqlite:///{tmp_path / 'contract.db'}")


BACKENDS: dict[str, Callable[[Path], Storage]] = {"sqlite": sqlite_store}
