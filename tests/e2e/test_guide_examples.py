"""End to end: the real server as a subprocess, driven by the reference guide's curl and Python examples."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import srt

from tests.conftest import ROOT, TEST_MAX_NEW_TOKENS, folder_is_empty

pytestmark = pytest.mark.e2e

ENTRY = ROOT / "serve" / "qwen2_5_omni_awq.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    root: Path
    log: Path

    def health(self) -> dict:
        return requests.get(f"{self.url}/health", timeout=5).json()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(root: Path, *args: str) -> Server:
    """Start ``python3 serve/qwen2_5_omni_awq.py`` with the guide's flags; wait until /health answers."""
    port = free_port()
    for name in ("inputs", "temp", "outputs"):
        (root / name).mkdir(parents=True, exist_ok=True)
    log = root / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_OMNI_")}
    command = [sys.executable, str(ENTRY), "--host", "127.0.0.1", "--port", str(port),
               "--models-dir", str(root / "Qwen"), "--inputs-dir", str(root / "inputs"),
               "--temp-dir", str(root / "temp"), "--outputs-dir", str(root / "outputs"),
               "--data-dir", str(root / "data"),
               "--max-new-tokens", str(TEST_MAX_NEW_TOKENS), *args]
    with log.open("w") as log_file:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    server = Server(process, f"http://127.0.0.1:{port}", root, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text()}")
        try:
            server.health()
            return server
        except requests.ConnectionError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not answer in time:\n{log.read_text()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_awq_checkpoint: Path) -> Iterator[Server]:
    """The server as the compose file runs it: local model under Qwen/, flash-attn flag, idle timeout."""
    root = tmp_path_factory.mktemp("app")
    shutil.copytree(tiny_awq_checkpoint, root / "Qwen" / "Qwen2.5-Omni-7B-AWQ")
    server = start_server(root, "--checkpoint-path", "Qwen/Qwen2.5-Omni-7B-AWQ", "--flash-attn2", "--local-model",
                          "--repetition-penalty", "1.1", "--idle-timeout", "300")
    yield server
    assert server.stop() == 0, server.log.read_text()
    assert "Traceback" not in server.log.read_text()


@pytest.fixture(scope="module")
def audio_mp3(tmp_path_factory: pytest.TempPathFactory, audio_dir: Path) -> Path:
    """The guide's examples upload ``audio.mp3`` from the working directory."""
    work = tmp_path_factory.mktemp("client")
    shutil.copy(audio_dir / "speech.mp3", work / "audio.mp3")
    shutil.copy(audio_dir / "long_tone.wav", work / "long_audio.mp3")
    return work / "audio.mp3"


def sh(script: str, cwd: Path) -> str:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, capture_output=True, text=True,
                          check=True, timeout=120).stdout


def test_health(server: Server, audio_mp3: Path) -> None:
    body = json.loads(sh(f"curl -s {server.url}/health", audio_mp3.parent))
    assert set(body) >= {"status", "model_loaded", "gpu_available", "gpu_memory_allocated_gb",
                         "gpu_memory_reserved_gb", "timestamp"}
    assert body["status"] == "ok"


def test_curl_json(server: Server, audio_mp3: Path) -> None:
    out = sh(f'curl -s -X POST -F "file=@audio.mp3" -F "segment_duration=60" -F "temperature=0.1" '
             f"{server.url}/transcribe/json", audio_mp3.parent)
    body = json.loads(out)
    # The guide's temperature samples: random weights may pick an end token at once, so the text may be empty.
    assert body["status"] == "success" and bool(body["segments"]) == bool(body["transcription"].strip())
    saved = server.root / "outputs" / body["output_file"]
    assert saved.read_text(encoding="utf-8").strip() == body["transcription"].strip()
    assert server.health()["model_loaded"] is True


def test_curl_text_download(server: Server, audio_mp3: Path) -> None:
    sh(f'curl -s -X POST -F "file=@audio.mp3" {server.url}/transcribe -o transcription.txt', audio_mp3.parent)
    assert (audio_mp3.parent / "transcription.txt").read_text(encoding="utf-8").strip()
    # "The downloaded file is named audio.txt": curl -OJ takes the server's name.
    download = audio_mp3.parent / "download"
    download.mkdir(exist_ok=True)
    sh(f'curl -s -OJ -X POST -F "file=@../audio.mp3" {server.url}/transcribe', download)
    assert [p.name for p in download.iterdir()] == ["audio.txt"]


def test_curl_srt(server: Server, audio_mp3: Path) -> None:
    sh(f'curl -s -X POST -F "file=@audio.mp3" -F "segment_duration=10" {server.url}/transcribe/srt -o subtitle.srt',
       audio_mp3.parent)
    cues = list(srt.parse((audio_mp3.parent / "subtitle.srt").read_text(encoding="utf-8")))
    assert cues and 0 <= cues[0].start.total_seconds() < 0.3  # the speech starts after espeak's lead-in
    assert cues[-1].end.total_seconds() < 6  # the clip (5.9 s) is shorter than one 10 s segment


def test_guide_async_shell_snippet(server: Server, audio_mp3: Path) -> None:
    script = f"""
RESPONSE=$(curl -s -X POST -F "file=@long_audio.mp3" {server.url}/transcribe/async)
JOB_ID=$(echo $RESPONSE | python3 -c "import sys, json; print(json.load(sys.stdin)['job_id'])")
for i in $(seq 1 600); do
  STATUS=$(curl -s {server.url}/status/$JOB_ID)
  case "$STATUS" in *'"processing"'*) sleep 0.1 ;; *) break ;; esac
done
echo "$STATUS"
"""
    body = json.loads(sh(script, audio_mp3.parent))
    assert body["status"] == "completed"
    assert body["transcription"] and body["output_file"] and body["completed_at"]


def test_guide_python_example(server: Server, audio_mp3: Path) -> None:
    with open(audio_mp3, "rb") as f:
        files = {"file": f}
        data = {"segment_duration": 60, "temperature": 0.1, "enable_s2t": "true"}
        response = requests.post(f"{server.url}/transcribe/json", files=files, data=data, timeout=120)
    result = response.json()
    assert response.status_code == 200 and isinstance(result["transcription"], str)


def test_errors_are_json_over_the_wire(server: Server, audio_mp3: Path) -> None:
    not_audio = requests.post(f"{server.url}/transcribe/json", files={"file": ("a.mp3", b"text" * 100)}, timeout=30)
    assert not_audio.status_code == 415 and not_audio.json()["code"] == "unsupported_media"
    assert requests.get(f"{server.url}/status/nope", timeout=5).status_code == 404
    assert requests.get(f"{server.url}/transcribe", timeout=5).json()["code"] == "method_not_allowed"
    assert folder_is_empty(server.root / "inputs") and folder_is_empty(server.root / "temp")


def test_health_answers_during_a_long_transcription(server: Server, audio_mp3: Path) -> None:
    with open(audio_mp3.parent / "long_audio.mp3", "rb") as f:
        job = requests.post(f"{server.url}/transcribe/async", files={"file": f},
                            data={"segment_duration": "1", "max_new_tokens": "48"}, timeout=30).json()
    latencies = []
    while True:
        started = time.monotonic()
        body = server.health()
        latencies.append(time.monotonic() - started)
        status = requests.get(f"{server.url}/status/{job['job_id']}", timeout=5).json()
        if status["status"] != "processing":
            break
        time.sleep(0.05)
    assert status["status"] == "completed"
    assert len(latencies) > 3 and max(latencies) < 1.0
    assert body["model_loaded"] is True


def test_idle_timeout_unloads_and_sigterm_stops_cleanly(tmp_path: Path, tiny_awq_checkpoint: Path,
                                                        audio_mp3: Path) -> None:
    shutil.copytree(tiny_awq_checkpoint, tmp_path / "Qwen" / "Qwen2.5-Omni-7B-AWQ")
    server = start_server(tmp_path, "--local-model", "--idle-timeout", "1")
    try:
        assert server.health()["model_loaded"] is False
        with open(audio_mp3, "rb") as f:
            assert requests.post(f"{server.url}/transcribe/json", files={"file": f}, timeout=60).status_code == 200
        assert server.health()["model_loaded"] is True
        deadline = time.monotonic() + 10
        while server.health()["model_loaded"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.health()["model_loaded"] is False
    finally:
        assert server.stop() == 0
    log = server.log.read_text()
    assert "unloaded" in log and "Traceback" not in log
