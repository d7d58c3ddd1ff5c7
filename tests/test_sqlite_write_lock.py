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


def test_a_writer_waits_for_the_other_commit(tmp_path: Path) -> None:
    path = str(tmp_path / "wait.db")
    first, second = SqliteStorage(path), SqliteStorage(path)
    order: list[str] = []
    holding = threading.Event()

    def hold() -> None:
        with first.transaction() as tx:
            tx.put("Basic", "first", 1, time.time(), b"{}", (), "PUT")
            holding.set()
            time.sleep(0.3)
            order.append("first commits")

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait(5)
    with second.transaction() as tx:
        order.append("second writes")
        tx.put("Basic", "second", 1, time.time(), b"{}", (), "PUT")
    thread.join()
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
