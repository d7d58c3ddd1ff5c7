"""WAL checkpoints run on the storage's own thread, not inside the writers' COMMIT: the
log is still copied back into the database file and reused (it does not grow with the data
written), every committed write is in the file after close, and close stops the thread."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from fhir_server.storage import sqlite_checkpoint
from fhir_server.storage.sqlite import SqliteStorage

BLOB = b'{"resourceType":"Basic","note":"' + b"x" * 4000 + b'"}'


def _write(storage: SqliteStorage, prefix: str, transactions: int, per_transaction: int) -> None:
    for n in range(transactions):
        with storage.transaction() as tx:
            for m in range(per_transaction):
                tx.put("Basic", f"{prefix}-{n}-{m}", 1, time.time(), BLOB, (), "PUT")


def _checkpointer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sqlite-checkpoint"]


def test_the_log_is_checkpointed_and_reused_while_writing(tmp_path: Path) -> None:
    path = tmp_path / "bulk.db"
    storage = SqliteStorage(str(path))
    assert storage._writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    # ~48 MB of history JSON in 120 commits, with pauses in which the checkpointer runs
    # (waited for, not slept: a loaded machine may take seconds to schedule its thread)
    for round_ in range(12):
        _write(storage, f"r{round_}", 10, 100)
        assert storage._checkpointer.wait_caught_up(timeout=120)
    thread = storage._checkpointer._thread
    assert thread is not None and thread in _checkpointer_threads()
    wal = Path(f"{path}-wal").stat().st_size
    database = path.stat().st_size
    # without checkpoints the log would hold all ~48 MB; the file holds them instead
    assert database > 40_000_000
    assert wal < 25_000_000, (wal, database)
    storage.close()
    # (other tests of this process may have storages of their own open: only this one's)
    assert not thread.is_alive() and thread not in _checkpointer_threads()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM history").fetchone()[0] == 12_000
    conn.close()


def test_everything_committed_is_there_after_close(tmp_path: Path) -> None:
    path = tmp_path / "close.db"
    storage = SqliteStorage(str(path))
    _write(storage, "a", 5, 50)
    storage.close()  # right after the last commit: the thread may be mid-checkpoint
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    reopened = SqliteStorage(str(path))
    assert reopened.read("Basic", "a-4-49") is not None
    assert reopened._writer.execute("SELECT count(*) FROM resources").fetchone()[0] == 250
    reopened.close()


def test_the_log_stays_bounded_under_writes_without_pauses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bulk load commits back to back: the checkpointer's thread never sees the whole log
    copied at the moment a writer begins, so SQLite would never start the log over and it
    would grow with everything written (10 GB in a 10 M load). Past a size, the committer
    copies the last frames itself, under the write lock, and the log restarts (and is cut
    back to the journal size limit)."""
    monkeypatch.setattr(sqlite_checkpoint, "LOG_LIMIT_BYTES", 4_000_000)
    path = tmp_path / "continuous.db"
    storage = SqliteStorage(str(path))
    _write(storage, "c", 120, 100)  # ~48 MB of history JSON (~70 MB of log), no pause
    wal = Path(f"{path}-wal").stat().st_size
    assert wal < 12_000_000, wal
    storage.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM history").fetchone()[0] == 12_000
    conn.close()
