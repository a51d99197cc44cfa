"""The Redis job store's own guarantees (the JobStore contract runs on it in tests/test_jobs.py), and waiting
out a Redis restart in background work but never in a request."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
import redis
from flask import Flask
from local_redis import RedisServer

from serve.distributed.redis_store import PatientStore, RedisJobStore, patiently
from serve.jobs import Job, JobKind, JobStatus, Progress, new_job_id


def a_job() -> Job:
    return Job(id=new_job_id(), kind=JobKind.ASYNC, input_path=Path("/tmp/in.mp3"), filename="会议.mp3",
               params={"segment_duration": 60})


@pytest.fixture
def store(redis_url: str) -> RedisJobStore:
    return RedisJobStore(redis.Redis.from_url(redis_url))


def test_a_record_update_never_rolls_progress_back(store: RedisJobStore) -> None:
    job = a_job()
    store.add(job)
    running = replace(job, stage="running", started_at=datetime.now())
    store.update_progress(job.id, Progress(3, 10, 30.0, ({"start": 0, "end": 1, "text": "你好"},)))
    store.update(running)  # a runner's record, written with stale progress, must not undo the report
    assert store.get(job.id).progress == Progress(3, 10, 30.0, ({"start": 0, "end": 1, "text": "你好"},))
    final = replace(running, status=JobStatus.COMPLETED, stage="done", completed_at=datetime.now(),
                    progress=Progress(10, 10, 100.0))
    store.update(final)  # the final record carries the final progress
    assert store.get(job.id) == final


def test_status_indexes_follow_the_job(store: RedisJobStore) -> None:
    job = a_job()
    store.add(job)
    assert store.is_unfinished(job.id) and [j.id for j in store.unfinished()] == [job.id]
    store.update(replace(job, status=JobStatus.CANCELLED, stage="done", completed_at=datetime.now()))
    assert not store.is_unfinished(job.id) and store.unfinished() == []
    assert [j.id for j in store.list(status=JobStatus.CANCELLED)] == [job.id]
    assert store.list(status=JobStatus.PROCESSING) == []
    store.delete([job.id])
    assert store.get(job.id) is None and store.count() == 0
    assert store.redis.keys("qwen:*") == []  # nothing left behind, indexes included


def test_patiently_waits_out_a_restart_and_gives_up_after_its_patience() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise redis.ConnectionError("Connection refused")
        return "ok"

    assert patiently(flaky) == "ok" and len(calls) == 3

    def down() -> None:
        raise redis.ConnectionError("Connection refused")

    with pytest.raises(redis.ConnectionError):
        patiently(down, patience=0.3)


def test_background_work_waits_for_redis_but_a_request_does_not(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    client = redis.Redis(port=server.port, socket_connect_timeout=1, retry=None)
    patient = PatientStore(RedisJobStore(client), patience=60)
    job = a_job()
    patient.add(job)
    server.stop()
    with Flask(__name__).test_request_context(), pytest.raises(redis.ConnectionError):
        patient.get(job.id)  # in a request: fail at once (the client gets 503)
    threading.Timer(1.0, server.start).start()
    assert patient.get(job.id) == job  # in the background: wait until Redis is back, with the data kept
    server.stop()
