"""Transcription jobs: their records and the one bounded queue, with its job threads, that runs them.

Synchronous requests and async jobs go through the same queue and the same job threads; a running job
reaches the model only through the fair scheduler and the one batch runner behind it: there is no second,
unlocked path to the GPU. Job records live in a
:class:`JobStore` (SQLite, see ``job_store.py``) so they survive restarts; params and results are plain
JSON-able data, so this module knows nothing of the pipeline, HTTP or the database.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


def now() -> datetime:
    return datetime.now()


class JobStatus(StrEnum):
    # The guide's three statuses, plus cancelled. A queued job is "processing" too (stage tells them apart).
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobKind(StrEnum):
    SYNC = "sync"  # a client waits on the connection
    ASYNC = "async"  # a client polls /status


@dataclass(frozen=True)
class JobFailure:
    """Why a job failed: a user-facing message and a machine-readable code (and the HTTP status it maps to)."""

    message: str
    code: str
    http_status: int = 500


@dataclass(frozen=True)
class Progress:
    segments_done: int = 0
    segments_total: int | None = None
    audio_seconds_done: float = 0.0
    partial: tuple[dict[str, Any], ...] = ()  # the transcript so far: JSON-able pieces


@dataclass(frozen=True)
class Job:
    """An immutable snapshot of a job; the store holds the latest one."""

    id: str
    kind: JobKind
    input_path: Path
    filename: str
    params: dict[str, Any]
    output_format: str = "txt"
    audio_duration: float | None = None
    status: JobStatus = JobStatus.PROCESSING
    stage: str = "queued"  # queued -> running -> done
    created_at: datetime = field(default_factory=now)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    progress: Progress = field(default_factory=Progress)
    result: dict[str, Any] | None = None
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
    def update_progress(self, job_id: str, progress: Progress) -> None: ...
    def list(self, *, status: JobStatus | None = None, limit: int = 50, offset: int = 0) -> list[Job]: ...
    def unfinished(self) -> list[Job]: ...
    def delete(self, job_ids: Iterable[str]) -> None: ...
    def finished_before(self, moment: datetime) -> list[Job]: ...


class QueueFull(Exception):
    """The queue holds as many waiting jobs as it may; try again after ``retry_after`` seconds."""

    def __init__(self, depth: int, retry_after: int) -> None:
        super().__init__(f"the transcription queue is full ({depth} jobs waiting)")
        self.depth = depth
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The queue accepts no new work: the server is stopping."""


class JobControl:
    """What a running job may do besides returning: report progress, and ask whether it should stop."""

    def __init__(self, queue: JobQueue, job_id: str) -> None:
        self._queue = queue
        self.job_id = job_id
        self._pieces: list[dict[str, Any]] = []

    def report(self, segments_done: int, segments_total: int | None, audio_seconds_done: float,
               piece: dict[str, Any] | None = None) -> None:
        """A segment is done (with its transcribed piece, unless it was silent)."""
        if piece is not None:
            self._pieces.append(piece)
        self._queue.store.update_progress(self.job_id, Progress(segments_done, segments_total, audio_seconds_done,
                                                                tuple(self._pieces)))

    def should_stop(self) -> bool:
        return self._queue.cancel_requested(self.job_id)


class JobRunner(Protocol):
    def __call__(self, job: Job, control: JobControl) -> tuple[dict[str, Any], str | None]:
        """Run ``job``; return (result, output file name). Raise to fail it."""


FailureMapper = Callable[[BaseException], JobFailure]

INTERRUPTED = JobFailure("interrupted: the server stopped while this job was running; submit it again",
                         "interrupted", 503)


class _Ticket:
    """Lets a synchronous caller wait for its job without polling the store."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.job: Job | None = None


class JobQueue:
    """A bounded FIFO of jobs, up to ``concurrency`` of them running at once, each on its own thread.

    Running jobs do not touch the model themselves: their segments meet in the fair scheduler, which gives
    each running job its share of the model segment by segment (see ``scheduler.py``). So a short request
    admitted while long files run is transcribed within about one batch; only beyond ``concurrency`` running
    jobs does a job wait here, in arrival order, for one to finish.
    """

    def __init__(self, store: JobStore, runner: JobRunner, failure_of: FailureMapper, *, max_queued: int = 32,
                 concurrency: int = 1, on_finished: Callable[[Job], None] | None = None) -> None:
        self.store = store
        self.max_queued = max_queued
        self._runner = runner
        self._failure_of = failure_of
        self._on_finished = on_finished
        self._pending: deque[str] = deque()
        self._tickets: dict[str, _Ticket] = {}
        self._cancel: set[str] = set()
        self._cond = threading.Condition()
        self._running: list[str] = []
        self._reserved = 0  # places taken by submits still writing their record
        self._stopping = False
        self._average_seconds = 30.0  # a guess until jobs have run; used for Retry-After
        self.concurrency = concurrency
        self._workers = [threading.Thread(target=self._work, name=f"transcription-worker-{i}", daemon=True)
                         for i in range(concurrency)]
        self._started = False

    # -- state ---------------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Jobs waiting, not counting the one running."""
        with self._cond:
            return len(self._pending)

    @property
    def running_jobs(self) -> list[str]:
        with self._cond:
            return list(self._running)

    @property
    def running_job(self) -> str | None:
        """The longest-running job, if any."""
        running = self.running_jobs
        return running[0] if running else None

    def retry_after(self) -> int:
        """Seconds until a place in the queue is likely to be free."""
        return max(1, min(3600, round(self._average_seconds / self.concurrency)))

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Recover what a previous process left behind, then start the worker."""
        if self._started:
            return
        self._recover()
        self._started = True
        for worker in self._workers:
            worker.start()

    def _recover(self) -> None:
        """Queued async jobs are queued again; anything else unfinished was interrupted."""
        requeued = interrupted = 0
        for job in sorted(self.store.unfinished(), key=lambda j: j.created_at):
            if job.kind is JobKind.ASYNC and job.stage == "queued" and job.input_path.exists():
                self._pending.append(job.id)
                self._tickets[job.id] = _Ticket()
                requeued += 1
            else:
                self._finish(replace(job, status=JobStatus.FAILED, stage="done", completed_at=now(),
                                     failure=INTERRUPTED))
                interrupted += 1
        if requeued or interrupted:
            log.info("recovered jobs from the last run: %d queued again, %d marked interrupted", requeued,
                     interrupted)

    def stop(self, timeout: float | None = None) -> None:
        """Let the running job finish; the queued ones stay queued for the next start. Stop the worker."""
        with self._cond:
            self._stopping = True
            waiting = [(job_id, self._tickets.pop(job_id, None)) for job_id in self._pending]
            self._pending.clear()
            self._cond.notify_all()
        for job_id, ticket in waiting:
            job = self.store.get(job_id)
            if job is not None and job.kind is JobKind.SYNC:
                # Nobody will wait for it after the restart: fail it now instead of running it later.
                job = self._finish(replace(job, status=JobStatus.FAILED, stage="done", completed_at=now(),
                                           failure=INTERRUPTED))
            if ticket is not None:
                ticket.job = job
                ticket.done.set()
        if self._started:
            deadline = None if timeout is None else time.monotonic() + timeout
            for worker in self._workers:
                worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    # -- submitting, waiting, cancelling ---------------------------------------------------------------

    def submit(self, job: Job) -> Job:
        """Queue ``job``; raise :class:`QueueFull` when ``max_queued`` jobs already wait, :class:`ShuttingDown`
        once :meth:`stop` was called."""
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the server is shutting down; retry in a minute")
            if len(self._pending) + self._reserved >= self.max_queued:
                raise QueueFull(len(self._pending), self.retry_after())
            self._reserved += 1  # a place in the queue, held while the record is written
        try:
            # Outside the lock: a slow store (Redis restarting) must not stall status polls and other submits.
            self.store.add(job)
        except BaseException:
            with self._cond:
                self._reserved -= 1
            raise
        with self._cond:
            self._reserved -= 1
            if not self._stopping:
                self._tickets[job.id] = _Ticket()
                self._pending.append(job.id)
                self._cond.notify()
                return job
        if job.kind is JobKind.ASYNC:
            return job  # stays queued in the store; the next start queues it again
        self._finish(replace(job, status=JobStatus.FAILED, stage="done", completed_at=now(), failure=INTERRUPTED))
        raise ShuttingDown("the server is shutting down; retry in a minute")

    def wait(self, job_id: str, timeout: float | None = None) -> Job | None:
        """Block until the job has finished; return its final record (None on timeout)."""
        with self._cond:
            ticket = self._tickets.get(job_id)
        if ticket is None:
            job = self.store.get(job_id)
            return job if job is not None and job.finished else None
        if not ticket.done.wait(timeout):
            return None
        return ticket.job

    def cancel(self, job_id: str, reason: str = "cancelled by request") -> Job | None:
        """Cancel a queued job at once, or a running one at its next segment. Returns the job's record."""
        job = self.store.get(job_id)  # outside the lock, like every store call
        if job is None or job.finished:
            return job
        with self._cond:
            queued = job_id in self._pending
            if queued:
                position = self._pending.index(job_id)
                del self._pending[position]
                ticket = self._tickets.pop(job_id, None)
            else:
                self._cancel.add(job_id)  # running: it stops at its next segment; being submitted: at its first
        if not queued:
            current = self.store.get(job_id)
            if current is not None and current.finished:  # it finished since the read above: nothing to stop
                with self._cond:
                    self._cancel.discard(job_id)
                return current
            return job
        try:
            job = self._finish(replace(job, status=JobStatus.CANCELLED, stage="done", completed_at=now(),
                                       failure=JobFailure(reason, "cancelled", 409)))
        except BaseException:
            with self._cond:  # the record still says queued: keep the job queued rather than lose it
                self._pending.insert(min(position, len(self._pending)), job_id)
                if ticket is not None:
                    self._tickets[job_id] = ticket
                self._cond.notify()
            raise
        if ticket is not None:
            ticket.job = job
            ticket.done.set()
        return job

    def cancel_requested(self, job_id: str) -> bool:
        return job_id in self._cancel

    # -- the worker ------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job_id = self._pending.popleft()
                ticket = self._tickets.get(job_id)
                self._running.append(job_id)
            job = self.store.get(job_id)
            try:
                if job is not None:
                    job = self._run(job)
            finally:
                with self._cond:
                    self._running.remove(job_id)
                    self._cancel.discard(job_id)
                    self._tickets.pop(job_id, None)
                if ticket is not None:
                    ticket.job = job
                    ticket.done.set()

    def _run(self, job: Job) -> Job:
        started = time.monotonic()
        job = replace(job, stage="running", started_at=now())
        self.store.update(job)
        try:
            result, output_file = self._runner(job, JobControl(self, job.id))
            job = replace(job, status=JobStatus.COMPLETED, stage="done", completed_at=now(), result=result,
                          output_file=output_file, progress=self._latest_progress(job))
        except Exception as exc:  # any failure fails this job, never the worker
            job = replace(job, stage="done", completed_at=now(), progress=self._latest_progress(job))
            if self.cancel_requested(job.id):
                job = replace(job, status=JobStatus.CANCELLED, failure=JobFailure(
                    "cancelled while running", "cancelled", 409))
                log.info("job %s cancelled", job.id)
            else:
                failure = self._failure_of(exc)
                if failure.http_status >= 500:
                    log.error("job %s failed: %s", job.id, failure.message, exc_info=exc)
                else:
                    log.info("job %s failed: %s", job.id, failure.message)
                job = replace(job, status=JobStatus.FAILED, failure=failure)
        with self._cond:
            self._average_seconds = 0.8 * self._average_seconds + 0.2 * (time.monotonic() - started)
        return self._finish(job)

    def _latest_progress(self, job: Job) -> Progress:
        stored = self.store.get(job.id)
        return stored.progress if stored is not None else job.progress

    def _finish(self, job: Job) -> Job:
        self.store.update(job)
        if self._on_finished is not None:
            try:
                self._on_finished(job)
            except Exception:
                log.exception("cleanup after job %s failed", job.id)
        return job
