"""The API role's dispatcher on a real Redis, round by round (its thread not started): fair release into a
short RQ queue, texts back, failures, deaths and withdrawals. Workers are stood for by heartbeats written
here, and RQ's record of a failed task by a named test double."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import redis
from rq import Queue

from serve.audio import Segment
from serve.distributed.cluster import WORKER_NAMES, Cluster, heartbeat_key
from serve.distributed.dispatch import MAX_FAILURES, MAX_WORKER_DEATHS, RemoteDestination, WorkerDied
from serve.distributed.tasks import QUEUE, pieces_key
from serve.generation import GenerationOptions
from serve.jobs import new_job_id

GREEDY = GenerationOptions(max_new_tokens=8, temperature=0.0)


class FailedTaskDouble:
    """Stands for an RQ task that ended with ``exc_string`` on its worker."""

    def __init__(self, exc_string: str, failure: dict | None = None) -> None:
        self.meta: dict = {"failure": failure} if failure else {}
        self._result = SimpleNamespace(exc_string=exc_string)

    def latest_result(self) -> SimpleNamespace:
        return self._result


def announce(client: redis.Redis, *names: str, batch_size: int | None = None) -> None:
    """Heartbeats of live workers, as workers write them."""
    for name in names:
        client.set(heartbeat_key(name), json.dumps({"name": name, "rq_worker": f"{name}.token", "seen": time.time(),
                                                    "batch_size": batch_size}), ex=60)
        client.sadd(WORKER_NAMES, name)


def segment(index: int) -> Segment:
    return Segment(index, 10.0 * index, 10.0 * index + 9, np.full(160, index, dtype=np.float32))


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def dispatcher(client: redis.Redis, folder: Path, *workers: str, per_task: int = 0,
               batch_size: int | None = None) -> tuple[RemoteDestination, Queue]:
    announce(client, *workers, batch_size=batch_size)
    return RemoteDestination(client, Cluster(client), folder, per_task), Queue(QUEUE, connection=client)


def queued(queue: Queue) -> list[list[tuple[str, int]]]:
    """The RQ queue's tasks in order, each as its (job, segment index) pairs."""
    return [[(s["job"], s["index"]) for s in task.args[0]] for task in queue.jobs]


def test_the_queue_stays_short_and_a_short_job_leaves_before_a_long_backlog(client: redis.Redis,
                                                                            tmp_path: Path) -> None:
    destination, queue = dispatcher(client, tmp_path, "w0", "w1")
    long_job, short_job = new_job_id(), new_job_id()
    long_lane = destination.open_lane(long_job, waiting_client=False)
    for i in range(10):
        long_lane.submit(segment(i), GREEDY)
    short_lane = destination.open_lane(short_job, waiting_client=True)
    short = short_lane.submit(segment(0), GREEDY)
    destination.run_round()
    # One task per live worker waits; the waiting client's segment is first, not behind ten long ones.
    assert queued(queue) == [[(short_job, 0)], [(long_job, 0)]]
    assert np.load(tmp_path / short_job / "0.npy").tolist() == [0.0] * 160
    # A worker answers: the text reaches the job's future.
    task = queue.jobs[0]
    queue.remove(task)
    client.hset(pieces_key(short_job), "0", json.dumps({"parts": ["hello"], "worker": "w0"}))
    destination.run_round()
    assert short.result(1).parts == ("hello",)
    assert queued(queue) == [[(long_job, 0)], [(long_job, 1)]]  # refilled from the long backlog
    short_lane.close()
    long_lane.close()
    assert queue.count == 0 and not (tmp_path / long_job).exists()  # withdrawn, files gone


def test_tasks_are_one_workers_batch_spread_over_the_workers(client: redis.Redis, tmp_path: Path) -> None:
    destination, queue = dispatcher(client, tmp_path, "w0", "w1", batch_size=4)
    job = new_job_id()
    lane = destination.open_lane(job, waiting_client=False)
    for i in range(6):
        lane.submit(segment(i), GREEDY)
    destination.run_round()
    assert queued(queue) == [[(job, 0), (job, 1), (job, 2)], [(job, 3), (job, 4), (job, 5)]]  # 6 over 2 workers
    assert destination.capacity() == 16  # a batch of 4 running and one waiting on each of 2 workers
    lane.close()


def test_a_segment_whose_workers_keep_dying_fails_its_job_instead_of_killing_every_worker(
        client: redis.Redis, tmp_path: Path) -> None:
    destination, queue = dispatcher(client, tmp_path, "w0")
    lane = destination.open_lane(new_job_id(), waiting_client=False)
    future = lane.submit(segment(4), GREEDY)
    destination.run_round()
    abandoned = FailedTaskDouble("rq.exceptions.AbandonedJobError: work-horse terminated unexpectedly")
    for _ in range(MAX_WORKER_DEATHS - 1):  # another worker gets it
        (task,) = destination._tasks.values()
        queue.empty()  # a worker took it, and died there
        destination._failed(task, abandoned)
        assert queue.job_ids == list(destination._tasks)
        assert not future.done()
    (task,) = destination._tasks.values()
    destination._failed(task, abandoned)
    with pytest.raises(WorkerDied, match=r"the segment at 40.0-49.0 s took down 3 workers") as failure:
        future.result(0)
    assert failure.value.status == 500 and failure.value.code == "worker_died"
    lane.close()


def test_a_failed_task_of_several_jobs_is_retried_segment_by_segment_and_fails_only_the_culprits_job(
        client: redis.Redis, tmp_path: Path) -> None:
    destination, queue = dispatcher(client, tmp_path, "w0", per_task=3)
    culprit_job, innocent_job = new_job_id(), new_job_id()
    culprit = destination.open_lane(culprit_job, waiting_client=False)
    innocent = destination.open_lane(innocent_job, waiting_client=False)
    bad = culprit.submit(segment(0), GREEDY)
    good = innocent.submit(segment(0), GREEDY)
    destination.run_round()
    assert queued(queue) == [[(culprit_job, 0), (innocent_job, 0)]]  # one batch, two jobs
    raised = FailedTaskDouble("Traceback ...\nRuntimeError: CUDA error: an illegal memory access",
                              {"message": "transcription failed (RuntimeError); see the server log",
                               "code": "transcription_failed", "http_status": 500})
    queue.empty()  # a worker took it, and it failed there
    destination._failed(next(iter(destination._tasks.values())), raised)
    assert sorted(queued(queue)) == sorted([[(culprit_job, 0)], [(innocent_job, 0)]])  # alone now
    client.hset(pieces_key(innocent_job), "0", json.dumps({"parts": ["fine"], "worker": "w0"}))
    destination.run_round(check=False)
    assert good.result(1).parts == ("fine",)
    for _ in range(MAX_FAILURES - 1):
        (task,) = destination._tasks.values()
        queue.empty()
        destination._failed(task, raised)
    with pytest.raises(Exception, match="transcription failed") as failure:
        bad.result(0)
    assert failure.value.code == "transcription_failed"
    culprit.close()
    innocent.close()


def test_a_segment_the_engine_refuses_fails_its_job_at_once_without_costing_the_others(
        client: redis.Redis, tmp_path: Path) -> None:
    destination, queue = dispatcher(client, tmp_path, "w0", per_task=3)
    refused_job, other_job = new_job_id(), new_job_id()
    refused = destination.open_lane(refused_job, waiting_client=False)
    other = destination.open_lane(other_job, waiting_client=False)
    bad, good = refused.submit(segment(0), GREEDY), other.submit(segment(0), GREEDY)
    destination.run_round()
    client_error = FailedTaskDouble("Traceback ...\nInvalidParameter: segment_duration must be at most 290 s",
                                    {"message": "segment_duration must be at most 290 s with Qwen2.5-Omni (got 600)",
                                     "code": "invalid_parameter", "http_status": 400})
    queue.empty()
    destination._failed(next(iter(destination._tasks.values())), client_error)
    assert sorted(queued(queue)) == sorted([[(refused_job, 0)], [(other_job, 0)]])  # shared: each alone first
    task = next(t for t in destination._tasks.values() if t.entries[0].job_id == refused_job)
    destination._failed(task, client_error)  # alone, refused again: no worker does better, no more tries
    with pytest.raises(Exception, match="at most 290 s") as failure:
        bad.result(0)
    assert failure.value.status == 400 and failure.value.code == "invalid_parameter"
    assert [t.entries[0].job_id for t in destination._tasks.values()] == [other_job]
    client.hset(pieces_key(other_job), "0", json.dumps({"parts": ["fine"], "worker": "w0"}))
    destination.run_round(check=False)
    assert good.result(1).parts == ("fine",)
    refused.close()
    other.close()


def test_a_lost_task_is_sent_again_and_a_finished_one_without_texts_too(client: redis.Redis, tmp_path: Path) -> None:
    destination, queue = dispatcher(client, tmp_path, "w0")
    job = new_job_id()
    lane = destination.open_lane(job, waiting_client=False)
    future = lane.submit(segment(0), GREEDY)
    destination.run_round()
    first = queue.job_ids[0]
    queue.jobs[0].delete()  # Redis lost it (a restart without its append-only file)
    destination.run_round()
    assert queue.job_ids and queue.job_ids[0] != first and not future.done()
    lane.close()
