"""The one job store: every asynchronous operation (bulk `$export`, `$import`, the
de-identified export, cohort evaluations) is a row here, in a small SQLite file of its own.

Why a file and not memory: a job must outlive the process that accepted it (a restart
while it runs or waits re-queues it), and every worker process of one server must see the
same jobs (a client may poll a status URL on another worker than the one that kicked it
off). Why not the FHIR database: jobs are the server's own bookkeeping, the same whichever
backend holds the data (SQLite or MongoDB), and they hold no clinical data (the output
files beside them do, in owner-only folders).

Where: DIATABASE_JOBS_DIR, else beside a SQLite database (`<db>.jobs/`), else
`./diatabase-jobs/`; `jobs.db` and one folder per job under `files/`.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhir_server.search.visibility import Grant, Visibility
from fhir_server.storage.private_files import create_private_file, private_folder

QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED = (
    "queued", "running", "completed", "failed", "cancelled"
)
FINISHED = (COMPLETED, FAILED)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    owner TEXT NOT NULL,            -- JSON: who may see the job (client, user, recipient)
    request TEXT NOT NULL,          -- the kick-off request's URL, for the manifest
    params TEXT NOT NULL,           -- JSON: what the job's handler needs to (re)run it
    visibility TEXT,                -- JSON: the kick-off's access as search criteria
    status TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER,
    progress TEXT,                  -- a few words for X-Progress
    result TEXT,                    -- JSON: the manifest once completed
    error TEXT,
    folder TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    expires REAL,                   -- when the files and the record are deleted
    runner TEXT,                    -- which process runs it: "host:pid:instance"
    heartbeat REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, created);
"""


@dataclass(frozen=True)
class Owner:
    """Who started a job: an OAuth client (and user) of the API, or a de-identification
    recipient. None everywhere: the server runs --insecure-dev (anyone local may poll)."""

    client_id: str | None = None
    subject: str | None = None
    recipient: str | None = None

    def to_json(self) -> str:
        return json.dumps(
            {"client": self.client_id, "user": self.subject, "recipient": self.recipient},
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Owner:
        data = json.loads(text)
        return cls(data.get("client"), data.get("user"), data.get("recipient"))


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    owner: Owner
    request: str
    params: dict[str, Any]
    visibility: Visibility | None
    status: str
    done: int
    total: int | None
    progress: str | None
    result: dict[str, Any] | None
    error: str | None
    folder: Path
    created: float
    started: float | None
    finished: float | None
    expires: float | None
    attempts: int = 0
    cancel: bool = False


def default_jobs_dir(settings: Any) -> Path:
    configured = getattr(settings, "jobs_dir", "")
    if configured:
        return Path(configured)
    db_url = settings.db_url
    if db_url.startswith("sqlite:///") and ":memory:" not in db_url:
        return Path(db_url.removeprefix("sqlite:///").split("?", 1)[0] + ".jobs")
    return Path("diatabase-jobs")


class JobStore:
    def __init__(self, root: str | Path) -> None:
        self.root = private_folder(root)
        self.files = private_folder(self.root / "files")
        self.path = self.root / "jobs.db"
        create_private_file(self.path)
        self._local = threading.local()
        self._conn().executescript(SCHEMA)

    # -- connections ---------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # an accepted job survives a power cut
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- writes --------------------------------------------------------------------------

    def create(
        self,
        kind: str,
        owner: Owner,
        request: str,
        params: dict[str, Any],
        visibility: Visibility | None,
        folder: Path | None = None,
    ) -> Job:
        job_id = secrets.token_urlsafe(18)
        where = folder / job_id if folder is not None else self.files / job_id
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO jobs (id, kind, owner, request, params, visibility, status, "
                "folder, created) VALUES (?,?,?,?,?,?,?,?,?)",
                (job_id, kind, owner.to_json(), request, json.dumps(params),
                 visibility_to_json(visibility), QUEUED, str(where), time.time()),
            )
        job = self.get(job_id)
        assert job is not None
        return job

    def claim(self, runner: str, kinds: tuple[str, ...]) -> Job | None:
        """The oldest queued job of `kinds`, now running on `runner` (None: nothing to do).
        One transaction, so two processes never take the same job."""
        marks = ",".join("?" * len(kinds))
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT id FROM jobs WHERE status=? AND kind IN ({marks}) "
                "ORDER BY created LIMIT 1",
                (QUEUED, *kinds),
            ).fetchone()
            if row is None:
                return None
            now = time.time()
            conn.execute(
                "UPDATE jobs SET status=?, runner=?, heartbeat=?, started=?, "
                "attempts=attempts+1, done=0 WHERE id=?",
                (RUNNING, runner, now, now, row[0]),
            )
        return self.get(row[0])

    def progress(self, job_id: str, done: int, total: int | None, text: str | None) -> bool:
        """Record progress and the runner's heartbeat; False when the job was cancelled
        (or deleted) meanwhile, which tells the runner to stop."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE jobs SET done=?, total=coalesce(?, total), progress=?, heartbeat=? "
                "WHERE id=? AND status=?",
                (done, total, text, time.time(), job_id, RUNNING),
            )
            row = conn.execute("SELECT cancel FROM jobs WHERE id=?", (job_id,)).fetchone()
        return row is not None and not row[0]

    def complete(self, job_id: str, result: dict[str, Any], retention: float) -> None:
        now = time.time()
        with self._tx() as conn:
            conn.execute(
                "UPDATE jobs SET status=?, result=?, finished=?, expires=?, runner=NULL "
                "WHERE id=? AND status=?",
                (COMPLETED, json.dumps(result), now, now + retention, job_id, RUNNING),
            )

    def fail(self, job_id: str, message: str, retention: float) -> None:
        now = time.time()
        with self._tx() as conn:
            conn.execute(
                "UPDATE jobs SET status=?, error=?, finished=?, expires=?, runner=NULL "
                "WHERE id=? AND status=?",
                (FAILED, message, now, now + retention, job_id, RUNNING),
            )

    def requeue(self, job_id: str) -> None:
        """Back to the queue (the process stops, or its runner was lost): run again."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE jobs SET status=?, runner=NULL, heartbeat=NULL, done=0 "
                "WHERE id=? AND status=? AND cancel=0",
                (QUEUED, job_id, RUNNING),
            )

    def cancel(self, job_id: str) -> bool:
        """Mark a job cancelled (its runner stops at its next progress report); True when
        there was such a job. The caller deletes the files once the runner has let go."""
        with self._tx() as conn:
            changed = conn.execute(
                "UPDATE jobs SET cancel=1, status=CASE WHEN status IN (?, ?) THEN ? "
                "ELSE status END WHERE id=?",
                (QUEUED, RUNNING, CANCELLED, job_id),
            ).rowcount
        return changed > 0

    def delete(self, job_id: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM jobs WHERE id=?", (job_id,))

    def orphans(self, alive: set[str], stale_before: float) -> list[str]:
        """Running jobs whose runner is gone: not among `alive` runners of this host and
        silent since `stale_before`, or of a process of this host that no longer exists."""
        found = []
        host = _host()
        for job_id, runner, heartbeat in self._conn().execute(
            "SELECT id, runner, heartbeat FROM jobs WHERE status=?", (RUNNING,)
        ):
            if runner in alive:
                continue
            runner_host, _, rest = (runner or "").partition(":")
            pid = rest.split(":", 1)[0]
            dead_here = runner_host == host and pid.isdigit() and not _pid_alive(int(pid))
            same_process = runner_host == host and pid == str(os.getpid())
            if dead_here or same_process or (heartbeat or 0) < stale_before:
                found.append(job_id)
        return found

    def expired(self, now: float) -> list[Job]:
        rows = self._conn().execute(
            f"SELECT {COLUMNS} FROM jobs WHERE (expires IS NOT NULL AND expires <= ?) "
            "OR status=?",
            (now, CANCELLED),
        ).fetchall()
        return [_job(row) for row in rows]

    # -- reads ---------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        row = self._conn().execute(
            f"SELECT {COLUMNS} FROM jobs WHERE id=?", (job_id,)
        ).fetchone()
        return _job(row) if row is not None else None

    def completed(self) -> list[Job]:
        """Completed jobs (whose output files stay until they expire)."""
        rows = self._conn().execute(
            f"SELECT {COLUMNS} FROM jobs WHERE status=?", (COMPLETED,)
        ).fetchall()
        return [_job(row) for row in rows]

    def queued_count(self) -> int:
        return self._conn().execute(
            "SELECT count(*) FROM jobs WHERE status=?", (QUEUED,)
        ).fetchone()[0]


COLUMNS = (
    "id, kind, owner, request, params, visibility, status, done, total, progress, result, "
    "error, folder, created, started, finished, expires, attempts, cancel"
)


def _job(row: tuple) -> Job:
    return Job(
        id=row[0],
        kind=row[1],
        owner=Owner.from_json(row[2]),
        request=row[3],
        params=json.loads(row[4]),
        visibility=visibility_from_json(row[5]),
        status=row[6],
        done=row[7],
        total=row[8],
        progress=row[9],
        result=json.loads(row[10]) if row[10] else None,
        error=row[11],
        folder=Path(row[12]),
        created=row[13],
        started=row[14],
        finished=row[15],
        expires=row[16],
        attempts=row[17],
        cancel=bool(row[18]),
    )


def visibility_to_json(visibility: Visibility | None) -> str | None:
    """A request's visibility as plain JSON, so that a job re-run after a restart sees
    exactly what its kick-off request could see."""
    if visibility is None:
        return None
    grants = {
        letter: {
            rtype: [{"patient": g.patient, "params": [list(p) for p in g.params]} for g in gs]
            for rtype, gs in by_type.items()
        }
        for letter, by_type in visibility.grants.items()
    }
    return json.dumps({"grants": grants, "patient": visibility.patient}, sort_keys=True)


def visibility_from_json(text: str | None) -> Visibility | None:
    if text is None:
        return None
    data = json.loads(text)
    grants = {
        letter: {
            rtype: tuple(
                Grant(g["patient"], tuple((k, v) for k, v in g["params"])) for g in gs
            )
            for rtype, gs in by_type.items()
        }
        for letter, by_type in data["grants"].items()
    }
    return Visibility(grants, data.get("patient"))


def _host() -> str:
    return os.uname().nodename


def runner_name(instance: str) -> str:
    return f"{_host()}:{os.getpid()}:{instance}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
