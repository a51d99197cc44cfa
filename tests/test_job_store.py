"""The SQLite job table under kill -9: repeated SIGKILLs while a process writes jobs and progress lose no job
whose ``add`` returned, and never corrupt the file."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

from serve.job_store import SqliteJobStore
from serve.jobs import Job, JobKind, JobStatus, new_job_id
from tests.conftest import ROOT

WRITER = """
import sys
from pathlib import Path
from serve.job_store import SqliteJobStore
from serve.jobs import Job, JobKind, Progress, new_job_id

store = SqliteJobStore(sys.argv[1])
while True:
    job = Job(id=new_job_id(), kind=JobKind.ASYNC, input_path=Path("/nowhere"), filename="a.mp3", params={})
    store.add(job)
    print(job.id, flush=True)  # accepted: from here on it must survive
    for n in range(1, 4):
        store.update_progress(job.id, Progress(n, 3, n * 10.0, tuple({"start": 0, "end": 1, "text": "x" * 200}
                                                                     for _ in range(n))))
"""


def test_repeated_kills_during_writes_lose_no_accepted_job(tmp_path: Path) -> None:
    database = tmp_path / "jobs.sqlite3"
    accepted: list[str] = []
    pause = random.Random(7)
    for _ in range(12):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(database)], cwd=ROOT, stdout=subprocess.PIPE,
                                  text=True)
        time.sleep(pause.uniform(0.3, 0.8))  # it imports, opens the table, and writes for a while
        writer.send_signal(signal.SIGKILL)
        out, _ = writer.communicate()
        accepted += out.split()
        check = sqlite3.connect(database)
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        check.close()
    assert len(accepted) > 100  # the kills landed among many writes
    store = SqliteJobStore(database)
    assert store._query("PRAGMA journal_mode")[0][0] == "wal"
    missing = [job_id for job_id in accepted if store.get(job_id) is None]
    assert missing == []
    store.close()


def owned_job(owner: str | None, moment: datetime, status: JobStatus = JobStatus.PROCESSING) -> Job:
    return Job(id=new_job_id(), kind=JobKind.ASYNC, input_path=Path("/nowhere"), filename="a.mp3", params={},
               owner=owner, status=status, created_at=moment)


def test_listing_by_owner_with_status_and_pages(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    start = datetime(2025, 1, 1)
    jobs = [owned_job(["a", "b", None][n % 3], start + timedelta(minutes=n),
                      JobStatus.COMPLETED if n % 2 else JobStatus.PROCESSING) for n in range(12)]
    for job in jobs:
        store.add(job)
    newest_first = jobs[::-1]
    a_jobs = [j.id for j in newest_first if j.owner == "a"]
    assert [j.id for j in store.list(owner="a")] == a_jobs
    assert [j.id for j in store.list(owner="a", limit=2, offset=1)] == a_jobs[1:3]
    assert [j.id for j in store.list(owner="b", status=JobStatus.COMPLETED)] == [
        j.id for j in newest_first if j.owner == "b" and j.status is JobStatus.COMPLETED]
    assert store.list(owner="nobody") == []
    assert len(store.list()) == 12 and store.get(jobs[0].id).owner == "a"  # None: every job
    plan = store._query("EXPLAIN QUERY PLAN SELECT * FROM jobs WHERE owner = ? ORDER BY created_at DESC", ("a",))
    assert any("jobs_by_owner" in row[-1] for row in plan)
    store.close()


OLD_TABLE = """
CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL, stage TEXT NOT NULL,
    filename TEXT NOT NULL, input_path TEXT NOT NULL, output_format TEXT NOT NULL, params TEXT NOT NULL,
    audio_duration REAL, created_at TEXT NOT NULL, started_at TEXT, completed_at TEXT,
    segments_done INTEGER NOT NULL DEFAULT 0, segments_total INTEGER, audio_seconds_done REAL NOT NULL DEFAULT 0,
    result TEXT, output_file TEXT, error TEXT, error_code TEXT, error_status INTEGER);
INSERT INTO jobs (id, kind, status, stage, filename, input_path, output_format, params, created_at)
    VALUES ('0123456789abcdef0123456789abcdef', 'async', 'completed', 'done', 'old.mp3', '/x', 'txt', '{}',
            '2024-05-01T10:00:00');
"""


def test_a_table_from_before_owners_gains_the_column(tmp_path: Path) -> None:
    database = tmp_path / "jobs.sqlite3"
    old = sqlite3.connect(database)
    old.executescript(OLD_TABLE)
    old.close()
    store = SqliteJobStore(database)
    (job,) = store.list()
    assert job.id == "0123456789abcdef0123456789abcdef" and job.owner is None  # an admin's only, once keys are set
    assert store.list(owner="a") == []
    new = owned_job("a", datetime.now())
    store.add(new)
    assert [j.id for j in store.list(owner="a")] == [new.id]
    indexes = {row[1] for row in store._query("PRAGMA index_list(jobs)")}
    assert "jobs_by_owner" in indexes
    store.close()
