"""Scale-out end to end: a real redis-server, the API role and two worker processes on the tiny checkpoint.

Every process is the production entry point (``serve/qwen2_5_omni_awq.py --role ...``). Faults are real:
a worker is killed with SIGKILL in the middle of a segment, and Redis is shut down and started again
(append-only file kept) while a job runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import requests
from local_redis import RedisServer
from rq.exceptions import NoSuchJobError
from rq.job import Job as Task
from rq.registry import StartedJobRegistry

from serve.distributed.worker import QUEUE
from serve.transcript import Word, word_spans
from tests.conftest import TEST_MAX_NEW_TOKENS, run_ffmpeg
from tests.e2e.conftest import tiny_server
from tests.e2e.test_guide_examples import ENTRY, Server, start_server

pytestmark = pytest.mark.e2e

CHECKPOINT = "Qwen/Qwen2.5-Omni-7B-AWQ"
# Long generation (random weights never stop early): a segment takes seconds on CPU, so a fault lands inside one.
SLOW = {"segment_duration": "10", "max_new_tokens": "1200", "temperature": "0"}


@dataclass
class Cluster:
    root: Path
    redis: RedisServer
    api: Server
    aligner: Path
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start_worker(self, name: str) -> None:
        log = (self.root / f"{name}.log").open("a")
        env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_OMNI_")}
        self.workers[name] = subprocess.Popen(
            [sys.executable, str(ENTRY), "--role", "worker", "--worker-name", name, "--redis-url", self.redis.url,
             "--checkpoint-path", CHECKPOINT, "--local-model", "--models-dir", str(self.root / "Qwen"),
             "--segments-dir", str(self.root / "data" / "segments"), "--max-new-tokens", str(TEST_MAX_NEW_TOKENS),
             "--aligner-path", str(self.aligner)],
            cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT)

    def live_workers(self) -> list[dict]:
        return self.api.health().get("workers", [])

    def wait_for_workers(self, *names: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while {w["name"] for w in self.live_workers()} != set(names):
            for name in names:
                assert self.workers[name].poll() is None, self.worker_log(name)
            assert time.monotonic() < deadline, f"workers {names} did not come up"
            time.sleep(0.2)

    def busy_worker(self) -> str | None:
        """The worker in the middle of a segment task, according to RQ's registry of started tasks."""
        client = self.redis.client()
        for task_id in StartedJobRegistry(QUEUE, connection=client).get_job_ids():
            with contextlib.suppress(NoSuchJobError, ValueError):  # it may finish as we look
                for execution in Task.fetch(task_id, connection=client).get_executions():
                    return execution.worker_name.split(".")[0]  # RQ name: <worker name>.<token>
        return None

    def worker_log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text()

    def wait(self, job_id: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = requests.get(f"{self.api.url}/status/{job_id}", timeout=10)
            if response.status_code == 200 and response.json()["status"] != "processing":
                return response.json()
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not finish:\n{self.api.log.read_text()[-3000:]}")

    def submit(self, audio: Path, **fields: str) -> str:
        with audio.open("rb") as f:
            response = requests.post(f"{self.api.url}/transcribe/async", files={"file": f}, data=fields, timeout=60)
        assert response.status_code == 202, response.text
        return response.json()["job_id"]

    def submit_and_wait_for_a_segment(self, audio: Path, **fields: str) -> str:
        """Submit ``audio`` and return once its first segment is transcribed (the job is under way)."""
        job_id = self.submit(audio, **fields)
        deadline = time.monotonic() + 60
        while requests.get(f"{self.api.url}/status/{job_id}", timeout=10).json()["progress"]["segments_done"] < 1:
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.05)
        return job_id

    def result(self, job_id: str) -> dict:
        response = requests.get(f"{self.api.url}/result/{job_id}", params={"format": "json"}, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()


def transcribe(url: str, audio: Path, **fields: str) -> dict:
    with audio.open("rb") as f:
        response = requests.post(f"{url}/transcribe/json", files={"file": f}, data=fields, timeout=600)
    assert response.status_code == 200, response.text
    return response.json()


def transcript_of(body: dict) -> tuple[str, list]:
    return body["transcription"], [(s["start"], s["end"], s["text"]) for s in body["segments"]]


def speech_minutes(folder: Path, audio_dir: Path, minutes: float) -> Path:
    """Generated speech with pauses, ``minutes`` long, as a 44.1 kHz stereo MP3."""
    out = folder / f"speech_{minutes:g}min.mp3"
    run_ffmpeg("-stream_loop", "-1", "-i", str(audio_dir / "speech.wav"), "-af", "apad=pad_dur=0.8",
               "-t", str(minutes * 60), "-ar", "44100", "-ac", "2", str(out))
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_awq_checkpoint: Path,
            tiny_aligner: Path) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("scale")
    shutil.copytree(tiny_awq_checkpoint, root / "Qwen" / "Qwen2.5-Omni-7B-AWQ")
    redis_server = RedisServer(root / "redis").start()
    api = start_server(root, "--role", "api", "--redis-url", redis_server.url, "--checkpoint-path", CHECKPOINT,
                       "--segments-dir", str(root / "data" / "segments"), "--aligner-path", str(tiny_aligner))
    cluster = Cluster(root, redis_server, api, tiny_aligner)
    try:
        for name in ("w0", "w1"):
            cluster.start_worker(name)
        cluster.wait_for_workers("w0", "w1")
        yield cluster
    finally:
        codes = {}
        for name, process in cluster.workers.items():
            process.send_signal(signal.SIGTERM)  # RQ's warm stop
            try:
                codes[name] = process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = "killed"
        api_code = api.stop()
        redis_server.stop()
    assert api_code == 0, api.log.read_text()
    assert all(code == 0 for code in codes.values()), codes


@pytest.fixture(scope="module")
def reference(cluster: Cluster, audio_dir: Path) -> tuple[Path, dict]:
    """A one-minute file and its transcript with both workers up (for the fault tests to reproduce)."""
    audio = speech_minutes(cluster.root, audio_dir, 1)
    return audio, transcribe(cluster.api.url, audio, **SLOW)


def test_a_ten_minute_file_is_split_across_both_workers_with_the_single_process_result(
        cluster: Cluster, audio_dir: Path, tiny_awq_checkpoint: Path, tmp_path: Path) -> None:
    audio = speech_minutes(tmp_path, audio_dir, 10)
    fields = {"segment_duration": "30", "temperature": "0"}
    scaled = transcribe(cluster.api.url, audio, **fields)
    with tiny_server(tmp_path / "single", tiny_awq_checkpoint, "--checkpoint-path", CHECKPOINT) as single:
        alone = transcribe(single.url, audio, **fields)
    assert len(scaled["segments"]) >= 19  # 30 s segments of a 10-minute file
    assert transcript_of(scaled) == transcript_of(alone)
    assert scaled["duration"] == alone["duration"]
    for name in ("w0", "w1"):  # both workers transcribed some of its segments
        assert f"job {scaled['job_id']}: segments" in cluster.worker_log(name), name
    assert (cluster.root / "outputs" / scaled["output_file"]).read_text(encoding="utf-8") == \
        scaled["transcription"] + "\n"


def test_word_timestamps_come_back_from_the_workers(cluster: Cluster, audio_dir: Path) -> None:
    body = transcribe(cluster.api.url, audio_dir / "tone.wav", word_timestamps="true", segment_duration="2",
                      temperature="0")
    assert body["segments"] and "word_timestamps_note" not in body
    for segment in body["segments"]:
        times = [t for w in segment["words"] for t in (w["start"], w["end"])]
        assert times == sorted(times) and all(segment["start"] <= t <= segment["end"] for t in times)
        words = tuple(Word(w["word"], w["start"], w["end"]) for w in segment["words"])
        assert None not in word_spans(segment["text"], words)  # each word found in the text, in order


def test_health_reports_each_worker_its_device_and_model_state(cluster: Cluster, reference: tuple) -> None:
    health = cluster.api.health()
    assert health["status"] == "ok" and health["role"] == "api" and health["redis"] == "ok"
    assert [w["name"] for w in health["workers"]] == ["w0", "w1"]
    assert all(w["device"] == "cpu" and w["model_loaded"] for w in health["workers"])
    assert health["model_loaded"] is True and health["gpu_available"] is False


def test_a_worker_killed_mid_segment_loses_and_duplicates_nothing(cluster: Cluster, reference: tuple) -> None:
    audio, expected = reference
    job_id = cluster.submit(audio, **SLOW)
    deadline = time.monotonic() + 60
    while (victim := cluster.busy_worker()) is None:
        assert time.monotonic() < deadline, "no worker took a segment"
        time.sleep(0.02)
    time.sleep(0.5)  # well inside the segment (seconds long), not at its edge
    cluster.workers[victim].send_signal(signal.SIGKILL)
    cluster.workers[victim].wait()
    try:
        final = cluster.wait(job_id)
        assert final["status"] == "completed", final
        assert transcript_of(cluster.result(job_id)) == transcript_of(expected)
        assert "stopped heart-beating" in cluster.api.log.read_text()
    finally:
        cluster.start_worker(victim)
        cluster.wait_for_workers("w0", "w1")


def test_redis_restarting_mid_job_gives_503_then_the_job_completes(cluster: Cluster, reference: tuple) -> None:
    audio, expected = reference
    job_id = cluster.submit_and_wait_for_a_segment(audio, **SLOW)
    cluster.redis.stop()
    try:
        status = requests.get(f"{cluster.api.url}/status/{job_id}", timeout=10)
        assert status.status_code == 503 and status.json()["code"] == "store_unavailable"
        assert status.headers["Retry-After"]
        assert requests.get(f"{cluster.api.url}/health", timeout=10).status_code == 503
        time.sleep(2)  # workers and the API's job runner keep waiting meanwhile
    finally:
        cluster.redis.start()
    final = cluster.wait(job_id)
    assert final["status"] == "completed", final
    assert transcript_of(cluster.result(job_id)) == transcript_of(expected)
    assert cluster.api.health()["status"] == "ok"  # the API recovered without a restart
    cluster.wait_for_workers("w0", "w1")


def test_cancelling_a_job_withdraws_its_queued_segments(cluster: Cluster, reference: tuple) -> None:
    audio, _ = reference
    job_id = cluster.submit_and_wait_for_a_segment(audio, **SLOW)
    assert requests.delete(f"{cluster.api.url}/jobs/{job_id}", timeout=10).status_code == 200
    assert cluster.wait(job_id, timeout=30)["status"] == "cancelled"
    client = cluster.redis.client()
    deadline = time.monotonic() + 10
    while client.llen("rq:queue:qwen-segments") or any(w["current_task"] for w in cluster.live_workers()):
        assert time.monotonic() < deadline, "segments of a cancelled job are still queued or running"
        time.sleep(0.1)
    assert not (cluster.root / "data" / "segments" / job_id).exists()


def test_a_short_request_overtakes_the_queued_segments_of_long_jobs(cluster: Cluster, reference: tuple,
                                                                   audio_dir: Path) -> None:
    audio, _ = reference
    long_jobs = [cluster.submit(audio, **SLOW) for _ in range(3)]  # 18 slow segments for 2 workers
    deadline = time.monotonic() + 60
    while cluster.busy_worker() is None:
        assert time.monotonic() < deadline, "no worker took a segment"
        time.sleep(0.02)
    try:
        short = transcribe(cluster.api.url, audio_dir / "speech.wav", segment_duration="10", temperature="0")
        statuses = [requests.get(f"{cluster.api.url}/status/{job}", timeout=10).json() for job in long_jobs]
        assert all(s["status"] == "processing" for s in statuses), statuses  # it did not wait for them
        assert sum(s["progress"]["segments_done"] for s in statuses) < 18 - 2
        assert short["segments"]
    finally:
        for job in long_jobs:
            requests.delete(f"{cluster.api.url}/jobs/{job}", timeout=10)
        deadline = time.monotonic() + 30
        while any(w["current_task"] for w in cluster.live_workers()):
            assert time.monotonic() < deadline, "the cancelled jobs' segments kept running"
            time.sleep(0.1)


def test_a_job_id_that_would_reach_another_redis_key_is_404_over_http(cluster: Cluster) -> None:
    redis.Redis.from_url(cluster.redis.url).set("qwen:job:x:progress", "{}")  # what "x:progress" would read
    for job_id in ("x:progress", "x", "0" * 32):
        for method in ("GET /status", "GET /result", "DELETE /jobs"):
            verb, path = method.split()
            response = requests.request(verb, f"{cluster.api.url}{path}/{job_id}", timeout=10)
            assert response.status_code == 404 and response.json()["code"] == "not_found", (method, job_id)
