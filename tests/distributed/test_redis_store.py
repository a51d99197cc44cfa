"""The Redis job store's own guarantees (the JobStore contract runs on it in tests/test_jobs.py), and waiting
out a Redis restart in background work but never in a request."""

from __future__ import annotations

import json
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


def owned(owner: str | None, minute: int, status: JobStatus = JobStatus.PROCESSING) -> Job:
    moment = datetime(2025, 1, 1, 12, minute)
    return replace(a_job(), owner=owner, status=status, created_at=moment,
                   completed_at=None if status is JobStatus.PROCESSING else moment)


def test_an_owner_s_jobs_are_listed_from_redis_indexes(store: RedisJobStore) -> None:
    jobs = [owned(["a" * 32, "b" * 32, None][n % 3], n, JobStatus.COMPLETED if n % 2 else JobStatus.PROCESSING)
            for n in range(12)]
    for job in jobs:
        store.add(job)
    newest = jobs[::-1]
    a_jobs = [j.id for j in newest if j.owner == "a" * 32]
    assert [j.id for j in store.list(owner="a" * 32)] == a_jobs
    assert [j.id for j in store.list(owner="a" * 32, limit=2, offset=1)] == a_jobs[1:3]
    b_done = [j.id for j in newest if j.owner == "b" * 32 and j.status is JobStatus.COMPLETED]
    assert [j.id for j in store.list(owner="b" * 32, status=JobStatus.COMPLETED)] == b_done
    assert [j.id for j in store.list(owner="b" * 32, status=JobStatus.COMPLETED, limit=1, offset=1)] == b_done[1:2]
    assert store.list(owner="c" * 32) == [] and len(store.list(limit=100)) == 12
    # The page comes from the owner's own sorted set, not from filtering every job.
    assert store.redis.zcard("qwen:jobs:owner:" + "a" * 32) == len(a_jobs)
    # A status change moves the job between the owner's status sets too.
    first = jobs[0]
    store.update(replace(first, status=JobStatus.CANCELLED, stage="done", completed_at=datetime.now()))
    assert [j.id for j in store.list(owner="a" * 32, status=JobStatus.CANCELLED)] == [first.id]
    assert first.id not in {j.id for j in store.list(owner="a" * 32, status=JobStatus.PROCESSING)}
    assert store.get(first.id).owner == "a" * 32


def test_deleting_jobs_clears_their_owner_s_indexes(store: RedisJobStore) -> None:
    jobs = [owned("a" * 32, 1), owned("a" * 32, 2, JobStatus.COMPLETED), owned(None, 3, JobStatus.FAILED)]
    for job in jobs:
        store.add(job)
    store.delete([j.id for j in jobs])
    assert store.list(owner="a" * 32) == [] and store.list() == []
    assert store.redis.keys("qwen:*") == []  # nothing left behind, the owner's indexes included


def test_records_from_before_owners_read_as_ownerless(store: RedisJobStore) -> None:
    job = a_job()
    store.add(job)
    record = json.loads(store.redis.get(f"qwen:job:{job.id}"))
    del record["owner"]
    store.redis.set(f"qwen:job:{job.id}", json.dumps(record))
    assert store.get(job.id).owner is None
    store.delete([job.id])
    assert store.redis.keys("qwen:*") == []
