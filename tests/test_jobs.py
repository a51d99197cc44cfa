"""JobQueue on each job store (SQLite, and Redis for scale-out), with test-double runners (the app tests run
the real pipeline)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from serve.jobs import (
    Job,
    JobControl,
    JobFailure,
    JobKind,
    JobQueue,
    JobStatus,
    JobStore,
    Progress,
    QueueFull,
    ShuttingDown,
    new_job_id,
)


def failure_of(exc: BaseException) -> JobFailure:
    return JobFailure(str(exc), "test_failure", 500)


def job(tmp_path: Path, name: str = "a.mp3", kind: JobKind = JobKind.ASYNC) -> Job:
    upload = tmp_path / f"upload-{new_job_id()}"
    upload.write_bytes(b"audio")
    return Job(id=new_job_id(), kind=kind, input_path=upload, filename=name, params={"segment_duration": 60})


def quick(result: str = "ok"):  # type: ignore[no-untyped-def]
    def runner(j: Job, control: JobControl):  # type: ignore[no-untyped-def]
        return {"text": f"{result} {j.filename}"}, f"{j.filename}.txt"

    return runner


def test_store_round_trips_every_field(store: JobStore, tmp_path: Path) -> None:
    original = replace(job(tmp_path, "会议.mp3"), audio_duration=12.5, status=JobStatus.FAILED, stage="done",
                       started_at=datetime.now(), completed_at=datetime.now(), progress=Progress(2, 3, 8.0),
                       result={"pieces": [{"text": "你好"}]}, output_file="x.txt", output_error="disk full",
                       failure=JobFailure("bad", "code", 415), attempts=2, attempt_from=5)
    store.add(original)
    assert store.get(original.id) == original
    assert store.get("missing") is None


def test_jobs_run_in_order_one_at_a_time(store: JobStore, tmp_path: Path) -> None:
    order = []

    def runner(j: Job, control: JobControl):  # type: ignore[no-untyped-def]
        order.append(j.filename)
        time.sleep(0.01)
        return {"n": j.filename}, None

    queue = JobQueue(store, runner, failure_of)
    queue.start()
    jobs = [queue.submit(job(tmp_path, f"{i}.mp3")) for i in range(5)]
    finished = [queue.wait(j.id, timeout=5) for j in jobs]
    assert [f.status for f in finished] == [JobStatus.COMPLETED] * 5
    assert order == [f"{i}.mp3" for i in range(5)]
    assert [store.get(j.id).result for j in jobs] == [{"n": f"{i}.mp3"} for i in range(5)]
    queue.stop()


def test_a_failing_job_fails_alone(store: JobStore, tmp_path: Path) -> None:
    def runner(j: Job, control: JobControl):  # type: ignore[no-untyped-def]
        if j.filename == "bad.mp3":
            raise ValueError("boom")
        return {}, None

    finished_hook: list[Job] = []
    queue = JobQueue(store, runner, failure_of, on_finished=finished_hook.append)
    queue.start()
    bad, good = queue.submit(job(tmp_path, "bad.mp3")), queue.submit(job(tmp_path, "good.mp3"))
    assert queue.wait(bad.id, 5).failure == JobFailure("boom", "test_failure", 500)
    assert queue.wait(good.id, 5).status is JobStatus.COMPLETED
    assert [j.filename for j in finished_hook] == ["bad.mp3", "good.mp3"]
    queue.stop()


def test_queue_is_bounded(store: JobStore, tmp_path: Path) -> None:
    gate = threading.Event()

    def runner(j: Job, control: JobControl):  # type: ignore[no-untyped-def]
        gate.wait(5)
        return {}, None

    queue = JobQueue(store, runner, failure_of, max_queued=2)
    queue.start()
    first = queue.submit(job(tmp_path))
    while queue.running_job != first.id:
        time.sleep(0.01)
    queue.submit(job(tmp_path))
    queue.submit(job(tmp_path))
    with pytest.raises(QueueFull) as exc:
        queue.submit(job(tmp_path))
    assert exc.value.retry_after >= 1 and queue.depth == 2
    gate.set()
    queue.stop()


def test_progress_reports_reach_the_store(store: JobStore, tmp_path: Path) -> None:
    def runner(j: Job, control: JobControl):  # type: ignore[no-untyped-def]
        for i in range(1, 4):
            control.report(i, 3, i * 10.0)
        return {}, None

    queue = JobQueue(store, runner, failure_of)
    queue.start()
    submitted = queue.submit(job(tmp_path))
    assert queue.wait(submitted.id, 5).progress == Progress(3, 3, 30.0)
    queue.stop()


def test_cancel_a_queued_job_at_once_and_a_running_one_between_segments(store: JobStore,
                                                                       tmp_path: Path) -> None:
    segments = []

    def runner(j: Job, control: JobControl):  # type: ignore[no-untyped-def]
        for i in range(200):
            if control.should_stop():
                raise RuntimeError("stopped")
            segments.append(i)
            time.sleep(0.01)
        return {}, None

    removed: list[Job] = []
    queue = JobQueue(store, runner, failure_of, on_finished=removed.append)
    queue.start()
    running, waiting = queue.submit(job(tmp_path)), queue.submit(job(tmp_path))
    while queue.running_job != running.id:
        time.sleep(0.01)
    cancelled = queue.cancel(waiting.id)
    assert cancelled.status is JobStatus.CANCELLED and queue.depth == 0
    assert queue.cancel(running.id).status is JobStatus.PROCESSING  # stops at its next segment
    final = queue.wait(running.id, 5)
    assert final.status is JobStatus.CANCELLED and len(segments) < 200
    assert {j.id for j in removed} == {running.id, waiting.id}  # both uploads cleaned up
    assert queue.cancel("unknown") is None
    queue.stop()


class StaleReadStore:
    """Test double around a real store: the next ``get`` returns a given (out-of-date) record."""

    def __init__(self, inner: JobStore) -> None:
        self.inner = inner
        self.stale: Job | None = None

    def get(self, job_id: str) -> Job | None:
        stale, self.stale = self.stale, None
        return stale or self.inner.get(job_id)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)


def test_a_job_that_finishes_while_being_cancelled_keeps_its_result(store: JobStore, tmp_path: Path) -> None:
    stale = StaleReadStore(store)
    queue = JobQueue(stale, quick(), failure_of)
    queue.start()
    done = queue.wait(queue.submit(job(tmp_path)).id, 5)
    assert done.status is JobStatus.COMPLETED
    stale.stale = replace(done, status=JobStatus.PROCESSING, stage="running", completed_at=None)  # read just before
    assert queue.cancel(done.id).status is JobStatus.COMPLETED
    assert not queue.cancel_requested(done.id)  # no cancel left behind for a job that is gone
    # A job recorded but not queued yet (submit writes the record first) keeps its cancel for when it runs.
    arriving = job(tmp_path)
    store.add(arriving)
    assert queue.cancel(arriving.id).status is JobStatus.PROCESSING and queue.cancel_requested(arriving.id)
    queue.stop()


class SlowThenFailingStore:
    """Test double around a real store: one ``add`` can be held (a slow Redis), one ``update`` can fail (Redis
    gone)."""

    def __init__(self, inner: JobStore) -> None:
        self.inner = inner
        self.hold_next_add = False
        self.release = threading.Event()
        self.add_entered = threading.Event()
        self.fail_next_update = False

    def add(self, j: Job) -> None:
        if self.hold_next_add:
            self.hold_next_add = False
            self.add_entered.set()
            self.release.wait(5)
        self.inner.add(j)

    def update(self, j: Job) -> None:
        if self.fail_next_update:
            self.fail_next_update = False
            raise ConnectionError("store unreachable")
        self.inner.update(j)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)


def test_a_slow_store_stalls_nobody_and_a_failed_cancel_keeps_the_job_queued(store: JobStore,
                                                                           tmp_path: Path) -> None:
    gate = threading.Event()

    def runner(j: Job, control: JobControl):  # type: ignore[no-untyped-def]
        gate.wait(5)
        return {}, None

    slow = SlowThenFailingStore(store)
    queue = JobQueue(slow, runner, failure_of, max_queued=2)
    queue.start()
    running = queue.submit(job(tmp_path))
    while queue.running_job != running.id:
        time.sleep(0.01)
    slow.hold_next_add = True
    held = threading.Thread(target=queue.submit, args=(job(tmp_path),))
    held.start()
    assert slow.add_entered.wait(5)
    # While that record is being written, the queue answers others and counts the held place as taken.
    waiting = queue.submit(job(tmp_path))
    with pytest.raises(QueueFull):
        queue.submit(job(tmp_path))
    assert queue.depth == 1
    slow.release.set()
    held.join(5)
    assert queue.depth == 2

    slow.fail_next_update = True
    with pytest.raises(ConnectionError):
        queue.cancel(waiting.id)
    assert queue.depth == 2 and store.get(waiting.id).stage == "queued"  # still queued, not lost
    assert queue.cancel(waiting.id).status is JobStatus.CANCELLED and queue.depth == 1
    gate.set()
    queue.stop()


def test_restart_resumes_async_jobs_and_fails_sync_ones(open_store: Callable[[], JobStore], tmp_path: Path) -> None:
    gate = threading.Event()

    def blocked(j: Job, control: JobControl):  # type: ignore[no-untyped-def]
        control.report(1, 3, 10.0, {"start": 0.0, "end": 9.5, "text": "first"})
        gate.wait(10)
        return {}, None

    first = JobQueue(open_store(), blocked, failure_of)
    first.start()
    running = first.submit(job(tmp_path, "running.mp3"))
    while first.store.get(running.id).progress.segments_done != 1:
        time.sleep(0.01)
    waiting_async = first.submit(job(tmp_path, "queued.mp3"))
    waiting_sync = first.submit(job(tmp_path, "sync.mp3", JobKind.SYNC))
    gone = first.submit(job(tmp_path, "gone.mp3"))
    gone.input_path.unlink()
    done = job(tmp_path, "done.mp3")
    first.store.add(replace(done, status=JobStatus.COMPLETED, stage="done", completed_at=datetime.now(),
                            result={"pieces": []}, output_file="done.txt"))
    # The process "dies": no stop(), the running job never finishes in this store.

    ran = []

    def resumed(j: Job, control: JobControl):  # type: ignore[no-untyped-def]
        ran.append((j.filename, control.progress.segments_done, [p["text"] for p in control.progress.partial]))
        return {"pieces": list(control.progress.partial)}, None

    second = JobQueue(open_store(), resumed, failure_of)
    second.start()
    assert second.wait(running.id, 5).status is JobStatus.COMPLETED
    assert second.wait(waiting_async.id, 5).status is JobStatus.COMPLETED
    # In arrival order; the running one goes on from its last finished segment, with its piece.
    assert ran == [("running.mp3", 1, ["first"]), ("queued.mp3", 0, [])]
    assert second.store.get(running.id).result == {"pieces": [{"start": 0.0, "end": 9.5, "text": "first"}]}
    assert second.store.get(waiting_sync.id).failure.code == "interrupted"  # its client is gone
    lost = second.store.get(gone.id)
    assert lost.failure.code == "interrupted" and "upload is gone" in lost.failure.message
    assert second.store.get(done.id).status is JobStatus.COMPLETED  # results stay retrievable
    gate.set()
    second.stop()
    first.stop()


def test_stop_leaves_async_jobs_queued_and_fails_waiting_sync_ones(store: JobStore, tmp_path: Path) -> None:
    started = threading.Event()

    def runner(j: Job, control: JobControl):  # type: ignore[no-untyped-def]
        started.set()
        time.sleep(0.3)
        return {}, None

    queue = JobQueue(store, runner, failure_of)
    queue.start()
    running = queue.submit(job(tmp_path))
    started.wait(2)
    later, sync = queue.submit(job(tmp_path)), queue.submit(job(tmp_path, kind=JobKind.SYNC))
    queue.stop(timeout=5)
    assert store.get(running.id).status is JobStatus.COMPLETED
    assert store.get(later.id).status is JobStatus.PROCESSING and store.get(later.id).stage == "queued"
    assert store.get(sync.id).failure.code == "interrupted"
    with pytest.raises(ShuttingDown):
        queue.submit(job(tmp_path))


def test_listing_and_expiry(store: JobStore, tmp_path: Path) -> None:
    old = replace(job(tmp_path), status=JobStatus.COMPLETED, stage="done",
                  created_at=datetime.now() - timedelta(days=10), completed_at=datetime.now() - timedelta(days=9))
    new = job(tmp_path)
    store.add(old)
    store.add(new)
    assert [j.id for j in store.list()] == [new.id, old.id]
    assert [j.id for j in store.list(status=JobStatus.COMPLETED)] == [old.id]
    assert [j.id for j in store.finished_before(datetime.now() - timedelta(days=7))] == [old.id]
    store.delete([old.id])
    assert store.get(old.id) is None and store.count() == 1
