"""Files holding patient data, created owner-only (0600 files, 0700 folders).

SQLite makes a database's `-wal` and `-shm` files with the database file's own
permissions, so creating the database file owner-only is enough for all three.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def create_private_file(path: str | Path) -> None:
    """Create `path` empty and owner-only if it does not exist (never widened if it does)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def private_folder(path: str | Path) -> Path:
    """`path` (and missing parents) created; the folder itself made owner-only."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(0o700)
    return folder
