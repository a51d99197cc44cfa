"""The API role's job runner: cut the audio here, transcribe it on the workers, reassemble it in order.

Segments are cut exactly as in the single-process server (pauses, trimming), saved to the shared segments
folder and queued as RQ tasks of ``segments_per_task`` segments as soon as they are cut, so that several
workers transcribe one file in parallel. The runner then watches the results: a task whose worker stopped
heart-beating, that failed, or that Redis lost is queued again (at-least-once); results are keyed by
segment, so a segment done twice is stored once, and the transcript is assembled in segment order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job as Task
from rq.job import JobStatus as TaskStatus

from ..audio import Segment, decode_segments
from ..errors import APIError, JobFailed
from ..jobs import Job, JobControl, JobFailure
from ..transcriber import TranscriptionParams, TranscriptionStopped
from ..transcript import Piece, Transcript
from .cluster import Cluster
from .redis_store import PATIENCE_SECONDS, patiently
from .worker import FAILURE_META, QUEUE, pieces_key, transcribe_task

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2  # how often a job reads its finished segments
CHECK_SECONDS = 1.0  # how often it looks for lost, failed and orphaned tasks
# Auto task size: batches for the workers' GPUs, yet enough tasks per worker that one file spreads evenly.
MAX_AUTO_SEGMENTS_PER_TASK = 8
TASKS_PER_WORKER = 4
QUEUED_TTL = 86400  # a task nobody takes in a day leaves Redis (the job re-queues it if it still waits)
MAX_FAILURES = 3  # a task that raises this often (a dead worker does not count) fails its job
# A task whose worker dies this often fails its job: a segment that crashes the process (the kernel's OOM
# killer, a GPU fault) would otherwise take every worker down in turn, for ever.
MAX_WORKER_DEATHS = 3
TASK_TIMEOUT = 3600  # seconds a worker may spend on one task before RQ stops it


class TaskFailed(APIError):
    """A segment task kept failing on the workers."""

    status = 500
    code = "worker_failed"


class WorkerDied(APIError):
    """The workers running a task kept dying (not raising) on it."""

    status = 500
    code = "worker_died"


class StoreLost(APIError):
    """Redis stayed unreachable longer than a job waits for it."""

    status = 503
    code = "store_unavailable"


@dataclass
class _Task:
    """A few consecutive segments of one job, handed to one worker; queued again under a new RQ id."""

    job_id: str
    number: int
    segments: list[dict[str, Any]]
    attempt: int = 0
    failures: int = 0
    worker_deaths: int = 0

    @property
    def rq_id(self) -> str:
        return f"{self.job_id}-{self.number}-{self.attempt}"


def _describe(segment: Segment) -> dict[str, Any]:
    return {"index": segment.index, "start": segment.start, "end": segment.end, "cut_start": segment.cut_start,
            "cut_end": segment.cut_end, "silent": segment.is_silent()}


class RemoteTranscriber:
    """``(job, control) -> Transcript`` on the workers; one call per job, on a job-queue thread."""

    def __init__(self, client: redis.Redis, cluster: Cluster, segments_dir: Path, segments_per_task: int) -> None:
        self.redis = client
        self.cluster = cluster
        self.queue = Queue(QUEUE, connection=client)
        self.segments_dir = Path(segments_dir)
        self.segments_per_task = segments_per_task

    def __call__(self, job: Job, control: JobControl) -> Transcript:
        return _Dispatch(self, job, control).run()


class _Dispatch:
    """One job's segments on their way through the workers."""

    def __init__(self, owner: RemoteTranscriber, job: Job, control: JobControl) -> None:
        self.owner = owner
        self.redis = owner.redis
        self.job = job
        self.control = control
        self.params = TranscriptionParams(**job.params)
        self.folder = owner.segments_dir / job.id
        self.order: list[dict[str, Any]] = []  # every segment, silent ones too, in file order
        self.tasks: list[_Task] = []
        self.results: dict[int, dict[str, Any]] = {}
        self.reported = 0  # segments reported to the job's progress, in order
        self.expected = (math.ceil(job.audio_duration / self.params.segment_duration)
                         if job.audio_duration else None)
        self.per_task = owner.segments_per_task  # 0: sized in run(), where Redis errors are handled

    def _auto_task_size(self) -> int:
        if not self.expected:
            return 1
        workers = max(1, len(patiently(self.owner.cluster.workers)))
        return max(1, min(MAX_AUTO_SEGMENTS_PER_TASK, math.ceil(self.expected / (workers * TASKS_PER_WORKER))))

    def run(self) -> Transcript:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            patiently(lambda: self.redis.delete(pieces_key(self.job.id)))  # a re-run starts clean
            self.per_task = self.per_task or self._auto_task_size()
            pending: list[dict[str, Any]] = []
            for segment in decode_segments(self.job.input_path, self.params.segment_duration, self.folder):
                self._check_stop()
                entry = _describe(segment)
                self.order.append(entry)
                if not entry["silent"]:
                    # Relative to the segments folder: each worker may mount it somewhere else.
                    entry["file"] = f"{self.job.id}/{segment.index}.npy"
                    np.save(self.owner.segments_dir / entry["file"], segment.samples)
                    pending.append(entry)
                if len(pending) >= self.per_task:
                    self._enqueue(_Task(self.job.id, len(self.tasks), pending))
                    pending = []
                self._collect()
            if pending:
                self._enqueue(_Task(self.job.id, len(self.tasks), pending))
            last_check = time.monotonic()
            while self._outstanding():
                time.sleep(POLL_SECONDS)
                self._check_stop()
                self._collect()
                if time.monotonic() - last_check >= CHECK_SECONDS:
                    last_check = time.monotonic()
                    live = patiently(self.owner.cluster.rq_workers)
                    for task in self._outstanding():
                        self._check(task, live)
            pieces = [Piece(r["start"], r["end"], r["text"])
                      for r in (self.results[e["index"]] for e in self.order if not e["silent"])]
            for task in self.tasks:
                if task.attempt > 1:
                    self._withdraw(task)  # a repeat that is still queued is no longer needed
            return Transcript(pieces=tuple(pieces), duration=self.order[-1]["cut_end"] if self.order else 0.0)
        except BaseException as exc:
            for task in self.tasks:
                self._withdraw(task)
            if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
                raise StoreLost(f"Redis was unreachable for more than {PATIENCE_SECONDS:.0f} s ({exc}); "
                                "submit the file again") from exc
            if isinstance(exc, redis.RedisError):  # reachable but refusing: out of memory, read-only replica
                raise StoreLost(f"Redis refused a command ({type(exc).__name__}: {exc}); check the Redis "
                                "server's log, then submit the file again") from exc
            raise
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
            with contextlib.suppress(redis.RedisError):  # else the key goes when the job record expires
                self.redis.delete(pieces_key(self.job.id))

    def _check_stop(self) -> None:
        if self.control.should_stop():
            raise TranscriptionStopped()

    def _outstanding(self) -> list[_Task]:
        return [t for t in self.tasks if any(s["index"] not in self.results for s in t.segments)]

    def _enqueue(self, task: _Task) -> None:
        task.attempt += 1
        if task.attempt == 1:
            self.tasks.append(task)
        # A retried task goes to the front: its job is waiting for it, and the job's other segments are done.
        patiently(lambda: self.owner.queue.enqueue(
            transcribe_task, self.job.id, task.segments, asdict(self.params), job_id=task.rq_id,
            job_timeout=TASK_TIMEOUT, ttl=QUEUED_TTL, result_ttl=300, failure_ttl=3600, at_front=task.attempt > 1,
            description=f"job {self.job.id} segments {task.segments[0]['index']}-{task.segments[-1]['index']}"))

    def _withdraw(self, task: _Task) -> None:
        """Take every attempt of ``task`` that no worker has started off the queue, and out of Redis."""
        for attempt in range(1, task.attempt + 1):
            with contextlib.suppress(NoSuchJobError, InvalidJobOperation, redis.RedisError):  # best effort
                rq_task = Task.fetch(f"{task.job_id}-{task.number}-{attempt}", connection=self.redis)
                if rq_task.get_status() in (TaskStatus.QUEUED, TaskStatus.DEFERRED, TaskStatus.SCHEDULED):
                    rq_task.delete(remove_from_queue=True)

    def _collect(self) -> None:
        """Read the newly finished segments and report, in file order, every one up to the first still missing."""
        missing = [e["index"] for e in self.order if not e["silent"] and e["index"] not in self.results]
        if missing:
            texts = patiently(lambda: self.redis.hmget(pieces_key(self.job.id), [str(i) for i in missing]))
            self.results.update({i: json.loads(v) for i, v in zip(missing, texts, strict=True) if v is not None})
        while self.reported < len(self.order):
            entry = self.order[self.reported]
            piece = None
            if not entry["silent"]:
                if entry["index"] not in self.results:
                    break
                result = self.results[entry["index"]]
                piece = {"start": result["start"], "end": result["end"], "text": result["text"]}
            self.reported += 1
            total = max(self.expected, self.reported) if self.expected else None
            self.control.report(self.reported, total, entry["cut_end"], piece)

    def _check(self, task: _Task, live_rq_workers: set[str]) -> None:
        """Queue ``task`` again if Redis lost it, it failed, or its worker stopped heart-beating."""
        try:
            rq_task = patiently(lambda: Task.fetch(task.rq_id, connection=self.redis))
            status = patiently(rq_task.get_status)
        except (NoSuchJobError, InvalidJobOperation):
            log.warning("task %s was lost (Redis restarted?): queuing it again", task.rq_id)
            self._enqueue(task)
            return
        if status == TaskStatus.FAILED:
            self._failed(task, rq_task)
        elif status == TaskStatus.STARTED:
            owners = self._owners(rq_task)
            # Read the live workers again before judging: a worker that started since the last read has
            # announced itself before taking this task.
            if owners and not live_rq_workers.intersection(owners) and \
                    not patiently(self.owner.cluster.rq_workers).intersection(owners):
                self._worker_died(task, f"worker {owners[0]} stopped heart-beating")

    def _failed(self, task: _Task, rq_task: Task) -> None:
        """A task raised on its worker: try it again (another worker may do better), at most MAX_FAILURES times."""
        result = patiently(rq_task.latest_result)
        lines = (result.exc_string or "").strip().splitlines() if result else []
        reason = lines[-1] if lines else "unknown error"
        if "AbandonedJobError" in reason:  # RQ's word for a worker that died
            self._worker_died(task, "RQ found it abandoned by its worker")
            return
        task.failures += 1
        if task.failures >= MAX_FAILURES:
            failure = rq_task.meta.get(FAILURE_META)
            if failure:  # the worker's own account, with the code and status the single process would give
                raise JobFailed(JobFailure(**failure))
            raise TaskFailed(f"transcription failed on the workers {task.failures} times; see their logs")
        log.warning("task %s failed (%s): queuing it again", task.rq_id, reason)
        self._enqueue(task)

    def _worker_died(self, task: _Task, how: str) -> None:
        """The worker running ``task`` died: another one takes it, unless that keeps happening."""
        task.worker_deaths += 1
        if task.worker_deaths >= MAX_WORKER_DEATHS:
            raise WorkerDied(f"segments {task.segments[0]['index']}-{task.segments[-1]['index']} took down "
                             f"{task.worker_deaths} workers (last: {how}); they may crash the worker process: see "
                             "the workers' logs (out of memory, GPU errors)")
        log.warning("task %s: %s: queuing it again", task.rq_id, how)
        self._enqueue(task)

    @staticmethod
    def _owners(rq_task: Task) -> list[str]:
        """The names of the RQ workers running ``rq_task``; none when it finished meanwhile."""
        try:
            return [execution.worker_name for execution in patiently(rq_task.get_executions)]
        except ValueError:  # RQ: an execution ended between listing and reading it
            return []
