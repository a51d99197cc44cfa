"""JobQueue under faults: a process that dies mid-job (resume, crash loops), a job store that fails at each
call site (test doubles named as such), and shutdown with jobs running. On both job stores."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from serve.jobs import (
    MAX_ATTEMPTS,
    Job,
    JobControl,
    JobInterrupted,
    JobKind,
    JobOutcome,
    JobQueue,
    JobStatus,
    JobStore,
    ShuttingDown,
    StoreUnavailable,
)
from tests.test_jobs import failure_of, job

WAIT = 10.0


def until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class FailingStore:
    """Test double around a real store: each method named in ``failing`` raises (a full disk, a Redis that
    refuses writes) until it is taken out again."""

    def __init__(self, inner: JobStore) -> None:
        self.inner = inner
        self.failing: set[str] = set()
        self.calls: list[str] = []

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        method = getattr(self.inner, name)

        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            self.calls.append(name)
            if name in self.failing:
                raise sqlite3.OperationalError("database or disk is full")
            return method(*args, **kwargs)

        return call


def segments_runner(count: int, *, gate: threading.Event | None = None,
                    seconds_each: float = 0.0) -> Callable[[Job, JobControl], JobOutcome]:
    """A test-double pipeline: ``count`` segments, each reported as done; it honours stop and pause."""

    def run(j: Job, control: JobControl) -> JobOutcome:
        for number in range(control.progress.segments_done + 1, count + 1):
            while gate is not None and not gate.wait(0.05):  # as the pipeline polls while a segment runs
                if control.should_stop():
                    raise JobInterrupted()
            time.sleep(seconds_each)
            if control.should_stop() or control.should_pause():
                raise JobInterrupted()
            control.report(number, count, float(number), {"start": number - 1.0, "end": float(number),
                                                          "text": f"piece {number}"})
        return JobOutcome({"pieces": list(control.progress.partial)}, "out.txt")

    return run


def test_a_job_killed_mid_run_resumes_from_its_last_segment(open_store: Callable[[], JobStore],
                                                            tmp_path: Path) -> None:
    first_gate = threading.Event()
    first_done = threading.Event()

    def dies_after_two(j: Job, control: JobControl) -> JobOutcome:
        for number in (1, 2):
            control.report(number, 4, float(number), {"start": number - 1.0, "end": float(number),
                                                      "text": f"piece {number}"})
        first_done.set()
        first_gate.wait(WAIT)  # the process "dies" here: this run never returns
        raise RuntimeError("never reached")

    first = JobQueue(open_store(), dies_after_two, failure_of)
    first.start()
    accepted = first.submit(job(tmp_path))
    assert first_done.wait(WAIT)

    second = JobQueue(open_store(), segments_runner(4), failure_of)
    second.start()
    finished = second.wait(accepted.id, WAIT)
    assert finished.status is JobStatus.COMPLETED
    assert [p["text"] for p in finished.result["pieces"]] == ["piece 1", "piece 2", "piece 3", "piece 4"]
    assert finished.progress.segments_done == 4
    first_gate.set()
    second.stop()


def in_the_model(queues: list[JobQueue], *, then_report: bool = False) -> Callable[[Job, JobControl], JobOutcome]:
    """A test-double pipeline whose segment enters the model (told to the newest queue, as the batch runner
    does) and never comes back: the process dies there. With ``then_report``, one more segment is done first."""
    never = threading.Event()

    def run(j: Job, control: JobControl) -> JobOutcome:
        if then_report:
            done = control.progress.segments_done + 1
            control.report(done, 10, float(done), None)
        queues[-1].count_attempts([j.id])
        never.wait(WAIT)
        raise RuntimeError("never reached")

    return run


def restart(open_store: Callable[[], JobStore], queues: list[JobQueue], runner) -> JobQueue:  # type: ignore[no-untyped-def]
    """A new process on the same job table (the old one "died": its threads are left blocked)."""
    queue = JobQueue(open_store(), runner, failure_of)
    queues.append(queue)
    queue.start()
    return queue


def attempts(store: JobStore, job_id: str) -> int:
    return store.get(job_id).attempts


def test_a_job_that_keeps_killing_the_process_is_failed_not_resumed(open_store: Callable[[], JobStore],
                                                                    tmp_path: Path) -> None:
    queues: list[JobQueue] = []
    runner = in_the_model(queues)
    accepted = restart(open_store, queues, runner).submit(job(tmp_path))
    for n in range(1, MAX_ATTEMPTS):  # the process dies each time with the job's segment in the model
        until(lambda n=n: attempts(queues[-1].store, accepted.id) == n)
        restart(open_store, queues, runner)
    until(lambda: attempts(queues[-1].store, accepted.id) == MAX_ATTEMPTS)
    last = restart(open_store, queues, segments_runner(1))
    failed = last.store.get(accepted.id)
    assert failed.status is JobStatus.FAILED and failed.failure.code == "crash_loop"
    assert f"{MAX_ATTEMPTS} times" in failed.failure.message and "segment 1" in failed.failure.message


def test_progress_between_crashes_restarts_the_count(open_store: Callable[[], JobStore],
                                                     tmp_path: Path) -> None:
    queues: list[JobQueue] = []
    runner = in_the_model(queues, then_report=True)
    accepted = restart(open_store, queues, runner).submit(job(tmp_path))
    for done in range(1, MAX_ATTEMPTS + 2):
        until(lambda done=done: queues[-1].store.get(accepted.id).attempt_from == done)
        assert attempts(queues[-1].store, accepted.id) == 1  # a new segment each time: a first attempt
        restart(open_store, queues, runner)
    assert open_store().get(accepted.id).status is JobStatus.PROCESSING  # never failed


def test_a_job_not_in_the_model_when_the_process_dies_is_not_counted(open_store: Callable[[], JobStore],
                                                                      tmp_path: Path) -> None:
    queues: list[JobQueue] = []
    started = threading.Event()

    def waits_for_its_turn(j: Job, control: JobControl) -> JobOutcome:  # others have the model
        started.set()
        threading.Event().wait(WAIT)
        raise RuntimeError("never reached")

    accepted = restart(open_store, queues, waits_for_its_turn).submit(job(tmp_path))
    for _ in range(MAX_ATTEMPTS + 1):
        assert started.wait(WAIT)
        started.clear()
        restart(open_store, queues, waits_for_its_turn)
    assert started.wait(WAIT)
    finished = restart(open_store, queues, segments_runner(2))
    assert finished.wait(accepted.id, WAIT).status is JobStatus.COMPLETED


@pytest.mark.parametrize("call_site", ["get", "update"])
def test_a_job_the_store_cannot_read_or_start_waits_and_runs_once_it_can(
        store: JobStore, tmp_path: Path, call_site: str) -> None:
    failing = FailingStore(store)
    queue = JobQueue(failing, segments_runner(2), failure_of, concurrency=1)
    queue.start()
    failing.failing.add(call_site)
    accepted = queue.submit(job(tmp_path))  # recorded by add, which works
    until(lambda: failing.calls.count(call_site) >= 3)  # tried again and again, the thread alive
    assert queue.store_problem is not None and "disk is full" in queue.store_problem
    assert store.get(accepted.id).status is JobStatus.PROCESSING
    failing.failing.clear()
    finished = queue.wait(accepted.id, WAIT)
    assert finished.status is JobStatus.COMPLETED and store.get(accepted.id).status is JobStatus.COMPLETED
    assert queue.store_problem is None
    queue.stop()


def test_progress_the_store_refuses_costs_nothing_but_a_resume(store: JobStore, tmp_path: Path) -> None:
    failing = FailingStore(store)
    failing.failing.add("update_progress")
    queue = JobQueue(failing, segments_runner(3), failure_of)
    queue.start()
    finished = queue.wait(queue.submit(job(tmp_path)).id, WAIT)
    assert finished.status is JobStatus.COMPLETED and finished.progress.segments_done == 3
    assert store.get(finished.id).progress.segments_done == 3  # the final record carries it all
    queue.stop()


def test_a_final_record_the_store_refuses_is_answered_from_memory_and_written_later(
        store: JobStore, tmp_path: Path) -> None:
    failing = FailingStore(store)
    removed: list[str] = []
    gate = threading.Event()
    queue = JobQueue(failing, segments_runner(2, gate=gate), failure_of, on_finished=lambda j: removed.append(j.id))
    queue.start()
    sync = queue.submit(job(tmp_path, kind=JobKind.SYNC))
    until(lambda: queue.running_job == sync.id)
    failing.failing.add("update")
    gate.set()
    answered = queue.wait(sync.id, WAIT)  # the waiting client gets its transcript
    assert answered.status is JobStatus.COMPLETED and len(answered.result["pieces"]) == 2
    assert store.get(sync.id).status is JobStatus.PROCESSING and removed == []  # upload kept for a resume
    with pytest.raises(StoreUnavailable):
        failing.failing.update({"add", "probe"})
        queue.submit(job(tmp_path))
    assert queue.check_store() is not None  # the probe fails too
    failing.failing.clear()
    until(lambda: store.get(sync.id).status is JobStatus.COMPLETED)
    until(lambda: removed != [])  # the upload goes right after the record is written, in the job's thread
    assert removed == [sync.id] and queue.check_store() is None
    queue.stop()


def test_job_threads_survive_more_store_errors_than_there_are_threads(store: JobStore,
                                                                      tmp_path: Path) -> None:
    failing = FailingStore(store)
    queue = JobQueue(failing, segments_runner(1), failure_of, concurrency=2)
    queue.start()
    failing.failing.add("update")
    stuck = [queue.submit(job(tmp_path)) for _ in range(5)]
    until(lambda: failing.calls.count("update") >= 10)
    failing.failing.clear()
    assert all(queue.wait(j.id, WAIT).status is JobStatus.COMPLETED for j in stuck)
    assert queue.wait(queue.submit(job(tmp_path)).id, WAIT).status is JobStatus.COMPLETED
    queue.stop()


def test_shutdown_pauses_running_async_jobs_for_the_next_start(open_store: Callable[[], JobStore],
                                                               tmp_path: Path) -> None:
    gate = threading.Event()
    queue = JobQueue(open_store(), segments_runner(5, gate=gate, seconds_each=0.2), failure_of)
    queue.start()
    accepted = queue.submit(job(tmp_path))
    gate.set()
    until(lambda: queue.store.get(accepted.id).progress.segments_done >= 1)
    queue.stop(timeout=5)
    paused = open_store().get(accepted.id)
    assert paused.status is JobStatus.PROCESSING and paused.stage == "queued" and paused.attempts == 0
    assert 1 <= paused.progress.segments_done < 5 and accepted.input_path.exists()

    again = JobQueue(open_store(), segments_runner(5), failure_of)
    again.start()
    finished = again.wait(accepted.id, WAIT)
    assert [p["text"] for p in finished.result["pieces"]] == [f"piece {n}" for n in range(1, 6)]
    again.stop()


def test_shutdown_lets_a_running_sync_job_finish_and_interrupts_it_past_the_timeout(
        store: JobStore, tmp_path: Path) -> None:
    quick_gate, slow_gate = threading.Event(), threading.Event()
    queue = JobQueue(store, lambda j, c: segments_runner(2, gate=quick_gate if j.filename == "quick.mp3"
                                                         else slow_gate)(j, c), failure_of, concurrency=2)
    queue.start()
    quick = queue.submit(job(tmp_path, "quick.mp3", JobKind.SYNC))
    slow = queue.submit(job(tmp_path, "slow.mp3", JobKind.SYNC))
    until(lambda: len(queue.running_jobs) == 2)
    threading.Timer(0.2, quick_gate.set).start()  # finishes within the timeout; slow never does
    queue.stop(timeout=1.0)
    assert queue.wait(quick.id, 0).status is JobStatus.COMPLETED
    interrupted = queue.wait(slow.id, 0)
    assert interrupted.status is JobStatus.FAILED and interrupted.failure.code == "interrupted"
    slow_gate.set()


def test_a_sync_job_that_cannot_start_before_a_shutdown_is_answered_not_left_waiting(
        store: JobStore, tmp_path: Path) -> None:
    failing = FailingStore(store)
    queue = JobQueue(failing, segments_runner(1), failure_of)
    queue.start()
    failing.failing.add("get")
    sync = queue.submit(job(tmp_path, kind=JobKind.SYNC))
    until(lambda: failing.calls.count("get") >= 2)
    answers: list[BaseException] = []

    def client() -> None:  # waits on the connection, as a synchronous request does
        try:
            queue.wait(sync.id, WAIT)
        except BaseException as exc:
            answers.append(exc)

    waiting = threading.Thread(target=client)
    waiting.start()
    queue.stop(timeout=2)
    waiting.join(WAIT)
    assert not waiting.is_alive() and len(answers) == 1 and isinstance(answers[0], ShuttingDown)


class SlowFailingStarts:
    """Test double around a real store: writing a job as running takes a while and then fails, until
    ``healed``; ``starting`` is set while such a write is under way."""

    def __init__(self, inner: JobStore) -> None:
        self.inner = inner
        self.healed = False
        self.starting = threading.Event()
        self.release = threading.Event()

    def update(self, j: Job) -> None:
        if j.stage == "running" and not self.healed:
            self.starting.set()
            self.release.wait(WAIT)
            raise sqlite3.OperationalError("database or disk is full")
        self.inner.update(j)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)


def test_a_cancel_while_the_start_is_retried_cancels_the_job_instead_of_running_it(
        store: JobStore, tmp_path: Path) -> None:
    flaky = SlowFailingStarts(store)
    ran: list[str] = []
    queue = JobQueue(flaky, lambda j, c: ran.append(j.id) or ({}, None), failure_of)
    queue.start()
    accepted = queue.submit(job(tmp_path))
    assert flaky.starting.wait(WAIT)  # the job thread holds it, writing its start
    assert queue.cancel(accepted.id).status is JobStatus.PROCESSING  # asked to stop: it is not queued now
    flaky.healed = True
    flaky.release.set()
    assert queue.wait(accepted.id, WAIT).status is JobStatus.CANCELLED and ran == []
    queue.stop()


def test_cancelling_a_job_left_for_the_next_start_during_a_shutdown_cancels_it(
        open_store: Callable[[], JobStore], tmp_path: Path) -> None:
    gate = threading.Event()
    queue = JobQueue(open_store(), segments_runner(3, gate=gate), failure_of)
    queue.start()
    running = queue.submit(job(tmp_path))
    until(lambda: queue.running_job == running.id)
    queued = queue.submit(job(tmp_path))
    stopping = threading.Thread(target=queue.stop, args=(5,))
    stopping.start()
    until(lambda: queue.stopping)
    assert queue.cancel(queued.id).status is JobStatus.CANCELLED
    gate.set()
    stopping.join()
    assert open_store().get(queued.id).status is JobStatus.CANCELLED  # not resumed at the next start
