"""`diatabase reindex`: rebuild the clinical indexes (the code catalogue `$lastn` reads and
the CGM daily aggregates of the patient list) from the stored Observations.

A store opened by a server whose indexes are missing or out of date rebuilds them by
itself; this command is for an operator who restored the resources alone from a backup,
or who wants the rebuild done before the server starts.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from fhir_server.settings import DEFAULT_DB, Settings


def add_commands(sub: Any) -> None:
    reindex = sub.add_parser(
        "reindex",
        help="rebuild the clinical indexes ($lastn's code catalogue, CGM daily aggregates) "
        "from the stored Observations",
    )
    reindex.add_argument("--db", default=None, help=f"database URL (default {DEFAULT_DB})")
    reindex.set_defaults(func=cmd_reindex)


def cmd_reindex(args: argparse.Namespace) -> int:
    from fhir_server.clinical.indexes import IndexedStorage
    from fhir_server.storage import open_storage

    settings = Settings.from_env(db_url=args.db)
    started = time.monotonic()
    storage = open_storage(settings.db_url)
    try:
        indexed = IndexedStorage(storage)  # rebuilds by itself when out of date
        count = indexed.rebuilt_at_open
        if count is None:
            count = indexed.rebuild()
    finally:
        storage.close()
    print(f"clinical indexes rebuilt from {count} Observation(s) in "
          f"{time.monotonic() - started:.1f} s")
    return 0
