"""The production path: the image's entry point and settings, the awq service's command, under gunicorn,
on a tiny checkpoint, checked by test_awq_service.sh."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

from tests.conftest import ROOT, folder_is_empty
from tests.deploy.conftest import compose_config, dockerfile_env
from tests.e2e.test_guide_examples import free_port

pytestmark = pytest.mark.e2e

SERVICE = "qwen2.5-omni-http-awq"


@dataclass
class ImageLikeServer:
    process: subprocess.Popen
    url: str
    root: Path
    log: Path

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)
        return self.process.returncode


def start(root: Path, checkpoint: Path, extra_env: dict[str, str] | None = None) -> ImageLikeServer:
    """Run what the container runs: entrypoint + the compose command, with the image's and service's env.

    Only what a container provides differently is replaced: the interpreter, the port (free one on this
    machine) and the folders (under ``root``, where /app would be).
    """
    service = compose_config("--profile", "awq")["services"][SERVICE]
    port = free_port()
    command = list(service["command"])
    command[0] = "python3"
    command[command.index("--port") + 1] = str(port)
    (root / "Qwen").mkdir(parents=True, exist_ok=True)
    if not (root / "serve").exists():  # a restart runs on the same folders
        os.symlink(checkpoint, root / "Qwen" / "Qwen2.5-Omni-7B-AWQ")
        os.symlink(ROOT / "serve", root / "serve")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_OMNI_")}
    env.update({k: v for k, v in dockerfile_env().items() if k.startswith("QWEN_OMNI_")})
    env.update(service["environment"])
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",  # python3 = this venv
        "QWEN_OMNI_MODELS_DIR": str(root / "Qwen"),
        "QWEN_OMNI_INPUTS_DIR": str(root / "inputs"),
        "QWEN_OMNI_TEMP_DIR": str(root / "temp"),
        "QWEN_OMNI_OUTPUTS_DIR": str(root / "outputs"),
        "QWEN_OMNI_DATA_DIR": str(root / "data"),
        "QWEN_OMNI_MAX_NEW_TOKENS": "16",  # random weights never stop on their own
        **(extra_env or {}),
    })
    log = root / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(["sh", str(ROOT / "docker" / "entrypoint.sh"), *command], cwd=root, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    server = ImageLikeServer(process, f"http://127.0.0.1:{port}", root, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            requests.get(f"{server.url}/health", timeout=2)
            return server
        except requests.ConnectionError:
            time.sleep(0.1)
    server.stop()
    raise AssertionError(f"no answer from the server:\n{log.read_text()}")


@pytest.fixture
def server(tmp_path: Path, tiny_awq_checkpoint: Path) -> Iterator[ImageLikeServer]:
    server = start(tmp_path, tiny_awq_checkpoint)
    yield server
    server.stop()


def test_test_awq_service_passes_against_gunicorn(server: ImageLikeServer) -> None:
    result = subprocess.run(["bash", str(ROOT / "test_awq_service.sh")], capture_output=True, text=True,
                            env={**os.environ, "BASE_URL": server.url}, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASS") == 7 and "FAIL" not in result.stdout
    log = server.log.read_text()
    assert "IntakeThreadWorker" in log and "checkpoint ready" in log
    assert folder_is_empty(server.root / "inputs") and folder_is_empty(server.root / "temp")


def test_exactly_one_worker_process_holds_the_model(server: ImageLikeServer, audio_dir: Path) -> None:
    with open(audio_dir / "speech.wav", "rb") as f:
        assert requests.post(f"{server.url}/transcribe/json", files={"file": f}, timeout=60).status_code == 200
    master = psutil.Process(server.process.pid)
    workers = [p for p in master.children(recursive=True) if "python" in p.name()]
    # sh exec'd python (the gunicorn master); the master has exactly one worker.
    assert master.name().startswith("python") and len(workers) == 1


def status(server: ImageLikeServer, job_id: str) -> dict:
    return requests.get(f"{server.url}/status/{job_id}", timeout=5).json()


def test_sigterm_answers_the_waiting_client_and_pauses_async_jobs_for_the_next_start(
        server: ImageLikeServer, audio_dir: Path, tiny_awq_checkpoint: Path) -> None:
    form = {"segment_duration": "1", "max_new_tokens": "32", "temperature": "0"}
    with open(audio_dir / "long_tone.wav", "rb") as f:
        job = requests.post(f"{server.url}/transcribe/async", files={"file": f}, data=form, timeout=30).json()
    answer: dict[str, requests.Response] = {}

    def wait_on_the_connection() -> None:
        with open(audio_dir / "long_tone.wav", "rb") as f:
            answer["sync"] = requests.post(f"{server.url}/transcribe/json", files={"file": f}, data=form, timeout=120)

    client = threading.Thread(target=wait_on_the_connection)
    client.start()
    deadline = time.monotonic() + 30
    while not any(j["job_id"] != job["job_id"] and j["progress"]["segments_done"]
                  for j in requests.get(f"{server.url}/jobs", timeout=5).json()["jobs"]):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert server.stop() == 0  # SIGTERM
    client.join(10)
    response = answer["sync"]
    assert response.status_code == 200 and len(response.json()["segments"]) == 25  # the whole file, answered
    log = server.log.read_text()
    assert "shutting down: no new work" in log and "paused at segment" in log and "unloaded" in log
    assert "Traceback" not in log

    again = start(server.root, tiny_awq_checkpoint)  # same folders: the paused job goes on
    try:
        deadline = time.monotonic() + 60
        while (resumed := status(again, job["job_id"]))["status"] == "processing":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert resumed["status"] == "completed" and resumed["progress"]["segments_done"] == 25
        assert "resumed at their last finished segment" in again.log.read_text()
    finally:
        again.stop()
    assert folder_is_empty(server.root / "inputs")


def test_slow_clients_hold_no_thread_and_are_cut_off(tmp_path: Path, tiny_awq_checkpoint: Path,
                                                     audio_dir: Path) -> None:
    """The case that took the image's server down: hundreds of connections dribbling an upload."""
    from tests.e2e.test_security_e2e import CLIENT_TIMEOUT, check_slow_clients_are_cut_off_while_others_are_served

    server = start(tmp_path, tiny_awq_checkpoint, {"QWEN_OMNI_CLIENT_TIMEOUT": str(CLIENT_TIMEOUT)})
    try:
        with open(audio_dir / "speech.wav", "rb") as f:  # the model loaded before the clock starts
            assert requests.post(f"{server.url}/transcribe/json", files={"file": f}, timeout=120).status_code == 200
        check_slow_clients_are_cut_off_while_others_are_served(server.url, tmp_path, audio_dir, CLIENT_TIMEOUT,
                                                               server.process.pid)
    finally:
        assert server.stop() == 0
    log = server.log.read_text()
    assert "cut off a slow client" in log and "Traceback" not in log


def raw_exchange(url: str, request: bytes, *, keep_open: bool = False) -> tuple[bytes, socket.socket]:
    """Send ``request`` as written; read until the server ends its side (the socket stays open if asked)."""
    port = int(url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(request)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    if not keep_open:
        sock.close()
    return data, sock


def test_closing_pipelined_and_stopping_connections_under_the_intake(tmp_path: Path,
                                                                      tiny_awq_checkpoint: Path) -> None:
    server = start(tmp_path, tiny_awq_checkpoint, {"QWEN_OMNI_CLIENT_TIMEOUT": "120"})
    try:
        # HTTP/1.0 and Connection: close, from clients that keep their end open afterwards: the worker's
        # loop must not wait on them (gunicorn would, 2 s each; a request thread would, until a timeout).
        port = int(server.url.rsplit(":", 1)[1])
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(6)]
        for n, sock in enumerate(held):
            sock.sendall(b"GET /health HTTP/1.0\r\n\r\n" if n % 2 else
                         b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        for sock in held:  # each answer, whole, without waiting for the server to close
            answer = b""
            while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < int(
                    answer.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0]):
                answer += sock.recv(65536)
            assert answer.split(b"\r\n", 1)[0] in (b"HTTP/1.0 200 OK", b"HTTP/1.1 200 OK")
        assert requests.get(f"{server.url}/health", timeout=3).status_code == 200
        for sock in held:
            sock.close()

        pipelined, _ = raw_exchange(server.url, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                                                b"GET /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert pipelined.count(b"HTTP/1.1 200 OK\r\n") == 2 and b'"jobs"' in pipelined

        # A stop while an upload is still arriving: it is answered 503 at once, not held until its timeout.
        arriving = socket.create_connection(("127.0.0.1", port), timeout=30)
        arriving.sendall(b"POST /transcribe/json HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
                         b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")
        time.sleep(0.5)
        stopping = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        answer = arriving.recv(65536)
        assert answer.startswith(b"HTTP/1.1 503 ") and b'"shutting_down"' in answer
        assert server.process.wait(30) == 0
        assert time.monotonic() - stopping < 30
    finally:
        server.stop()
    assert "Traceback" not in server.log.read_text()
