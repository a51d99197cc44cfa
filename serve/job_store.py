"""The job table in SQLite: an embedded file under the data folder, so jobs survive restarts.

One connection, serialised by a lock (the job threads write progress, request threads read), in WAL mode,
so readers are not blocked by the writer, with ``synchronous=NORMAL``: every statement is its own
transaction, appended to the write-ahead log before it returns. A killed process (SIGKILL, the OOM killer)
loses nothing that was committed, since the log is in the operating system's hands; the next open replays
it. A power loss or kernel crash can lose the last transactions since the log was last synced (at a
checkpoint, every ~1000 pages), never corrupt the file: a job accepted just before it may be missing, or
resume some segments earlier. ``FULL`` would sync the log on every commit (each progress update) to close
that window; a transcription server loses little there, and a slow disk would pay on every segment.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from .jobs import Job, JobFailure, JobKind, JobStatus, Progress

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    stage TEXT NOT NULL,
    filename TEXT NOT NULL,
    input_path TEXT NOT NULL,
    output_format TEXT NOT NULL,
    params TEXT NOT NULL,
    audio_duration REAL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    completed_at TEXT,
    segments_done INTEGER NOT NULL DEFAULT 0,
    segments_total INTEGER,
    audio_seconds_done REAL NOT NULL DEFAULT 0,
    partial TEXT,
    result TEXT,
    output_file TEXT,
    output_error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    attempt_from INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    error_code TEXT,
    error_status INTEGER,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at);
CREATE INDEX IF NOT EXISTS jobs_by_completion ON jobs (completed_at);
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY CHECK (id = 1), at TEXT NOT NULL);
"""

# Columns added after the first release, for tables made by earlier versions.
_ADDED_COLUMNS = (("partial", "TEXT"), ("output_error", "TEXT"),
                  ("attempts", "INTEGER NOT NULL DEFAULT 0"),
                  ("attempt_from", "INTEGER NOT NULL DEFAULT 0"), ("owner", "TEXT"))
# Indexes on added columns: made once the columns exist.
_ADDED_INDEXES = "CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, created_at);"

_COLUMNS = ("id", "kind", "status", "stage", "filename", "input_path", "output_format", "params",
            "audio_duration", "created_at", "started_at", "completed_at", "segments_done", "segments_total",
            "audio_seconds_done", "partial", "result", "output_file", "output_error", "attempts", "attempt_from",
            "error", "error_code", "error_status", "owner")


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _row(job: Job) -> tuple[Any, ...]:
    failure = job.failure
    return (
        job.id, job.kind.value, job.status.value, job.stage, job.filename, str(job.input_path), job.output_format,
        json.dumps(job.params), job.audio_duration, _time(job.created_at), _time(job.started_at),
        _time(job.completed_at), job.progress.segments_done, job.progress.segments_total,
        job.progress.audio_seconds_done, _partial_json(job.progress),
        json.dumps(job.result, ensure_ascii=False) if job.result is not None else None, job.output_file,
        job.output_error, job.attempts, job.attempt_from,
        failure.message if failure else None, failure.code if failure else None,
        failure.http_status if failure else None, job.owner,
    )


def _partial_json(progress: Progress) -> str | None:
    return json.dumps(list(progress.partial), ensure_ascii=False) if progress.partial else None


def _job(row: sqlite3.Row) -> Job:
    failure = None
    if row["error"] is not None:
        failure = JobFailure(row["error"], row["error_code"], row["error_status"])
    return Job(
        id=row["id"],
        kind=JobKind(row["kind"]),
        input_path=Path(row["input_path"]),
        filename=row["filename"],
        params=json.loads(row["params"]),
        output_format=row["output_format"],
        audio_duration=row["audio_duration"],
        status=JobStatus(row["status"]),
        stage=row["stage"],
        created_at=_parse_time(row["created_at"]),  # type: ignore[arg-type]
        started_at=_parse_time(row["started_at"]),
        completed_at=_parse_time(row["completed_at"]),
        progress=Progress(row["segments_done"], row["segments_total"], row["audio_seconds_done"],
                          tuple(json.loads(row["partial"])) if row["partial"] else ()),
        result=json.loads(row["result"]) if row["result"] is not None else None,
        output_file=row["output_file"],
        output_error=row["output_error"],
        failure=failure,
        attempts=row["attempts"],
        attempt_from=row["attempt_from"],
        owner=row["owner"],
    )


class SqliteJobStore:
    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
            for column, kind in _ADDED_COLUMNS:
                if column not in columns:
                    self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
            self._db.executescript(_ADDED_INDEXES)

    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    def probe(self) -> None:
        self._query("INSERT OR REPLACE INTO probe (id, at) VALUES (1, ?)", (datetime.now().isoformat(),))

    def add(self, job: Job) -> None:
        placeholders = ", ".join("?" for _ in _COLUMNS)
        self._query(f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({placeholders})", _row(job))

    def update(self, job: Job) -> None:
        placeholders = ", ".join("?" for _ in _COLUMNS)
        self._query(f"INSERT OR REPLACE INTO jobs ({', '.join(_COLUMNS)}) VALUES ({placeholders})", _row(job))

    def update_progress(self, job_id: str, progress: Progress) -> None:
        self._query("UPDATE jobs SET segments_done = ?, segments_total = ?, audio_seconds_done = ?, partial = ? "
                    "WHERE id = ?", (progress.segments_done, progress.segments_total, progress.audio_seconds_done,
                                     _partial_json(progress), job_id))

    def count_attempt(self, job_id: str) -> None:
        self._query("UPDATE jobs SET attempts = CASE WHEN attempt_from = segments_done THEN attempts + 1 ELSE 1 END, "
                    "attempt_from = segments_done WHERE id = ?", (job_id,))

    def get(self, job_id: str) -> Job | None:
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def list(self, *, status: JobStatus | None = None, owner: str | None = None, limit: int = 50,
             offset: int = 0) -> list[Job]:
        conditions: list[str] = []
        args: list[Any] = []
        if status is not None:
            conditions.append("status = ?")
            args.append(status.value)
        if owner is not None:
            conditions.append("owner = ?")
            args.append(owner)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = self._query(f"SELECT * FROM jobs {where} ORDER BY created_at DESC LIMIT ? OFFSET ?",
                           [*args, limit, offset])
        return [_job(r) for r in rows]

    def unfinished(self) -> list[Job]:
        return [_job(r) for r in self._query("SELECT * FROM jobs WHERE status = ?", (JobStatus.PROCESSING.value,))]

    def finished_before(self, moment: datetime) -> list[Job]:
        rows = self._query("SELECT * FROM jobs WHERE status != ? AND completed_at < ?",
                           (JobStatus.PROCESSING.value, moment.isoformat()))
        return [_job(r) for r in rows]

    def delete(self, job_ids: Iterable[str]) -> None:
        ids = list(job_ids)
        if ids:
            self._query(f"DELETE FROM jobs WHERE id IN ({', '.join('?' for _ in ids)})", ids)

    def count(self) -> int:
        return self._query("SELECT COUNT(*) FROM jobs")[0][0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
