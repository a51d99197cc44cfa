"""Over real HTTP, on small filesystems: an upload that does not fit is 507 and leaves nothing behind; a
transcript that cannot be saved under outputs/ is still answered and kept with the job; the server stays up."""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import folder_is_empty, sine, wait_until
from tests.e2e.test_guide_examples import start_server

pytestmark = pytest.mark.e2e


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """Mounts a tmpfs of the given size at ``tmp_path/name`` (skips where mounting is not allowed)."""
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a small filesystem here ({result.stderr.strip()}); "
                        "tests/test_uploads.py covers the same with writes that fail")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def wav_bytes(seconds: float) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes((sine(seconds) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def fill(folder: Path) -> None:
    with (folder / "filler").open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass


def test_a_full_disk_costs_the_request_not_the_server(tmp_path: Path, tiny_awq_checkpoint: Path, audio_dir: Path,
                                                      small_filesystem: Callable[[str, str], Path]) -> None:
    inputs = small_filesystem("inputs", "1m")
    outputs = small_filesystem("outputs", "64k")
    fill(outputs)
    shutil.copytree(tiny_awq_checkpoint, tmp_path / "Qwen" / "Qwen2.5-Omni-7B-AWQ")
    server = start_server(tmp_path, "--local-model")
    try:
        too_big = requests.post(f"{server.url}/transcribe/json", files={"file": ("big.wav", wav_bytes(60))},
                                timeout=60)  # 1.9 MB into 1 MB
        assert too_big.status_code == 507
        assert too_big.json()["code"] == "insufficient_storage" and "no space" in too_big.json()["error"]
        assert folder_is_empty(inputs)  # no partial upload left behind

        with open(audio_dir / "speech.wav", "rb") as f:  # fits in inputs/, but outputs/ is full
            answered = requests.post(f"{server.url}/transcribe/json", files={"file": f}, timeout=60)
        assert answered.status_code == 200
        body = answered.json()
        assert body["output_file"] is None and "could not be saved" in body["output_error"]
        assert body["segments"]

        with open(audio_dir / "speech.wav", "rb") as f:
            job = requests.post(f"{server.url}/transcribe/async", files={"file": f}, timeout=60).json()["job_id"]
        wait_until(lambda: requests.get(f"{server.url}/status/{job}", timeout=5).json()["status"] != "processing",
                   timeout=60)
        status = requests.get(f"{server.url}/status/{job}", timeout=5).json()
        assert status["status"] == "completed" and status["output_file"] is None and status["output_error"]
        srt = requests.get(f"{server.url}/result/{job}", params={"format": "srt"}, timeout=5)
        assert srt.status_code == 200 and "-->" in srt.text  # the transcript is kept with the job
        assert [p.name for p in outputs.iterdir()] == ["filler"]  # no half-written transcript
        assert requests.get(f"{server.url}/health", timeout=5).json()["status"] == "ok"
        assert folder_is_empty(inputs)
    finally:
        assert server.stop() == 0
