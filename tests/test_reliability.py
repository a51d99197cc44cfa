"""Queue bounds, cancellation, progress, restart persistence and fault handling, through the HTTP API.

Where a test needs a model that blocks or fails on demand it swaps the engine for a named test double;
everything around it (routes, queue, store, pipeline, decoding) is the real code.
"""

from __future__ import annotations

import errno
import io
import os
import sqlite3
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np

from serve.generation import EngineOutOfMemory
from serve.jobs import JobStatus
from tests.conftest import folder_is_empty, services_of, use_test_engine, wait_until
from tests.conftest import form_upload as upload


class GatedRecognizer:
    """Test double: each segment waits until the test opens the gate (the job stays 'running')."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls = 0

    def transcribe(self, samples: np.ndarray, options) -> str:  # type: ignore[no-untyped-def]
        self.calls += 1
        self.gate.wait(10)
        return "ok"


class OutOfMemoryRecognizer:
    """Test double: runs out of memory on audio longer than ``fits_seconds``."""

    def __init__(self, fits_seconds: float) -> None:
        self.fits = fits_seconds * 16000
        self.lengths: list[int] = []

    def transcribe(self, samples: np.ndarray, options) -> str:  # type: ignore[no-untyped-def]
        self.lengths.append(samples.size)
        if samples.size > self.fits:
            raise EngineOutOfMemory("CUDA out of memory (simulated)")
        return f"part{len(self.lengths)}"


def use_engine(app, engine) -> None:  # type: ignore[no-untyped-def]
    use_test_engine(app, engine)


def test_full_queue_is_503_with_retry_after(make_app, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app(queue_depth=1, concurrent_jobs=1)
    engine = GatedRecognizer()
    use_engine(app, engine)
    client = app.test_client()
    running = client.post("/transcribe/async", data=upload(audio_dir / "speech.wav")).get_json()["job_id"]
    wait_until(lambda: engine.calls == 1)
    queued = client.post("/transcribe/async", data=upload(audio_dir / "speech.wav"))
    assert queued.status_code == 202
    full = client.post("/transcribe/async", data=upload(audio_dir / "speech.wav"))
    assert full.status_code == 503 and full.get_json()["code"] == "queue_full"
    assert int(full.headers["Retry-After"]) >= 1
    sync_full = client.post("/transcribe/json", data=upload(audio_dir / "speech.wav"))
    assert sync_full.status_code == 503
    health = client.get("/health").get_json()
    assert health["queue_depth"] == 1 and health["queue_capacity"] == 1 and health["running_job"] == running
    engine.gate.set()
    services_of(app).jobs.wait(queued.get_json()["job_id"], 10)
    assert folder_is_empty(services_of(app).settings.inputs_dir)


def test_list_and_cancel_jobs(make_app, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app(concurrent_jobs=1)
    engine = GatedRecognizer()
    use_engine(app, engine)
    client = app.test_client()
    running = client.post("/transcribe/async", data=upload(audio_dir / "long_tone.wav",
                                                           segment_duration="1")).get_json()["job_id"]
    wait_until(lambda: engine.calls == 1)
    queued = client.post("/transcribe/async", data=upload(audio_dir / "speech.wav")).get_json()["job_id"]
    listed = client.get("/jobs").get_json()["jobs"]
    assert [j["job_id"] for j in listed] == [queued, running]
    assert [j["job_id"] for j in client.get("/jobs?status=processing&limit=1").get_json()["jobs"]] == [queued]

    cancelled = client.delete(f"/jobs/{queued}").get_json()
    assert cancelled["status"] == "cancelled"
    stopping = client.delete(f"/jobs/{running}").get_json()
    assert stopping["status"] == "processing" and stopping["cancel_requested"] is True
    engine.gate.set()
    services_of(app).jobs.wait(running, 10)
    final = client.get(f"/status/{running}").get_json()
    assert final["status"] == "cancelled" and final["progress"]["segments_done"] < 25
    assert engine.calls < 25
    assert client.delete(f"/jobs/{running}").status_code == 409
    assert client.delete("/jobs/nope").status_code == 404
    assert client.get("/jobs?status=bogus").status_code == 400
    assert client.get("/jobs?status=").status_code == 400
    assert client.get("/jobs?limit=0").status_code == 400
    too_far = client.get(f"/jobs?offset={2**70}")  # past the stores' 64-bit integers: refused, not a 500
    assert too_far.status_code == 400 and too_far.get_json()["param"] == "offset"
    assert services_of(app).models.users == 0
    assert folder_is_empty(services_of(app).settings.inputs_dir)


def test_status_reports_progress(make_app, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    client = app.test_client()
    job_id = client.post("/transcribe/async", data=upload(audio_dir / "tone.wav",
                                                          segment_duration="2")).get_json()["job_id"]
    services_of(app).jobs.wait(job_id, 30)
    body = client.get(f"/status/{job_id}").get_json()
    assert body["progress"] == {"segments_done": 4, "segments_total": 4, "audio_seconds_done": 7.3,
                                "audio_seconds_total": 7.3}


def test_results_survive_a_restart_and_a_running_job_without_its_upload_is_interrupted(make_app, settings_factory,  # type: ignore[no-untyped-def]
                                                                      audio_dir: Path) -> None:
    from serve.app import create_app

    first = make_app()
    client = first.test_client()
    done = client.post("/transcribe/async", data=upload(audio_dir / "speech.wav")).get_json()["job_id"]
    services_of(first).jobs.wait(done, 30)
    transcript = client.get(f"/status/{done}").get_json()["transcription"]
    # A job the process was running when it died:
    store = services_of(first).store
    crashed = replace(store.get(done), id="c" * 32, status=JobStatus.PROCESSING, stage="running",
                      completed_at=None, result=None, output_file=None)
    store.add(crashed)
    services_of(first).close()

    second = create_app(settings_factory())
    try:
        client = second.test_client()
        again = client.get(f"/status/{done}").get_json()
        assert again["status"] == "completed" and again["transcription"] == transcript
        lost = client.get("/status/" + "c" * 32).get_json()
        assert lost["status"] == "failed" and lost["code"] == "interrupted" and "interrupted" in lost["error"]
    finally:
        services_of(second).close()


def test_out_of_memory_retries_in_halves(make_app, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    engine = OutOfMemoryRecognizer(fits_seconds=4)
    use_engine(app, engine)
    body = app.test_client().post("/transcribe/json", data=upload(audio_dir / "tone.wav")).get_json()
    assert body["status"] == "success" and body["transcription"] == "part2 part3"
    assert engine.lengths[0] > engine.lengths[1] and len(engine.lengths) == 3


def test_out_of_memory_twice_fails_the_job_not_the_server(make_app, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    use_engine(app, OutOfMemoryRecognizer(fits_seconds=1))
    client = app.test_client()
    response = client.post("/transcribe/json", data=upload(audio_dir / "tone.wav"))
    assert response.status_code == 503 and response.get_json()["code"] == "gpu_out_of_memory"
    assert "segment_duration" in response.get_json()["error"]
    models = services_of(app).models
    assert models.users == 0 and models.loaded  # the reference count is right; the model stays usable
    use_engine(app, OutOfMemoryRecognizer(fits_seconds=60))
    models.unload()
    assert client.post("/transcribe/json", data=upload(audio_dir / "tone.wav")).status_code == 200


def test_a_failing_segment_fails_its_job_only(make_app, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    class Flaky:
        """Test double: fails on the first call only."""

        calls = 0

        def transcribe(self, samples, options):  # type: ignore[no-untyped-def]
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise ValueError("bad segment")
            return "fine"

    app = make_app()
    use_engine(app, Flaky())
    client = app.test_client()
    assert client.post("/transcribe/json", data=upload(audio_dir / "speech.wav")).status_code == 500
    assert client.post("/transcribe/json", data=upload(audio_dir / "speech.wav")).get_json()["transcription"] \
        == "fine"


class DiskFullFile(io.FileIO):
    """Test double for an upload file on a disk that fills up after ``ROOM`` bytes."""

    ROOM = 4096

    def write(self, data) -> int:  # type: ignore[no-untyped-def]
        if self.tell() + len(data) > self.ROOM:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def disk_full_temporary_file(*, mode: str, dir: Path, prefix: str, suffix: str, delete: bool) -> DiskFullFile:
    fd, name = tempfile.mkstemp(dir=dir, prefix=prefix, suffix=suffix)
    os.close(fd)
    return DiskFullFile(name, "w+")


def test_an_upload_that_does_not_fit_is_507_and_leaves_no_partial_file(make_app, audio_dir: Path,  # type: ignore[no-untyped-def]
                                                                       monkeypatch, tmp_path: Path) -> None:
    app = make_app()
    monkeypatch.setattr("serve.uploads.tempfile.NamedTemporaryFile", disk_full_temporary_file)
    response = app.test_client().post("/transcribe/json", data=upload(audio_dir / "speech.wav"))
    assert response.status_code == 507
    assert response.get_json()["code"] == "insufficient_storage" and response.headers["Retry-After"]
    assert folder_is_empty(tmp_path / "inputs")
    monkeypatch.undo()
    assert app.test_client().post("/transcribe/json", data=upload(audio_dir / "speech.wav")).status_code == 200


def test_a_transcript_that_cannot_be_saved_is_still_answered_and_kept(make_app, audio_dir: Path,  # type: ignore[no-untyped-def]
                                                                      monkeypatch, tmp_path: Path) -> None:
    app = make_app()
    client = app.test_client()

    def disk_full(content: str, extension: str) -> str:  # test double: outputs/ is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(services_of(app).outputs, "save", disk_full)
    body = client.post("/transcribe/json", data=upload(audio_dir / "speech.wav")).get_json()
    assert body["status"] == "success" and body["output_file"] is None
    assert "No space left on device" in body["output_error"] and body["segments"]
    job = client.post("/transcribe/async", data=upload(audio_dir / "speech.wav")).get_json()["job_id"]
    services_of(app).jobs.wait(job, 30)
    status = client.get(f"/status/{job}").get_json()
    assert status["status"] == "completed" and status["output_error"]
    assert client.get(f"/result/{job}?format=vtt").status_code == 200
    assert folder_is_empty(tmp_path / "inputs")


class UnwritableStore:
    """Test double around the real job store: every write fails (a full disk under data/) while ``broken``."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.broken = True

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        method = getattr(self.inner, name)
        if name not in ("add", "update", "update_progress", "probe", "delete"):
            return method

        def write(*args, **kwargs):  # type: ignore[no-untyped-def]
            if self.broken:
                raise sqlite3.OperationalError("database or disk is full")
            return method(*args, **kwargs)

        return write


def test_an_unwritable_job_store_is_503_on_health_and_submit_until_it_recovers(make_app, audio_dir: Path,  # type: ignore[no-untyped-def]
                                                                               tmp_path: Path) -> None:
    app = make_app()
    client = app.test_client()
    jobs = services_of(app).jobs
    store = UnwritableStore(jobs.store)
    jobs.store = store
    refused = client.post("/transcribe/async", data=upload(audio_dir / "speech.wav"))
    assert refused.status_code == 503 and refused.get_json()["code"] == "store_unavailable"
    assert "disk is full" in refused.get_json()["error"] and refused.headers["Retry-After"]
    assert folder_is_empty(tmp_path / "inputs")  # the upload of a refused job is not kept
    health = client.get("/health")
    assert health.status_code == 503 and health.get_json()["status"] == "unavailable"
    assert "disk is full" in health.get_json()["store"]
    store.broken = False
    health = client.get("/health")  # its probe write works again
    assert health.status_code == 200 and health.get_json()["store"] == "ok"
    assert client.post("/transcribe/json", data=upload(audio_dir / "speech.wav")).status_code == 200


def test_a_finished_job_reports_n_of_n_segments(make_app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """2.03 s at 2 s segments: the cutter drops the 30 ms tail, so the file is one segment, not "1 of 2"."""
    from tests.conftest import run_ffmpeg

    audio = tmp_path / "just_over.wav"
    run_ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=2.03", "-ar", "16000", "-ac", "1", str(audio))
    app = make_app()
    client = app.test_client()
    job_id = client.post("/transcribe/async", data=upload(audio, segment_duration="2")).get_json()["job_id"]
    services_of(app).jobs.wait(job_id, 30)
    progress = client.get(f"/status/{job_id}").get_json()["progress"]
    assert progress["segments_done"] == progress["segments_total"] == 1


def test_the_segment_estimate_never_exceeds_what_the_cutter_makes() -> None:
    from serve.transcriber import estimated_segments

    assert estimated_segments(60.03, 60) == 1 and estimated_segments(60.06, 60) == 2
    assert estimated_segments(7.3, 2) == 4 and estimated_segments(0.01, 2) == 1
