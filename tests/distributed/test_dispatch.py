"""The API role's dispatcher on a real Redis, with a test double standing for RQ's record of a failed task."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
from rq import Queue

from serve.distributed.cluster import Cluster
from serve.distributed.dispatch import MAX_WORKER_DEATHS, RemoteTranscriber, WorkerDied, _Dispatch, _Task
from serve.distributed.worker import QUEUE
from serve.jobs import Job, JobKind, new_job_id


class FailedTaskDouble:
    """Stands for an RQ task that ended with ``exc_string`` on its worker."""

    def __init__(self, exc_string: str) -> None:
        self.meta: dict = {}
        self._result = SimpleNamespace(exc_string=exc_string)

    def latest_result(self) -> SimpleNamespace:
        return self._result


def dispatcher(redis_url: str, tmp_path: Path) -> tuple[_Dispatch, _Task, Queue]:
    client = redis.Redis.from_url(redis_url)
    job = Job(id=new_job_id(), kind=JobKind.ASYNC, input_path=tmp_path / "a.wav", filename="a.wav",
              params={"segment_duration": 60, "max_new_tokens": 8, "temperature": 0.0, "repetition_penalty": 1.0})
    dispatch = _Dispatch(RemoteTranscriber(client, Cluster(client), tmp_path, segments_per_task=1), job, None)
    task = _Task(job.id, 0, [{"index": 4, "file": f"{job.id}/4.npy"}])
    dispatch._enqueue(task)
    return dispatch, task, Queue(QUEUE, connection=client)


def test_a_segment_whose_workers_keep_dying_fails_its_job_instead_of_killing_every_worker(
        redis_url: str, tmp_path: Path) -> None:
    dispatch, task, queue = dispatcher(redis_url, tmp_path)
    abandoned = FailedTaskDouble("rq.exceptions.AbandonedJobError: work-horse terminated unexpectedly")
    for attempt in range(2, MAX_WORKER_DEATHS + 1):  # another worker gets it, up to the limit
        dispatch._failed(task, abandoned)
        assert task.attempt == attempt and queue.job_ids[0] == task.rq_id  # at the front
    assert task.failures == 0  # a death is not counted as the task raising
    with pytest.raises(WorkerDied, match=r"segments 4-4 took down 3 workers") as failure:
        dispatch._failed(task, abandoned)
    assert failure.value.status == 500 and failure.value.code == "worker_died"


def test_a_task_that_raises_is_retried_then_fails_with_the_workers_reason(redis_url: str, tmp_path: Path) -> None:
    dispatch, task, _queue = dispatcher(redis_url, tmp_path)
    raised = FailedTaskDouble("Traceback ...\nRuntimeError: CUDA error: an illegal memory access")
    dispatch._failed(task, raised)
    dispatch._failed(task, raised)
    assert task.failures == 2 and task.worker_deaths == 0
    with pytest.raises(Exception, match="failed on the workers 3 times"):
        dispatch._failed(task, raised)
