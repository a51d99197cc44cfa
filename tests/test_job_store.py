"""The SQLite job table under kill -9: repeated SIGKILLs while a process writes jobs and progress lose no job
whose ``add`` returned, and never corrupt the file."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from serve.job_store import SqliteJobStore
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
