"""The API role's destination: segments from the fair scheduler to the workers as RQ tasks, texts back.

The pipeline is the single process's (:mod:`serve.transcriber`): each job decodes and cuts its file here and
puts its segments into the same :class:`~serve.scheduler.FairScheduler`. One dispatcher thread then keeps
the RQ queue short, about one task waiting per live worker (no worker waits for a hand-off, and no segment
waits behind a backlog of earlier files), and fills it from the scheduler: a short job's segment leaves in
one of the next tasks, whatever long files are running. A task is at most one batch on a worker (the
workers' batch size, or ``--segments-per-task``), spread over the live workers, possibly from several jobs
with the same generation settings; each segment's audio is written to the shared segments folder when its
task leaves.

The dispatcher then watches what it sent: each segment's raw text lands in its job's results hash (keyed by
segment, so a segment done twice is stored once). A task whose worker stopped heart-beating, that failed,
or that Redis lost is queued again (at-least-once), a task of several segments as one task per segment, so
that a segment that keeps failing fails its own job only: after ``MAX_FAILURES`` raises, or after
``MAX_WORKER_DEATHS`` workers died on it (a segment that crashes the process would otherwise take every
worker down in turn).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import redis
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job as Task
from rq.job import JobStatus as TaskStatus

from ..audio import Segment
from ..errors import APIError, JobFailed
from ..generation import GenerationOptions, SegmentResult
from ..jobs import JobFailure
from ..scheduler import FairScheduler, Flow, SegmentRequest
from .cluster import Cluster
from .redis_store import PATIENCE_SECONDS, patiently
from .tasks import FAILURE_META, QUEUE, pieces_key

log = logging.getLogger(__name__)
T = TypeVar("T")

POLL_SECONDS = 0.05  # how often the dispatcher reads finished segments and refills the queue
CHECK_SECONDS = 1.0  # how often it looks for lost, failed and orphaned tasks
QUEUED_TTL = 86400  # a task nobody takes in a day leaves Redis (the dispatcher queues it again)
MAX_FAILURES = 3  # a segment whose task raises this often (a dead worker does not count) fails its job
MAX_WORKER_DEATHS = 3  # a segment whose workers die this often fails its job
TASK_TIMEOUT = 3600  # seconds a worker may spend on one task before RQ stops it


class TaskFailed(APIError):
    """A segment task kept failing on the workers."""

    status = 500
    code = "worker_failed"


class WorkerDied(APIError):
    """The workers running a segment kept dying (not raising) on it."""

    status = 500
    code = "worker_died"


class StoreLost(APIError):
    """Redis stayed unreachable longer than a job waits for it, or refused a command."""

    status = 503
    code = "store_unavailable"


def store_lost(exc: redis.RedisError) -> StoreLost:
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return StoreLost(f"Redis was unreachable for more than {PATIENCE_SECONDS:.0f} s ({exc}); submit the file "
                         "again")
    # Reachable but refusing: out of memory, a read-only replica.
    return StoreLost(f"Redis refused a command ({type(exc).__name__}: {exc}); check the Redis server's log, then "
                     "submit the file again")


@dataclass(eq=False)
class _Entry:
    """A segment on its way through the workers."""

    request: SegmentRequest
    job_id: str
    index: int
    failures: int = 0
    worker_deaths: int = 0

    @property
    def file(self) -> str:
        # Relative to the segments folder: each worker may mount it somewhere else.
        return f"{self.job_id}/{self.index}.npy"

    def describe(self) -> dict[str, Any]:
        return {"job": self.job_id, "index": self.index, "file": self.file, "start": self.request.start,
                "end": self.request.end}

    def where(self) -> str:
        return f"the segment at {self.request.start:.1f}-{self.request.end:.1f} s"


@dataclass(eq=False)
class _Task:
    """Segments handed to one worker as one RQ task; queued again under a new id."""

    entries: list[_Entry]
    options: GenerationOptions
    rq_id: str = ""


class RemoteDestination:
    """Segments go to the scale-out workers."""

    def __init__(self, client: redis.Redis, cluster: Cluster, segments_dir: Path, segments_per_task: int = 0, *,
                 poll_seconds: float = POLL_SECONDS, check_seconds: float = CHECK_SECONDS) -> None:
        self.redis = client
        self.cluster = cluster
        self.queue = Queue(QUEUE, connection=client)
        self.segments_dir = Path(segments_dir)
        self.segments_per_task = segments_per_task
        self.scheduler = FairScheduler()
        self.poll_seconds = poll_seconds
        self.check_seconds = check_seconds
        self._tasks: dict[str, _Task] = {}  # sent and not yet answered, by RQ id
        self._live: list[dict[str, Any]] = []  # the live workers' heartbeats, read at each check
        self._lock = threading.RLock()  # the dispatcher's rounds and a job's departure do not interleave
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="segment-dispatcher", daemon=True)

    def start(self) -> RemoteDestination:
        self._thread.start()
        return self

    # -- the pipeline's side -------------------------------------------------------------------------------

    def open_lane(self, job_id: str, *, waiting_client: bool) -> _RemoteLane:
        (self.segments_dir / job_id).mkdir(parents=True, exist_ok=True)
        try:
            self._patiently(lambda: self.redis.delete(pieces_key(job_id)))  # a re-run starts clean
        except redis.RedisError as exc:
            raise store_lost(exc) from exc
        return _RemoteLane(self, job_id, self.scheduler.open_flow(job_id, waiting_client=waiting_client))

    def capacity(self) -> int:
        """Segments in the workers' hands at once: a task running and one waiting per live worker."""
        return 2 * max(1, len(self._live)) * self._max_task_size()

    def forget(self, job_id: str) -> None:
        """A job is done: stop watching its segments, withdraw tasks that only it still needed, remove its files."""
        with self._lock:
            abandoned = []
            for task in list(self._tasks.values()):
                task.entries = [e for e in task.entries if e.job_id != job_id]
                if not task.entries:
                    abandoned.append(self._tasks.pop(task.rq_id))
            for task in abandoned:
                self._withdraw(task)
            shutil.rmtree(self.segments_dir / job_id, ignore_errors=True)
            with contextlib.suppress(redis.RedisError):  # else the key goes when the job record expires
                self.redis.delete(pieces_key(job_id))

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _patiently(self, action: Callable[[], T]) -> T:
        """Wait out a Redis restart, but never past a close: a shutdown while Redis is down must not hang."""
        return patiently(action, give_up=self._stop)

    # -- the dispatcher ------------------------------------------------------------------------------------

    def _loop(self) -> None:
        last_check = 0.0
        while not self._stop.is_set():
            try:
                check = time.monotonic() - last_check >= self.check_seconds
                if check:
                    last_check = time.monotonic()
                self.run_round(check=check)
            except redis.RedisError as exc:  # unreachable past our patience, or refusing commands
                log.error("the segment dispatcher lost Redis (%s): failing the segments in flight", exc)
                self._fail_everything(store_lost(exc))
            except Exception:  # never let the one dispatcher die: jobs would wait for ever
                log.exception("the segment dispatcher failed a round; going on")
            self._stop.wait(self.poll_seconds)

    def run_round(self, *, check: bool = True) -> None:
        """One round: answer what has arrived, look for lost and orphaned tasks (``check``), refill the queue."""
        with self._lock:
            self._collect(list(self._tasks.values()))
            if check:
                self._live = self._patiently(self.cluster.workers)
                self._check()
            self._release()

    def _max_task_size(self) -> int:
        if self.segments_per_task:
            return self.segments_per_task
        # One batch on the smallest loaded worker; until a worker has loaded its model, one segment.
        sizes = [beat["batch_size"] for beat in self._live if beat.get("batch_size")]
        return min(sizes) if sizes else 1

    def _release(self) -> None:
        """Refill the RQ queue from the scheduler, up to one task waiting per live worker."""
        target = max(1, len(self._live))
        queued = self._patiently(lambda: self.queue.count)
        while queued < target:
            waiting = self.scheduler.waiting
            if not waiting:
                return
            # Spread what waits over the free places (one file over all the workers), one batch per task at most.
            size = min(self._max_task_size(), math.ceil(waiting / (target - queued)))
            batch = self.scheduler.next_batch(size, timeout=0)
            if not batch:
                return
            self._send(batch)
            queued += 1

    def _send(self, batch: list[SegmentRequest]) -> None:
        entries = [_Entry(request, str(request.flow.key), request.meta["index"]) for request in batch]
        try:
            for entry in entries:
                np.save(self.segments_dir / entry.file, entry.request.samples)
                entry.request.samples = None  # on disk now: the API holds only what still waits
            self._enqueue(_Task(entries, batch[0].options), front=any(r.flow.waiting_client for r in batch))
        except Exception as exc:
            failure = store_lost(exc) if isinstance(exc, redis.RedisError) else exc
            for entry in entries:
                _resolve(entry, failure)
            if isinstance(exc, redis.RedisError):
                raise

    def _enqueue(self, task: _Task, *, front: bool) -> None:
        task.rq_id = f"{task.entries[0].job_id}-{uuid.uuid4().hex[:12]}"
        segments = [entry.describe() for entry in task.entries]
        described = ", ".join(f"job {e.job_id} segment {e.index}" for e in task.entries)
        self._patiently(lambda: self.queue.enqueue(
            "serve.distributed.worker.transcribe_task", segments, task.options.to_dict(), job_id=task.rq_id,
            job_timeout=TASK_TIMEOUT, ttl=QUEUED_TTL, result_ttl=300, failure_ttl=3600, at_front=front,
            description=described[:500]))
        self._tasks[task.rq_id] = task

    def _collect(self, tasks: list[_Task]) -> None:
        """Answer every segment of ``tasks`` whose text has arrived; forget tasks with nothing left to wait for."""
        wanted: dict[str, list[_Entry]] = {}
        for task in tasks:
            for entry in task.entries:
                wanted.setdefault(entry.job_id, []).append(entry)
        if not wanted:
            return

        def read() -> list[list[bytes | None]]:
            pipe = self.redis.pipeline(transaction=False)  # built anew on each try: a failed pipeline is reset
            for job_id, entries in wanted.items():
                pipe.hmget(pieces_key(job_id), [str(e.index) for e in entries])
            return pipe.execute()

        arrived: set[int] = set()
        for entries, values in zip(wanted.values(), self._patiently(read), strict=True):
            for entry, value in zip(entries, values, strict=True):
                if value is not None:
                    _resolve(entry, SegmentResult.from_dict(json.loads(value)))
                    arrived.add(id(entry))
        for task in tasks:
            task.entries = [e for e in task.entries if id(e) not in arrived]
            if not task.entries:
                self._tasks.pop(task.rq_id, None)

    def _check(self) -> None:
        """Queue a task again if Redis lost it, it failed, or its worker stopped heart-beating."""
        live = {beat["rq_worker"] for beat in self._live if beat.get("rq_worker")}
        for task in list(self._tasks.values()):
            try:
                rq_task = self._patiently(lambda t=task: Task.fetch(t.rq_id, connection=self.redis))
                status = self._patiently(rq_task.get_status)
            except (NoSuchJobError, InvalidJobOperation):
                log.warning("task %s was lost (Redis restarted?): queuing it again", task.rq_id)
                self._retry(task, counts=None, reason="lost")
                continue
            if status == TaskStatus.FAILED:
                self._failed(task, rq_task)
            elif status == TaskStatus.STARTED:
                owners = self._owners(rq_task)
                # Read the live workers again before judging: a worker that started since the last read has
                # announced itself before taking this task.
                if owners and not live.intersection(owners) and \
                        not self._patiently(self.cluster.rq_workers).intersection(owners):
                    self._worker_died(task, f"worker {owners[0]} stopped heart-beating")
            elif status == TaskStatus.FINISHED:
                self._collect([task])  # its texts may have landed since this round's read
                if task.entries:
                    log.warning("task %s finished without %d of its segments: queuing them again", task.rq_id,
                                len(task.entries))
                    self._retry(task, counts=None, reason="finished without results")

    def _failed(self, task: _Task, rq_task: Task) -> None:
        """A task raised on its worker: try again (another worker may do better), at most MAX_FAILURES times."""
        result = self._patiently(rq_task.latest_result)
        lines = (result.exc_string or "").strip().splitlines() if result else []
        reason = lines[-1] if lines else "unknown error"
        if "AbandonedJobError" in reason:  # RQ's word for a worker that died
            self._worker_died(task, "RQ found it abandoned by its worker")
            return
        failure = rq_task.meta.get(FAILURE_META)
        log.warning("task %s failed (%s)", task.rq_id, reason)
        if failure and 400 <= failure.get("http_status", 500) < 500 and len(task.entries) == 1:
            # The engine refused the request (a language or segment its model lacks): no worker does better.
            _resolve(task.entries[0], JobFailed(JobFailure(**failure)))
            self._tasks.pop(task.rq_id, None)
            return

        def give_up(entry: _Entry) -> Exception:
            if failure:  # the worker's own account, with the code and status the single process would give
                return JobFailed(JobFailure(**failure))
            return TaskFailed(f"transcription of {entry.where()} failed on the workers {entry.failures} times; see "
                              "their logs")

        self._retry(task, counts="failures", reason=reason, give_up=give_up)

    def _worker_died(self, task: _Task, how: str) -> None:
        def give_up(entry: _Entry) -> Exception:
            return WorkerDied(f"{entry.where()} took down {entry.worker_deaths} workers (last: {how}); it may crash "
                              "the worker process: see the workers' logs (out of memory, GPU errors)")

        log.warning("task %s: %s", task.rq_id, how)
        self._retry(task, counts="worker_deaths", reason=how, give_up=give_up)

    def _retry(self, task: _Task, *, counts: str | None, reason: str, give_up: Any = None) -> None:
        """Queue ``task``'s segments again at the front, each alone if there were several (so that one that keeps
        failing fails only its job); a segment over its limit fails instead."""
        self._tasks.pop(task.rq_id, None)
        limits = {"failures": MAX_FAILURES, "worker_deaths": MAX_WORKER_DEATHS}
        again = []
        for entry in task.entries:
            if counts is not None:
                setattr(entry, counts, getattr(entry, counts) + 1)
                if getattr(entry, counts) >= limits[counts]:
                    _resolve(entry, give_up(entry))
                    continue
            again.append(entry)
        groups = [[entry] for entry in again] if len(task.entries) > 1 else ([again] if again else [])
        for group in groups:
            self._enqueue(_Task(group, task.options), front=True)
        if again:
            log.info("queued %d segment(s) of task %s again (%s)", len(again), task.rq_id, reason)

    def _withdraw(self, task: _Task) -> None:
        """Take ``task`` off the queue if no worker has started it (best effort)."""
        with contextlib.suppress(NoSuchJobError, InvalidJobOperation, redis.RedisError):
            rq_task = Task.fetch(task.rq_id, connection=self.redis)
            if rq_task.get_status() in (TaskStatus.QUEUED, TaskStatus.DEFERRED, TaskStatus.SCHEDULED):
                rq_task.delete(remove_from_queue=True)

    def _fail_everything(self, failure: Exception) -> None:
        """Redis is gone past our patience: every segment in flight or waiting fails with ``failure``."""
        with self._lock:
            tasks, self._tasks = list(self._tasks.values()), {}
            for task in tasks:
                for entry in task.entries:
                    _resolve(entry, failure)
            while batch := self.scheduler.next_batch(64, timeout=0):
                for request in batch:
                    request.future.set_exception(failure)

    def _owners(self, rq_task: Task) -> list[str]:
        """The names of the RQ workers running ``rq_task``; none when it finished meanwhile."""
        try:
            return [execution.worker_name for execution in self._patiently(rq_task.get_executions)]
        except ValueError:  # RQ: an execution ended between listing and reading it
            return []


def _resolve(entry: _Entry, outcome: SegmentResult | BaseException) -> None:
    future: Future[SegmentResult] = entry.request.future
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class _RemoteLane:
    def __init__(self, destination: RemoteDestination, job_id: str, flow: Flow) -> None:
        self._destination = destination
        self._job_id = job_id
        self._flow = flow

    def submit(self, segment: Segment, options: GenerationOptions) -> Future[SegmentResult]:
        return self._destination.scheduler.submit(self._flow, segment.samples, options, start=segment.start,
                                                  end=segment.end, index=segment.index).future

    def lookahead(self) -> int:
        return self._destination.scheduler.lookahead(self._destination.capacity())

    def close(self) -> None:
        self._destination.scheduler.close_flow(self._flow)
        self._destination.forget(self._job_id)
