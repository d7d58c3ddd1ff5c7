"""Writers sharing one SQLite file take turns through `<database>.lock`: two processes
writing at once both succeed, a writer waits for the other's commit, and a writer that
cannot get the lock in time gets SQLite's own "database is locked" error, not a hang."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from fhir_server.storage import sqlite as sqlite_module
from fhir_server.storage.sqlite import SqliteStorage


def _write(path: str, prefix: str, count: int) -> None:
    storage = SqliteStorage(path)
    for n in range(0, count, 10):
        with storage.transaction() as tx:
            for m in range(n, n + 10):
                tx.put("Basic", f"{prefix}-{m}", 1, time.time(), b"{}", (), "PUT")
    storage.close()


def test_two_processes_write_one_file(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    SqliteStorage(path).close()  # schema first, as a server start does
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write, args=(path, p, 300)) for p in ("a", "b")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM resources").fetchone()[0] == 600
    assert conn.execute("SELECT count(*) FROM history").fetchone()[0] == 600
    conn.close()
    assert Path(f"{path}.lock").exists()


class _Announcing:
    """Wraps a storage's process lock to say when its owner starts waiting for it."""

    def __init__(self, lock: sqlite_module.ProcessWriteLock, waiting: threading.Event) -> None:
        self._lock, self._waiting = lock, waiting

    def __enter__(self) -> None:
        self._waiting.set()
        self._lock.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._lock.__exit__(*exc)

    def close(self) -> None:
        self._lock.close()


def test_a_writer_waits_for_the_other_commit(tmp_path: Path) -> None:
    """The first writer commits only once the second is asking for the lock, so the order
    proves the wait (no sleep: a loaded machine decides nothing here)."""
    path = str(tmp_path / "wait.db")
    first, second = SqliteStorage(path), SqliteStorage(path)
    second_waiting = threading.Event()
    second._process_lock = _Announcing(second._process_lock, second_waiting)
    order: list[str] = []

    def write_second() -> None:
        with second.transaction() as tx:
            order.append("second writes")
            tx.put("Basic", "second", 1, time.time(), b"{}", (), "PUT")

    with first.transaction() as tx:
        tx.put("Basic", "first", 1, time.time(), b"{}", (), "PUT")
        thread = threading.Thread(target=write_second)
        thread.start()
        assert second_waiting.wait(120)
        order.append("first commits")
    thread.join(120)
    assert not thread.is_alive()
    assert order == ["first commits", "second writes"]
    assert second.read("Basic", "first") is not None
    first.close()
    second.close()


def test_a_writer_that_cannot_get_the_lock_gets_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "LOCK_TIMEOUT_SECONDS", 0.2)
    path = str(tmp_path / "busy.db")
    first, second = SqliteStorage(path), SqliteStorage(path)
    with first.transaction() as tx:
        tx.put("Basic", "held", 1, time.time(), b"{}", (), "PUT")
        with pytest.raises(sqlite3.OperationalError, match="locked"), second.transaction():
            pass
    with second.transaction() as tx:  # free again once the first commits
        tx.put("Basic", "after", 1, time.time(), b"{}", (), "PUT")
    assert second.read("Basic", "after") is not None
    first.close()
    second.close()
