"""JobQueue and the in-memory store, with a test-double runner (the app tests run the real pipeline)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from serve.jobs import InMemoryJobStore, Job, JobFailure, JobQueue, JobStatus, new_job_id


def failure_of(exc: BaseException) -> JobFailure:
    return JobFailure(str(exc), "test_failure", 500)


def job(name: str = "a.mp3") -> Job:
    return Job(id=new_job_id(), input_path=Path("/nonexistent") / name, filename=name, params=None)


def test_jobs_run_in_order_one_at_a_time() -> None:
    running = []
    overlap = []
    lock = threading.Lock()

    def runner(j: Job):  # type: ignore[no-untyped-def]
        with lock:
            running.append(j.filename)
            overlap.append(len(running) - len([r for r in running if r == "done"]))
        time.sleep(0.02)
        return f"result of {j.filename}", f"{j.filename}.txt"

    queue = JobQueue(InMemoryJobStore(), runner, failure_of)
    queue.start()
    jobs = [queue.submit(job(f"{i}.mp3")) for i in range(5)]
    finished = [queue.wait(j.id, timeout=5) for j in jobs]
    assert [f.status for f in finished] == [JobStatus.COMPLETED] * 5
    assert running == [f"{i}.mp3" for i in range(5)]
    assert [f.result for f in finished] == [f"result of {i}.mp3" for i in range(5)]
    assert all(f.started_at and f.completed_at and f.completed_at >= f.started_at for f in finished)
    queue.stop()


def test_a_failing_job_fails_alone() -> None:
    def runner(j: Job):  # type: ignore[no-untyped-def]
        if j.filename == "bad.mp3":
            raise ValueError("boom")
        return "ok", None

    finished_hook = []
    queue = JobQueue(InMemoryJobStore(), runner, failure_of, on_finished=finished_hook.append)
    queue.start()
    bad, good = queue.submit(job("bad.mp3")), queue.submit(job("good.mp3"))
    assert queue.wait(bad.id, 5).status is JobStatus.FAILED
    assert queue.wait(bad.id, 5).failure == JobFailure("boom", "test_failure", 500)
    assert queue.wait(good.id, 5).status is JobStatus.COMPLETED
    assert [j.filename for j in finished_hook] == ["bad.mp3", "good.mp3"]
    assert queue.store.get(bad.id).status is JobStatus.FAILED
    queue.stop()


def test_status_is_processing_while_queued_and_running() -> None:
    gate = threading.Event()

    def runner(j: Job):  # type: ignore[no-untyped-def]
        gate.wait(5)
        return "ok", None

    queue = JobQueue(InMemoryJobStore(), runner, failure_of)
    queue.start()
    first, second = queue.submit(job()), queue.submit(job())
    deadline = time.monotonic() + 2
    while queue.store.get(first.id).stage != "running" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert queue.store.get(first.id).status is JobStatus.PROCESSING and queue.store.get(first.id).stage == "running"
    assert queue.store.get(second.id).stage == "queued" and queue.depth == 1
    assert queue.running_job == first.id
    gate.set()
    assert queue.wait(second.id, 5).status is JobStatus.COMPLETED
    queue.stop()


def test_stop_finishes_the_running_job_and_fails_the_queued_ones() -> None:
    started = threading.Event()

    def runner(j: Job):  # type: ignore[no-untyped-def]
        started.set()
        time.sleep(0.3)
        return "ok", None

    queue = JobQueue(InMemoryJobStore(), runner, failure_of)
    queue.start()
    running, waiting = queue.submit(job()), queue.submit(job())
    started.wait(2)
    queue.stop(timeout=5)
    assert queue.store.get(running.id).status is JobStatus.COMPLETED
    interrupted = queue.store.get(waiting.id)
    assert interrupted.status is JobStatus.FAILED and interrupted.failure.code == "interrupted"


def test_store_forgets_only_old_finished_jobs() -> None:
    store = InMemoryJobStore(max_finished=2)
    jobs = [job(str(i)) for i in range(4)]
    for j in jobs:
        store.add(j)
    from dataclasses import replace

    for j in jobs[:3]:
        store.update(replace(j, status=JobStatus.COMPLETED))
    assert store.get(jobs[0].id) is None
    assert store.get(jobs[1].id) and store.get(jobs[2].id) and store.get(jobs[3].id)
