"""Over real HTTP: a synchronous client that hangs up frees its queued work; queued and running jobs survive
a restart; a shutdown answers the clients waiting and pauses async jobs for the next start."""

from __future__ import annotations

import shutil
import signal
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests

from tests.conftest import folder_is_empty, wait_until
from tests.e2e.test_guide_examples import Server, start_server

pytestmark = pytest.mark.e2e


def jobs(server: Server) -> dict[str, dict]:
    return {j["job_id"]: j for j in requests.get(f"{server.url}/jobs", timeout=5).json()["jobs"]}


def submit_long_job(server: Server, audio_dir: Path) -> str:
    with open(audio_dir / "long_tone.wav", "rb") as f:
        return requests.post(f"{server.url}/transcribe/async", files={"file": f},
                             data={"segment_duration": "1", "max_new_tokens": "96"}, timeout=30).json()["job_id"]


def test_disconnected_sync_client_frees_its_queued_job(tmp_path: Path, tiny_awq_checkpoint: Path,
                                                       audio_dir: Path) -> None:
    shutil.copytree(tiny_awq_checkpoint, tmp_path / "Qwen" / "Qwen2.5-Omni-7B-AWQ")
    server = start_server(tmp_path, "--local-model", "--concurrent-jobs", "1")  # the sync job has to wait
    try:
        blocker = submit_long_job(server, audio_dir)
        wait_until(lambda: jobs(server)[blocker]["stage"] == "running")
        audio = (audio_dir / "speech.wav").read_bytes()
        boundary = "xYzBoundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
                f"Content-Type: audio/wav\r\n\r\n").encode() + audio + f"\r\n--{boundary}--\r\n".encode()
        url = urlparse(server.url)
        client = socket.create_connection((url.hostname, url.port))
        client.sendall((f"POST /transcribe/json HTTP/1.1\r\nHost: {url.hostname}\r\n"
                        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        wait_until(lambda: len(jobs(server)) == 2)
        (sync_id,) = [i for i in jobs(server) if i != blocker]
        assert jobs(server)[sync_id]["stage"] == "queued"
        client.close()  # the client gives up
        wait_until(lambda: jobs(server)[sync_id]["status"] == "cancelled", timeout=10)
        assert jobs(server)[blocker]["status"] == "processing"  # other work is untouched
        assert "disconnected" in requests.get(f"{server.url}/status/{sync_id}", timeout=5).json()["error"]
        wait_until(lambda: jobs(server)[blocker]["status"] == "completed", timeout=60)
        assert folder_is_empty(tmp_path / "inputs")
    finally:
        assert server.stop() == 0


def test_queued_jobs_survive_a_restart(tmp_path: Path, tiny_awq_checkpoint: Path, audio_dir: Path) -> None:
    shutil.copytree(tiny_awq_checkpoint, tmp_path / "Qwen" / "Qwen2.5-Omni-7B-AWQ")
    first = start_server(tmp_path, "--local-model", "--concurrent-jobs", "1")
    running = submit_long_job(first, audio_dir)
    wait_until(lambda: jobs(first)[running]["stage"] == "running")
    with open(audio_dir / "speech.mp3", "rb") as f:
        queued = requests.post(f"{first.url}/transcribe/async", files={"file": f}, timeout=30).json()["job_id"]
    assert first.stop() == 0  # graceful: the running job pauses, the queued one waits for the next start
    assert not folder_is_empty(tmp_path / "inputs")  # their uploads are kept for them

    second = start_server(tmp_path, "--local-model")
    try:
        wait_until(lambda: requests.get(f"{second.url}/status/{running}", timeout=5).json()["status"] != "processing",
                   timeout=60)
        finished = requests.get(f"{second.url}/status/{running}", timeout=5).json()
        assert finished["status"] == "completed" and finished["transcription"]
        wait_until(lambda: requests.get(f"{second.url}/status/{queued}", timeout=5).json()["status"] != "processing")
        assert requests.get(f"{second.url}/status/{queued}", timeout=5).json()["status"] == "completed"
        assert folder_is_empty(tmp_path / "inputs")
    finally:
        assert second.stop() == 0


def test_sigterm_refuses_new_work_and_answers_a_waiting_client_past_the_graceful_timeout(
        tmp_path: Path, tiny_awq_checkpoint: Path, audio_dir: Path) -> None:
    shutil.copytree(tiny_awq_checkpoint, tmp_path / "Qwen" / "Qwen2.5-Omni-7B-AWQ")
    server = start_server(tmp_path, "--local-model", "--graceful-timeout", "4")  # Werkzeug, the default server
    try:
        paused = submit_long_job(server, audio_dir)
        answer: dict[str, requests.Response] = {}

        def wait_on_the_connection() -> None:  # far longer than the graceful timeout
            with open(audio_dir / "long_tone.wav", "rb") as f:
                answer["sync"] = requests.post(f"{server.url}/transcribe/json", files={"file": f},
                                               data={"segment_duration": "1", "max_new_tokens": "512"}, timeout=60)

        client = threading.Thread(target=wait_on_the_connection)
        client.start()
        wait_until(lambda: len(jobs(server)) == 2
                   and all(j["progress"]["segments_done"] for j in jobs(server).values()),
                   timeout=90)  # the model loads on the first segment
        server.process.send_signal(signal.SIGTERM)
        wait_until(lambda: requests.get(f"{server.url}/health", timeout=5).json()["shutting_down"], timeout=30)
        health = requests.get(f"{server.url}/health", timeout=5)
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        with open(audio_dir / "speech.wav", "rb") as f:
            refused = requests.post(f"{server.url}/transcribe/json", files={"file": f}, timeout=10)
        assert refused.status_code == 503 and refused.json()["code"] == "shutting_down"
        assert refused.headers["Retry-After"]
        client.join(30)
        waited = answer["sync"]
        assert waited.status_code == 503 and waited.json()["code"] == "interrupted"  # answered, not reset
        assert server.process.wait(15) == 0
        log = server.log.read_text()
        assert "graceful timeout: stopping" in log and "Traceback" not in log
    finally:
        if server.process.poll() is None:  # a failed check must not leave the server running
            server.process.kill()
            server.process.wait()

    again = start_server(tmp_path, "--local-model")
    try:
        wait_until(lambda: requests.get(f"{again.url}/status/{paused}", timeout=5).json()["status"] != "processing",
                   timeout=90)
        assert requests.get(f"{again.url}/status/{paused}", timeout=5).json()["status"] == "completed"
        assert folder_is_empty(tmp_path / "inputs")
    finally:
        assert again.stop() == 0
