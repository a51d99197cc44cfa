"""Transcription jobs: their records and the one bounded queue, with its job threads, that runs them.

Synchronous requests and async jobs go through the same queue and the same job threads; a running job
reaches the model only through the fair scheduler and the one batch runner behind it: there is no second,
unlocked path to the GPU. Job records live in a
:class:`JobStore` (SQLite, see ``job_store.py``) so they survive restarts; params and results are plain
JSON-able data, so this module knows nothing of the pipeline, HTTP or the database.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


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
    output_error: str | None = None  # why the transcript could not be saved under outputs/ (it is in the record)
    failure: JobFailure | None = None
    # Crash-loop guard: in how many runs of the process the job had segments in the model while it stood
    # at segment ``attempt_from`` (its segments_done then), without a clean stop; a job that keeps killing
    # the process is failed, not resumed.
    attempts: int = 0
    attempt_from: int = 0
    # Who may see the job: the owner id of the API key that created it (a hash, see security.owner_id);
    # None when the server had no keys then.
    owner: str | None = None

    @property
    def finished(self) -> bool:
        return self.status is not JobStatus.PROCESSING


def new_job_id() -> str:
    return uuid.uuid4().hex


_JOB_ID = re.compile(r"[0-9a-f]{32}")


def is_job_id(value: str) -> bool:
    """A job id as :func:`new_job_id` makes them: checked before any store lookup (ids reach Redis keys)."""
    return _JOB_ID.fullmatch(value) is not None


class JobStore(Protocol):
    def probe(self) -> None:
        """A small write, to tell whether the store can be written again (raises if not)."""

    def add(self, job: Job) -> None: ...
    def get(self, job_id: str) -> Job | None: ...
    def update(self, job: Job) -> None: ...
    def update_progress(self, job_id: str, progress: Progress) -> None: ...
    def count_attempt(self, job_id: str) -> None:
        """The job's segments are entering the model: one more attempt at its current segment (or the first
        at a new one), without touching its progress."""
    def list(self, *, status: JobStatus | None = None, owner: str | None = None, limit: int = 50,
             offset: int = 0) -> list[Job]:
        """Jobs newest first, of one status and one owner when given (None: any)."""
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


class StoreUnavailable(Exception):
    """The job store cannot be written: a job accepted now would be lost, so none is."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the job store is unavailable ({reason}); retry shortly")
        self.reason = reason


class JobInterrupted(Exception):
    """A runner stopped because the queue asked it to (the server is stopping), not because the job failed."""


class JobControl:
    """What a running job may do besides returning: report progress, and ask whether it should stop or pause.

    It starts from the job's stored progress: a resumed job goes on from its last finished segment.
    """

    def __init__(self, queue: JobQueue, job: Job) -> None:
        self._queue = queue
        self.job_id = job.id
        self._async = job.kind is JobKind.ASYNC
        self.progress = job.progress  # the latest, also when the store could not take it
        self._pieces: list[dict[str, Any]] = list(job.progress.partial)

    def report(self, segments_done: int, segments_total: int | None, audio_seconds_done: float,
               piece: dict[str, Any] | None = None) -> None:
        """A segment is done (with its transcribed piece, unless it was silent): persist it for a resume."""
        if piece is not None:
            self._pieces.append(piece)
        self.progress = Progress(segments_done, segments_total, audio_seconds_done, tuple(self._pieces))
        # A progress write that fails costs a resume some segments, not the job: it goes on.
        self._queue._store_call(lambda: self._queue.store.update_progress(self.job_id, self.progress),
                                f"saving the progress of job {self.job_id}", raise_error=False)

    def should_stop(self) -> bool:
        """Stop now: the job was cancelled, or the server is stopping and cannot wait any longer."""
        return self._queue.cancel_requested(self.job_id) or self._queue._aborting

    def should_pause(self) -> bool:
        """Finish the segments already handed to the model, then stop: the server is stopping, and this async
        job goes on from there at the next start."""
        return self._async and self._queue._stopping


class JobOutcome(NamedTuple):
    result: dict[str, Any]
    output_file: str | None = None
    output_error: str | None = None  # the transcript is fine, but its file under outputs/ could not be written


class JobRunner(Protocol):
    def __call__(self, job: Job, control: JobControl) -> JobOutcome | tuple[dict[str, Any], str | None]:
        """Run ``job`` (from ``control.progress`` on); return its outcome. Raise to fail it, or raise
        :class:`JobInterrupted` when ``control`` asked it to stop or pause."""


FailureMapper = Callable[[BaseException], JobFailure]

INTERRUPTED = JobFailure("interrupted: the server stopped while this job was running; submit it again",
                         "interrupted", 503)
UPLOAD_GONE = JobFailure("interrupted: the server stopped while this job was running, and its upload is gone; "
                         "submit it again", "interrupted", 503)
MAX_ATTEMPTS = 3  # runs in the model at the same segment, each ended by the process dying, before a job fails
STORE_RETRY_SECONDS = (0.2, 5.0)  # first and longest wait between tries of a store write that failed
ABORT_SECONDS = 2.0  # after the graceful timeout, how long stopped jobs get to record how they ended


def crash_loop(job: Job) -> JobFailure:
    return JobFailure(f"the server stopped {job.attempts} times while transcribing segment {job.attempt_from + 1} "
                      "of this job, so it is not resumed again; see the server log", "crash_loop", 500)


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

    Jobs outlive the process. Each finished segment is in the store as it completes; at the next start an
    unfinished async job (queued, running when the process died, or paused by a shutdown) runs again from
    its first unfinished segment, unless the process died ``MAX_ATTEMPTS`` times while the job's segments
    were in the model at the same segment (:meth:`count_attempts`). A synchronous job's client is gone
    after a restart: such a job is failed as interrupted.

    A job thread never dies of a store error: a job it cannot read or start waits in the queue and is tried
    again; a final record it cannot write is answered to a waiting client from memory and written again
    until the store takes it (its upload is kept until then). Meanwhile :attr:`store_problem` says why, and
    :meth:`submit` refuses work with :class:`StoreUnavailable` when the store cannot record it.
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
        self._stopping = False  # no new work; running async jobs pause at their next segment
        self._aborting = False  # past the graceful deadline: every running job stops now
        self._stopped = threading.Event()  # wakes job threads waiting to retry the store
        self._store_problem: str | None = None
        self._controls: dict[str, JobControl] = {}  # the running jobs' controls, with their latest progress
        self._in_model: dict[str, int] = {}  # running job -> the segment its attempt was last counted at
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

    @property
    def stopping(self) -> bool:
        return self._stopping

    def retry_after(self) -> int:
        """Seconds until a place in the queue is likely to be free."""
        return max(1, min(3600, round(self._average_seconds / self.concurrency)))

    @property
    def store_problem(self) -> str | None:
        """Why the last write to the job store failed, until one succeeds again."""
        return self._store_problem

    def check_store(self) -> str | None:
        """After a failed write, try a small one: the store may have recovered (space freed, Redis back)."""
        if self._store_problem is not None:
            self._store_call(self.store.probe, "probing the job store", raise_error=False)
        return self._store_problem

    def _store_call(self, action: Callable[[], T], what: str, *, write: bool = True,
                    raise_error: bool = True) -> T | None:
        """Call the store, keeping :attr:`store_problem` up to date (a read that works proves nothing about
        writes: a full disk still reads)."""
        try:
            result = action()
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if self._store_problem != reason:
                log.error("job store error while %s: %s", what, reason)
            self._store_problem = reason
            if raise_error:
                raise
            return None
        if write:
            self._store_problem = None
        return result

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Recover what a previous process left behind, then start the job threads."""
        if self._started:
            return
        self._recover()
        self._started = True
        for worker in self._workers:
            worker.start()

    def _recover(self) -> None:
        """Unfinished async jobs are queued again (a running one resumes where it was); sync ones, whose
        client is gone, are failed as interrupted."""
        requeued = resumed = failed = 0
        for job in sorted(self.store.unfinished(), key=lambda j: j.created_at):
            failure = None
            if job.kind is not JobKind.ASYNC:
                failure = INTERRUPTED
            elif not job.input_path.exists():
                failure = UPLOAD_GONE
            elif job.stage == "running" and job.attempts >= MAX_ATTEMPTS \
                    and job.progress.segments_done == job.attempt_from:
                failure = crash_loop(job)
            if failure is not None:
                self._finish(replace(job, status=JobStatus.FAILED, stage="done", completed_at=now(), failure=failure))
                failed += 1
                continue
            self._pending.append(job.id)
            self._tickets[job.id] = _Ticket()
            if job.progress.segments_done or job.stage == "running":
                resumed += 1
            else:
                requeued += 1
        if requeued or resumed or failed:
            log.info("jobs from the last run: %d queued again, %d resumed at their last finished segment, "
                     "%d failed", requeued, resumed, failed)

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking work, and give the running jobs up to ``timeout`` seconds.

        Waiting sync jobs are answered as interrupted (503) at once; queued async jobs stay queued for the next
        start. Running async jobs finish the segments the model already has, then pause: their progress is
        in the store and they go on at the next start. Running sync jobs may finish within the timeout (their
        client gets the transcript); past it, every job still running is stopped: sync ones are answered as
        interrupted, async ones are left to resume.
        """
        with self._cond:
            self._stopping = True
            waiting = [(job_id, self._tickets.pop(job_id, None)) for job_id in self._pending]
            self._pending.clear()
            self._cond.notify_all()
        self._stopped.set()
        for job_id, ticket in waiting:
            job = self._store_call(lambda job_id=job_id: self.store.get(job_id), f"reading job {job_id}",
                                   write=False, raise_error=False)
            if job is not None and job.kind is JobKind.SYNC:
                # Nobody will wait for it after the restart: fail it now instead of running it later.
                job = replace(job, status=JobStatus.FAILED, stage="done", completed_at=now(), failure=INTERRUPTED)
                self._store_call(lambda job=job: self._finish(job), f"failing job {job_id}", raise_error=False)
            if ticket is not None:
                ticket.job = job
                ticket.done.set()
        if not self._started:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        self._join(deadline)
        if any(worker.is_alive() for worker in self._workers):
            log.warning("graceful timeout: stopping the %d jobs still running", len(self.running_jobs))
            self._aborting = True
            self._join(time.monotonic() + ABORT_SECONDS)  # they stop within a poll (0.1 s) of the pipeline

    def _join(self, deadline: float | None) -> None:
        for worker in self._workers:
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    # -- submitting, waiting, cancelling ---------------------------------------------------------------

    def submit(self, job: Job) -> Job:
        """Queue ``job``; raise :class:`QueueFull` when ``max_queued`` jobs already wait, :class:`ShuttingDown`
        once :meth:`stop` was called, :class:`StoreUnavailable` when the store cannot record it."""
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the server is shutting down; retry in a minute")
            if len(self._pending) + self._reserved >= self.max_queued:
                raise QueueFull(len(self._pending), self.retry_after())
            self._reserved += 1  # a place in the queue, held while the record is written
        try:
            # Outside the lock: a slow store (Redis restarting) must not stall status polls and other submits.
            self._store_call(lambda: self.store.add(job), f"recording job {job.id}")
        except Exception as exc:
            with self._cond:
                self._reserved -= 1
            raise StoreUnavailable(self._store_problem or f"{type(exc).__name__}: {exc}") from exc
        with self._cond:
            self._reserved -= 1  # in the same step as taking the place in the queue: never over max_queued
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
        """Block until the job has finished; return its final record (None on timeout). Raises
        :class:`ShuttingDown` when the server stopped before the job could start, :class:`StoreUnavailable`
        when its record could not be read."""
        with self._cond:
            ticket = self._tickets.get(job_id)
        if ticket is None:
            job = self.store.get(job_id)
            return job if job is not None and job.finished else None
        if not ticket.done.wait(timeout):
            return None
        if ticket.job is None:  # answered without a record: the job could not even be read or started
            if self._stopping:
                raise ShuttingDown("interrupted: the server is shutting down; retry in a minute")
            raise StoreUnavailable(self._store_problem or "the job's record is gone")
        return ticket.job

    def cancel(self, job_id: str, reason: str = "cancelled by request") -> Job | None:
        """Cancel a queued job at once, or a running one at its next segment. Returns the job's record."""
        job = self.store.get(job_id)  # outside the lock, like every store call
        if job is None or job.finished:
            return job
        with self._cond:
            queued = job_id in self._pending
            position, ticket = 0, None
            if queued:
                position = self._pending.index(job_id)
                del self._pending[position]
                ticket = self._tickets.pop(job_id, None)
            elif self._stopping and job_id not in self._running:
                queued = True  # queued or paused for the next start: nothing runs it now, cancel it in the store
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
                if not self._stopping:
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

    def count_attempts(self, job_ids: Iterable[str]) -> None:
        """Segments of these jobs are about to enter the model (the batch runner says so): should the process
        die now, each may be the cause. Counted in the store once per job, run of the process and segment."""
        for job_id in job_ids:
            with self._cond:
                control = self._controls.get(job_id)
                if control is None or self._in_model.get(job_id) == control.progress.segments_done:
                    continue
                self._in_model[job_id] = control.progress.segments_done
            self._store_call(lambda job_id=job_id: self.store.count_attempt(job_id),
                             f"counting an attempt of job {job_id}", raise_error=False)

    # -- the job threads -------------------------------------------------------------------------------

    def _work(self) -> None:
        delay = STORE_RETRY_SECONDS[0]
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job_id = self._pending.popleft()
                ticket = self._tickets.get(job_id)
                self._running.append(job_id)
            started = False
            try:
                job = self._start(job_id)
                started = True
                if job is not None and not job.finished:
                    if self.cancel_requested(job_id):  # cancelled while its start was being retried
                        job = self._finish_run(replace(job, status=JobStatus.CANCELLED, stage="done",
                                                       completed_at=now(), failure=JobFailure(
                                                           "cancelled by request", "cancelled", 409)), ticket)
                    else:
                        job = self._finish_run(self._execute(job), ticket)
            except Exception:  # only a store error starting the job: it stays queued, and is tried again
                job = None
            finally:
                with self._cond:
                    self._running.remove(job_id)
                    self._in_model.pop(job_id, None)
                    self._controls.pop(job_id, None)
                    if not started and not self._stopping:
                        self._pending.appendleft(job_id)  # a cancel meanwhile stays recorded for its next try
                        self._cond.notify()
                    else:
                        self._cancel.discard(job_id)
                        self._tickets.pop(job_id, None)
            if started:
                delay = STORE_RETRY_SECONDS[0]
                if ticket is not None:
                    ticket.job = job
                    ticket.done.set()
                continue
            if self._stopping and ticket is not None:
                ticket.done.set()  # no record to answer with: its waiting client gets 503 (see wait)
            self._stopped.wait(delay)
            delay = min(delay * 2, STORE_RETRY_SECONDS[1])

    def _start(self, job_id: str) -> Job | None:
        """The job's record, marked running; raises if the store fails."""
        job = self._store_call(lambda: self.store.get(job_id), f"reading job {job_id}", write=False)
        if job is None or job.finished:
            return job
        job = replace(job, stage="running", started_at=job.started_at or now())
        self._store_call(lambda: self.store.update(job), f"starting job {job_id}")
        return job

    def _execute(self, job: Job) -> Job:
        """Run the job; its outcome as the record to store (never raises)."""
        started = time.monotonic()
        control = JobControl(self, job)
        with self._cond:
            self._controls[job.id] = control
        try:
            outcome = JobOutcome(*self._runner(job, control))
            job = replace(job, status=JobStatus.COMPLETED, stage="done", completed_at=now(), result=outcome.result,
                          output_file=outcome.output_file, output_error=outcome.output_error,
                          progress=control.progress)
        except Exception as exc:  # any failure fails this job, never the thread
            job = replace(job, progress=control.progress)
            if self.cancel_requested(job.id):
                job = replace(job, status=JobStatus.CANCELLED, stage="done", completed_at=now(),
                              failure=JobFailure("cancelled while running", "cancelled", 409))
                log.info("job %s cancelled", job.id)
            elif self._stopping and job.kind is JobKind.ASYNC and isinstance(exc, JobInterrupted):
                # Paused by the shutdown, not killed: no attempt is counted against it.
                log.info("job %s paused at segment %d for the next start", job.id, job.progress.segments_done)
                return replace(job, stage="queued", attempts=0, attempt_from=job.progress.segments_done)
            elif self._stopping and isinstance(exc, JobInterrupted):
                job = replace(job, status=JobStatus.FAILED, stage="done", completed_at=now(), failure=INTERRUPTED)
            else:
                failure = self._failure_of(exc)
                if failure.http_status >= 500:
                    log.error("job %s failed: %s", job.id, failure.message, exc_info=exc)
                else:
                    log.info("job %s failed: %s", job.id, failure.message)
                job = replace(job, status=JobStatus.FAILED, stage="done", completed_at=now(), failure=failure)
        with self._cond:
            self._average_seconds = 0.8 * self._average_seconds + 0.2 * (time.monotonic() - started)
        return job

    def _finish_run(self, job: Job, ticket: _Ticket | None) -> Job:
        """Store the run's outcome, trying again until the store takes it; a waiting client is answered from
        memory meanwhile. If the server stops first, the record stays unfinished and the job is resumed (or,
        sync, failed as interrupted) at the next start: its upload is kept for that."""
        delay = STORE_RETRY_SECONDS[0]
        while True:
            try:
                return self._finish(job)
            except Exception:
                if ticket is not None and not ticket.done.is_set():
                    ticket.job = job
                    ticket.done.set()
                if self._stopping:
                    log.error("job %s: its record could not be saved before the server stopped", job.id)
                    return job
                self._stopped.wait(delay)
                delay = min(delay * 2, STORE_RETRY_SECONDS[1])

    def _finish(self, job: Job) -> Job:
        """Store the record; once a job has ended, release what it held (its upload)."""
        self._store_call(lambda: self.store.update(job), f"saving job {job.id}")
        if job.finished and self._on_finished is not None:
            try:
                self._on_finished(job)
            except Exception:
                log.exception("cleanup after job %s failed", job.id)
        return job
