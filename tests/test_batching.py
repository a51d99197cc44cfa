"""Batched generation: identical to one-at-a-time under greedy decoding; batches form across jobs."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from serve.batching import BatchRunner, SegmentOutOfMemory
from serve.engines.qwen2_5_omni import QwenOmniEngine
from serve.generation import EngineOutOfMemory, GenerationOptions, SegmentResult
from serve.scheduler import FairScheduler, Flow
from tests.conftest import form_upload, services_of, wait_until

GREEDY = GenerationOptions(max_new_tokens=24, temperature=0.0, repetition_penalty=1.1)


def clips() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for frequency, seconds in [(200, 1.0), (300, 3.5), (450, 0.4), (600, 7.2), (800, 2.0)]:
        t = np.arange(int(seconds * 16000)) / 16000
        out.append((0.2 * np.sin(2 * np.pi * frequency * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32))
    return out


@pytest.mark.parametrize("which", ["bf16", "awq"])
def test_batch_equals_one_at_a_time_under_greedy(tiny_checkpoint: Path, tiny_awq_checkpoint: Path,
                                                 which: str) -> None:
    engine = QwenOmniEngine.load(tiny_checkpoint if which == "bf16" else tiny_awq_checkpoint, device="cpu")
    audio = clips()
    one_by_one = [engine.transcribe(a, GREEDY) for a in audio]
    assert engine.transcribe_batch(audio, GREEDY) == one_by_one
    assert engine.transcribe_batch(audio[::-1], GREEDY) == one_by_one[::-1]
    engine.close()


def test_cpu_suggests_batches_of_one(tiny_awq_checkpoint: Path) -> None:
    engine = QwenOmniEngine.load(tiny_awq_checkpoint, device="cpu")
    assert engine.suggest_batch_size(60, 8192) == 1
    engine.close()


class RecordingEngine:
    """Test double: records the batches it is given; answers with each clip's length."""

    def __init__(self, delay: float = 0.05, out_of_memory_above: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.limit = out_of_memory_above
        self.limit_samples: int | None = None  # out of memory on a clip longer than this
        self.closed = False

    def generate_batch(self, batch: list[np.ndarray], options: GenerationOptions) -> list[SegmentResult]:
        self.batches.append([b.size for b in batch])
        time.sleep(self.delay)
        if (self.limit is not None and len(batch) > self.limit) or \
                (self.limit_samples is not None and any(b.size > self.limit_samples for b in batch)):
            raise EngineOutOfMemory("simulated")
        if any(b.size == 13 for b in batch):
            raise ValueError("bad clip")
        return [SegmentResult(parts=(f"{b.size}:{options.temperature}",)) for b in batch]

    def close(self) -> None:
        self.closed = True


def text(future) -> list[str]:  # type: ignore[no-untyped-def]
    return list(future.result(5).parts)


def runner_with(engine: RecordingEngine, batch_size: int) -> tuple[BatchRunner, FairScheduler, Flow]:
    scheduler = FairScheduler()
    return BatchRunner(engine, batch_size, scheduler), scheduler, scheduler.open_flow("job")


def submit(scheduler: FairScheduler, flow: Flow, size: int, options: GenerationOptions = GREEDY):  # type: ignore[no-untyped-def]
    return scheduler.submit(flow, np.zeros(size), options).future


def test_waiting_segments_are_batched_up_to_the_limit() -> None:
    engine = RecordingEngine()
    runner, scheduler, flow = runner_with(engine, batch_size=3)
    first = submit(scheduler, flow, 1)  # runs alone while the others arrive
    time.sleep(0.01)
    rest = [submit(scheduler, flow, n) for n in (2, 3, 4, 5)]
    assert text(first) == ["1:0.0"] and [text(f) for f in rest] == [["2:0.0"], ["3:0.0"], ["4:0.0"], ["5:0.0"]]
    assert engine.batches == [[1], [2, 3, 4], [5]]
    assert runner.largest_batch == 3
    runner.close()
    assert engine.closed


def test_the_runner_takes_batches_in_the_schedulers_fair_order() -> None:
    engine = RecordingEngine(delay=0)
    scheduler = FairScheduler()
    long_a, long_b = scheduler.open_flow("A"), scheduler.open_flow("B")
    for _ in range(3):  # clip sizes tell the jobs apart: A 1, B 2, the waiting client 3
        submit(scheduler, long_a, 1)
        submit(scheduler, long_b, 2)
    waiting_client = scheduler.open_flow("S", waiting_client=True)
    futures = [submit(scheduler, waiting_client, 3) for _ in range(2)]
    runner = BatchRunner(engine, 2, scheduler)
    assert [text(f) for f in futures] == [["3:0.0"], ["3:0.0"]]
    wait_until(lambda: len(engine.batches) == 4)
    assert engine.batches == [[3, 3], [1, 2], [1, 2], [1, 2]]
    runner.close()


def test_the_jobs_of_each_batch_are_told_before_the_model_runs_it() -> None:
    engine = RecordingEngine(delay=0)
    scheduler = FairScheduler()
    told: list[tuple[list, int]] = []
    scheduler.on_batch(lambda jobs: told.append((jobs, len(engine.batches))))  # how many batches had run then
    a, b = scheduler.open_flow("A"), scheduler.open_flow("B")
    futures = [submit(scheduler, a, 1), submit(scheduler, a, 1), submit(scheduler, b, 2)]
    runner = BatchRunner(engine, 3, scheduler)
    assert all(f.result(5) for f in futures)
    assert told == [(["A", "B"], 0)]  # each job once, before its batch reached the engine
    runner.close()


def test_different_settings_are_never_mixed_in_a_batch() -> None:
    engine = RecordingEngine()
    runner, scheduler, flow = runner_with(engine, batch_size=8)
    greedy_job, sampled_job = flow, scheduler.open_flow("other job")
    blocker = submit(scheduler, greedy_job, 1)
    time.sleep(0.01)
    sampled = GenerationOptions(max_new_tokens=24, temperature=0.7)
    futures = [submit(scheduler, greedy_job if n % 2 else sampled_job, n, GREEDY if n % 2 else sampled)
               for n in (2, 3, 4, 5)]
    blocker.result(5)
    assert [text(f) for f in futures] == [["2:0.7"], ["3:0.0"], ["4:0.7"], ["5:0.0"]]
    assert sorted(engine.batches[1:]) == [[2, 4], [3, 5]]
    runner.close()


def test_out_of_memory_in_a_batch_retries_its_segments_alone_then_in_halves() -> None:
    engine = RecordingEngine(out_of_memory_above=1)
    runner, scheduler, flow = runner_with(engine, batch_size=4)
    blocker = submit(scheduler, flow, 1)
    time.sleep(0.01)
    futures = [submit(scheduler, flow, n) for n in (2, 3)]
    assert text(blocker) == ["1:0.0"] and [text(f) for f in futures] == [["2:0.0"], ["3:0.0"]]
    assert engine.batches[1:] == [[2, 3], [2], [3]]
    engine.limit_samples = 10  # 16 samples do not fit alone, their halves of 8 do; halves of 40 (20) do not
    assert text(submit(scheduler, flow, 16)) == ["8:0.0", "8:0.0"]
    with pytest.raises(SegmentOutOfMemory, match="even split in two"):
        submit(scheduler, flow, 40).result(5)
    runner.close()


def test_a_failing_batch_fails_its_callers_and_the_runner_goes_on() -> None:
    engine = RecordingEngine(delay=0)
    runner, scheduler, flow = runner_with(engine, batch_size=2)
    bad = submit(scheduler, flow, 13)
    with pytest.raises(ValueError):
        bad.result(5)
    assert text(submit(scheduler, flow, 7)) == ["7:0.0"]
    runner.close()
    # What arrives after an unload waits for the next runner on the same scheduler (the next load).
    waiting = submit(scheduler, flow, 5)
    time.sleep(0.05)
    assert not waiting.done()
    second = BatchRunner(engine, 2, scheduler)
    assert text(waiting) == ["5:0.0"]
    second.close()


def test_a_segment_that_fails_a_shared_batch_fails_only_its_own_job() -> None:
    engine = RecordingEngine()
    runner, scheduler, _ = runner_with(engine, batch_size=3)
    first = submit(scheduler, scheduler.open_flow("warm-up"), 1)  # runs alone while the others arrive
    time.sleep(0.01)
    bad = submit(scheduler, scheduler.open_flow("job A"), 13)
    good = [submit(scheduler, scheduler.open_flow(f"job {name}"), size) for name, size in (("B", 5), ("C", 6))]
    assert text(first) == ["1:0.0"]
    assert [text(future) for future in good] == [["5:0.0"], ["6:0.0"]]
    with pytest.raises(ValueError):
        bad.result(5)
    assert engine.batches[1:] == [[13, 5, 6], [13], [5], [6]]  # the shared batch failed, then one by one
    runner.close()


def test_a_long_file_is_transcribed_in_batches_with_the_same_result(make_app, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    fields = {"segment_duration": "1", "temperature": "0", "max_new_tokens": "8"}
    sequential = make_app(batch_size=1)
    batched = make_app(batch_size=4)
    one = sequential.test_client().post("/transcribe/json", data=form_upload(audio_dir / "long_tone.wav", **fields))
    four = batched.test_client().post("/transcribe/json", data=form_upload(audio_dir / "long_tone.wav", **fields))
    assert one.status_code == four.status_code == 200
    assert four.get_json()["segments"] == one.get_json()["segments"]
    recognizer = services_of(batched).models._model
    assert recognizer.largest_batch == 4 and recognizer.batches_run < 25


def test_a_short_request_is_not_stuck_behind_a_long_job(make_app, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app(concurrent_jobs=2, batch_size=2)
    client = app.test_client()
    long_job = client.post("/transcribe/async", data=form_upload(
        audio_dir / "long_tone.wav", segment_duration="1", max_new_tokens="200")).get_json()["job_id"]
    wait_until(lambda: client.get(f"/status/{long_job}").get_json().get("stage") == "running")
    started = time.monotonic()
    short = client.post("/transcribe/json", data={"file": (io.BytesIO((audio_dir / "speech.wav").read_bytes()),
                                                           "s.wav"), "max_new_tokens": "8"})
    assert short.status_code == 200
    assert client.get(f"/status/{long_job}").get_json()["status"] == "processing"  # still going
    assert time.monotonic() - started < 10
    services_of(app).jobs.wait(long_job, 120)


def test_concurrent_jobs_share_batches(make_app, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app(concurrent_jobs=3, batch_size=3)
    done = []

    def post() -> None:
        with app.test_client() as c:
            done.append(c.post("/transcribe/json", data=form_upload(audio_dir / "tone.wav", segment_duration="60",
                                                                     max_new_tokens="64")).status_code)

    threads = [threading.Thread(target=post) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert done == [200, 200, 200]
    assert services_of(app).models._model.largest_batch >= 2  # one-segment jobs met in one batch


def test_the_engine_is_prepared_and_closed_on_the_runners_own_thread() -> None:
    """Compiled decode's CUDA graphs belong to the thread that records them: the runner's thread warms the
    engine up (before the runner is handed out) and closes it."""
    threads: dict[str, str] = {}

    class ThreadRecordingEngine(RecordingEngine):  # test double: notes the thread that closes it
        def close(self) -> None:
            threads["close"] = threading.current_thread().name
            super().close()

    engine = ThreadRecordingEngine(delay=0)
    prepared = threading.Event()

    def prepare() -> None:
        time.sleep(0.05)
        threads["prepare"] = threading.current_thread().name
        prepared.set()

    runner = BatchRunner(engine, 1, FairScheduler(), prepare=prepare)
    assert prepared.is_set()  # the warm-up finished before the runner was returned
    runner.close()
    assert engine.closed and threads == {"prepare": "batch-runner", "close": "batch-runner"}


def test_a_failed_preparation_leaves_a_working_runner(caplog: pytest.LogCaptureFixture) -> None:
    def prepare() -> None:
        raise RuntimeError("no compiler (simulated)")

    scheduler = FairScheduler()
    runner = BatchRunner(RecordingEngine(delay=0), 1, scheduler, prepare=prepare)
    try:
        assert text(submit(scheduler, scheduler.open_flow("job"), 5)) == ["5:0.0"]
        assert "preparing the engine failed" in caplog.text
    finally:
        runner.close()
