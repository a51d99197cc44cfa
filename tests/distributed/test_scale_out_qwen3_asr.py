"""Scale-out with Qwen3-ASR: a real redis-server, the API role and a worker process on the tiny Qwen3-ASR
checkpoint (published -hf layout). Nothing tells either process which family it serves but the config."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests
from local_redis import RedisServer

from tests.conftest import TEST_MAX_NEW_TOKENS
from tests.e2e.test_guide_examples import ENTRY, Server, start_server

pytestmark = pytest.mark.e2e

CHECKPOINT = "Qwen/Qwen3-ASR-1.7B-hf"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, tiny_asr: Path) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("scale-asr")
    shutil.copytree(tiny_asr, root / "Qwen" / "Qwen3-ASR-1.7B-hf")
    redis_server = RedisServer(root / "redis").start()
    segments = str(root / "data" / "segments")
    api = start_server(root, "--role", "api", "--redis-url", redis_server.url, "--checkpoint-path", CHECKPOINT,
                       "--segments-dir", segments)
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_OMNI_")}
    log = (root / "worker.log").open("a")
    worker = subprocess.Popen(
        [sys.executable, str(ENTRY), "--role", "worker", "--worker-name", "asr0", "--redis-url", redis_server.url,
         "--checkpoint-path", CHECKPOINT, "--local-model", "--models-dir", str(root / "Qwen"),
         "--segments-dir", segments, "--max-new-tokens", str(TEST_MAX_NEW_TOKENS)],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while not api.health().get("workers"):
            assert worker.poll() is None and time.monotonic() < deadline, (root / "worker.log").read_text()
            time.sleep(0.2)
        yield api
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            code = "killed"
        api_code = api.stop()
        redis_server.stop()
    assert api_code == 0, api.log.read_text()
    assert code == 0, (root / "worker.log").read_text()


def test_a_qwen3_asr_worker_serves_the_api(api: Server, audio_dir: Path) -> None:
    with (audio_dir / "tone.wav").open("rb") as f:
        response = requests.post(f"{api.url}/transcribe/json", files={"file": f}, timeout=300,
                                 data={"segment_duration": "2", "language": "da", "temperature": "0"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["language"] == "da" and len(body["segments"]) == 4  # a language only Qwen3-ASR takes
    assert api.health()["engine"]["family"] == "Qwen3-ASR"
    client = openai.OpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0,
                           _strict_response_validation=True)
    with open(audio_dir / "tone.wav", "rb") as f:
        verbose = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json",
                                                     extra_body={"segment_duration": 2})
    # Scores and the language the model named travel back from the worker through Redis.
    assert verbose.segments and all(s.tokens and s.avg_logprob <= 0 for s in verbose.segments)
    with open(audio_dir / "tone.wav", "rb") as f, pytest.raises(openai.BadRequestError) as refused:
        client.audio.translations.create(model="whisper-1", file=f)
    assert "cannot translate" in refused.value.body["message"]
