"""Transcription jobs: their records, the store that keeps them, and the one worker that runs them.

Synchronous requests and async jobs go through the same queue and the same worker thread, which is the
only code that reaches the model: there is no second, unlocked path to the GPU. The store sits behind a
small interface (:class:`JobStore`) so that a persistent one can replace the in-memory one.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


def now() -> datetime:
    return datetime.now()


class JobStatus(StrEnum):
    # The guide's three statuses; a queued job is "processing" too (stage tells them apart).
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True)
class JobFailure:
    """Why a job failed: a user-facing message and a machine-readable code (and the HTTP status it maps to)."""

    message: str
    code: str
    http_status: int = 500


@dataclass(frozen=True)
class Job:
    """An immutable snapshot of a job; the store holds the latest one."""

    id: str
    input_path: Path
    filename: str
    params: Any
    output_format: str = "txt"
    status: JobStatus = JobStatus.PROCESSING
    stage: str = "queued"  # queued -> running -> done
    created_at: datetime = field(default_factory=now)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    result: Any = None
    output_file: str | None = None
    failure: JobFailure | None = None

    @property
    def finished(self) -> bool:
        return self.status is not JobStatus.PROCESSING


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobStore(Protocol):
    def add(self, job: Job) -> None: ...
    def get(self, job_id: str) -> Job | None: ...
    def update(self, job: Job) -> None: ...


class InMemoryJobStore:
    """Jobs in a dict, forgetting the oldest finished ones beyond ``max_finished``."""

    def __init__(self, max_finished: int = 1000) -> None:
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self.max_finished = max_finished

    def add(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.id] = job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def update(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.id] = job
            finished = [j for j in self._jobs.values() if j.finished]
            for old in finished[: max(0, len(finished) - self.max_finished)]:
                del self._jobs[old.id]

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)


class JobRunner(Protocol):
    def __call__(self, job: Job) -> tuple[Any, str | None]:
        """Run ``job``; return (result, output_file). Raise to fail it."""


FailureMapper = Callable[[BaseException], JobFailure]


class _Ticket:
    """Lets a synchronous caller wait for its job without polling the store."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.job: Job | None = None


class JobQueue:
    """A FIFO of jobs run one at a time by a single worker thread."""

    def __init__(self, store: JobStore, runner: JobRunner, failure_of: FailureMapper,
                 on_finished: Callable[[Job], None] | None = None) -> None:
        self.store = store
        self._runner = runner
        self._failure_of = failure_of
        self._on_finished = on_finished
        self._queue: queue.Queue[tuple[str, _Ticket] | None] = queue.Queue()
        self._tickets: dict[str, _Ticket] = {}
        self._lock = threading.Lock()
        self._running: str | None = None
        self._worker = threading.Thread(target=self._work, name="transcription-worker", daemon=True)
        self._started = False
        self._stopping = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._worker.start()

    @property
    def depth(self) -> int:
        """Jobs waiting, not counting the one running."""
        return self._queue.qsize()

    @property
    def running_job(self) -> str | None:
        return self._running

    def submit(self, job: Job) -> Job:
        if self._stopping:
            raise RuntimeError("the server is shutting down")
        ticket = _Ticket()
        with self._lock:
            self._tickets[job.id] = ticket
        self.store.add(job)
        self._queue.put((job.id, ticket))
        return job

    def wait(self, job_id: str, timeout: float | None = None) -> Job | None:
        """Block until the job has finished; return its final record (None on timeout)."""
        with self._lock:
            ticket = self._tickets.get(job_id)
        if ticket is None:
            job = self.store.get(job_id)
            return job if job is not None and job.finished else None
        if not ticket.done.wait(timeout):
            return None
        return ticket.job

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            job_id, ticket = item
            job = self.store.get(job_id)
            try:
                if job is not None:
                    job = self._run(job)
            finally:
                ticket.job = job
                ticket.done.set()
                with self._lock:
                    self._tickets.pop(job_id, None)

    def _run(self, job: Job) -> Job:
        job = replace(job, stage="running", started_at=now())
        self.store.update(job)
        self._running = job.id
        try:
            result, output_file = self._runner(job)
            job = replace(job, status=JobStatus.COMPLETED, stage="done", completed_at=now(), result=result,
                          output_file=output_file)
        except Exception as exc:  # any failure fails this job, never the worker
            failure = self._failure_of(exc)
            if failure.http_status >= 500:
                log.exception("job %s failed", job.id)
            else:
                log.info("job %s failed: %s", job.id, failure.message)
            job = replace(job, status=JobStatus.FAILED, stage="done", completed_at=now(), failure=failure)
        finally:
            self._running = None
        self.store.update(job)
        if self._on_finished is not None:
            try:
                self._on_finished(job)
            except Exception:
                log.exception("cleanup after job %s failed", job.id)
        return job

    def stop(self, timeout: float | None = None) -> None:
        """Let the running job finish; fail the queued ones (nobody will run them); stop the worker."""
        self._stopping = True
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                continue
            job_id, ticket = item
            job = self.store.get(job_id)
            if job is not None:
                job = replace(job, status=JobStatus.FAILED, stage="done", completed_at=now(),
                              failure=JobFailure("interrupted: the server shut down before this job ran",
                                                 "interrupted", 503))
                self.store.update(job)
                if self._on_finished is not None:
                    self._on_finished(job)
            ticket.job = job
            ticket.done.set()
        if self._started:
            self._queue.put(None)
            self._worker.join(timeout)
