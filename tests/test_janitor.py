"""Retention: expired jobs, old outputs and orphaned uploads are removed; live files are not."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

from serve.janitor import Janitor
from serve.job_store import SqliteJobStore
from serve.jobs import Job, JobKind, JobStatus, new_job_id


def aged(path: Path, seconds: float) -> Path:
    path.write_text("x")
    past = time.time() - seconds
    os.utime(path, (past, past))
    return path


def test_sweep(tmp_path: Path) -> None:
    inputs, temp, outputs = (tmp_path / n for n in ("inputs", "temp", "outputs"))
    for folder in (inputs, temp, outputs):
        folder.mkdir()
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    live_upload = aged(inputs / "upload-live.wav", 7200)
    live = Job(id=new_job_id(), kind=JobKind.ASYNC, input_path=live_upload, filename="a.wav", params={})
    expired = replace(live, id=new_job_id(), status=JobStatus.COMPLETED, stage="done",
                      completed_at=datetime.now() - timedelta(hours=200))
    recent = replace(expired, id=new_job_id(), completed_at=datetime.now() - timedelta(hours=1))
    for job in (live, expired, recent):
        store.add(job)
    orphan = aged(inputs / "upload-orphan.wav", 7200)
    fresh = aged(inputs / "upload-fresh.wav", 60)
    keep_marker = aged(inputs / ".gitkeep", 10**6)
    old_scratch = aged(temp / "ffmpeg-1.log", 7200)
    old_output = aged(outputs / "2020_x.txt", 3 * 86400)
    new_output = aged(outputs / "2026_y.txt", 60)

    janitor = Janitor(store, inputs_dir=inputs, temp_dir=temp, outputs_dir=outputs, job_retention_hours=168,
                      output_retention_hours=24)
    assert janitor.run_once() == {"jobs": 1, "inputs": 1, "temp": 1, "outputs": 1, "segments": 0}
    assert store.get(expired.id) is None and store.get(recent.id) and store.get(live.id)
    assert live_upload.exists() and fresh.exists() and keep_marker.exists() and not orphan.exists()
    assert not old_scratch.exists() and not old_output.exists() and new_output.exists()

    keep_outputs = Janitor(store, inputs_dir=inputs, temp_dir=temp, outputs_dir=outputs, job_retention_hours=168,
                           output_retention_hours=0)
    aged(outputs / "2019_z.txt", 10 * 86400)
    assert keep_outputs.run_once()["outputs"] == 0  # 0 = keep transcripts forever


def test_sweep_of_scale_out_segment_folders(tmp_path: Path) -> None:
    """The API hands segments to the workers in one folder per job; a crash can leave one behind."""
    segments = tmp_path / "segments"
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    running = Job(id=new_job_id(), kind=JobKind.ASYNC, input_path=tmp_path / "a.wav", filename="a.wav", params={})
    store.add(running)

    def folder(name: str, age: float) -> Path:
        (segments / name).mkdir(parents=True)
        aged(segments / name / "0.npy", age)
        os.utime(segments / name, (time.time() - age, time.time() - age))
        return segments / name

    long_running = folder(running.id, 7200)  # a long job's folder stops changing once it is cut
    left_behind = folder("dead-job", 7200)
    just_made = folder("new-job", 60)
    janitor = Janitor(store, inputs_dir=tmp_path / "i", temp_dir=tmp_path / "t", outputs_dir=tmp_path / "o",
                      job_retention_hours=168, output_retention_hours=0, segments_dir=segments)
    assert janitor.run_once()["segments"] == 1
    assert long_running.exists() and just_made.exists() and not left_behind.exists()
