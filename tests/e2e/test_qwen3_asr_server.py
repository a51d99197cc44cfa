"""The real server on a Qwen3-ASR checkpoint (tiny, random, in the published -hf layout): no flag says which
model family it is; every endpoint and format works as with Qwen2.5-Omni."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests
import srt
import webvtt

from tests.e2e.test_guide_examples import Server, start_server

pytestmark = pytest.mark.e2e

CHECKPOINT = "Qwen/Qwen3-ASR-1.7B-hf"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_asr: Path) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("qwen3-asr")
    shutil.copytree(tiny_asr, root / "Qwen" / "Qwen3-ASR-1.7B-hf")
    server = start_server(root, "--local-model", "--checkpoint-path", CHECKPOINT, "--idle-timeout", "2")
    try:
        yield server
    finally:
        assert server.stop() == 0, server.log.read_text()


def post(server: Server, path: str, audio: Path, **fields: str) -> requests.Response:
    with audio.open("rb") as f:
        return requests.post(f"{server.url}{path}", files={"file": (audio.name, f)}, data=fields, timeout=120)


def test_every_native_format(server: Server, audio_dir: Path) -> None:
    body = post(server, "/transcribe/json", audio_dir / "tone.wav", segment_duration="2", temperature="0").json()
    assert body["status"] == "success" and len(body["segments"]) == 4 and body["duration"] == pytest.approx(7.3)
    forced = post(server, "/transcribe/json", audio_dir / "tone.wav", language="de", prompt="Qwen").json()
    assert forced["language"] == "de"
    text = post(server, "/transcribe", audio_dir / "speech.mp3")
    assert text.status_code == 200 and text.headers["Content-Disposition"].startswith("attachment")
    assert list(srt.parse(post(server, "/transcribe/srt", audio_dir / "tone.wav", segment_duration="2").text))
    assert webvtt.from_string(post(server, "/transcribe/vtt", audio_dir / "tone.wav").text) is not None
    refused = post(server, "/transcribe/json", audio_dir / "tone.wav", language="uk")
    assert refused.status_code == 400 and refused.json()["param"] == "language"
    assert "Qwen3-ASR" in refused.json()["error"]


def test_an_async_job_and_the_idle_unload(server: Server, audio_dir: Path) -> None:
    job = post(server, "/transcribe/async", audio_dir / "long_tone.wav", segment_duration="5").json()["job_id"]
    deadline = time.monotonic() + 120
    while (status := requests.get(f"{server.url}/status/{job}", timeout=10).json())["status"] != "completed":
        assert status["status"] == "processing" and time.monotonic() < deadline
        time.sleep(0.2)
    assert status["progress"]["segments_done"] == status["progress"]["segments_total"] == 5
    assert list(srt.parse(requests.get(f"{server.url}/result/{job}?format=srt", timeout=10).text))
    deadline = time.monotonic() + 30
    while server.health()["model_loaded"]:  # --idle-timeout 2
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_the_openai_api_with_strict_validation(server: Server, audio_dir: Path) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0,
                           _strict_response_validation=True)
    assert [m.id for m in client.models.list()] == ["Qwen3-ASR-1.7B-hf"]
    with open(audio_dir / "tone.wav", "rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json",
                                                    extra_body={"segment_duration": 2})
    assert result.segments and all(s.tokens for s in result.segments)
    assert result.language  # what the model named (random weights: often nothing, then "unknown")


def test_translation_is_refused_and_its_own_languages_and_segments_are_taken(server: Server, audio_dir: Path) -> None:
    engine = server.health()["engine"]
    assert engine["family"] == "Qwen3-ASR" and not engine["translates"] and engine["max_segment_seconds"] == 1200
    assert "da" in engine["languages"] and "uk" not in engine["languages"]
    refused = post(server, "/transcribe/json", audio_dir / "tone.wav", task="translate", target_language="en")
    assert refused.status_code == 400 and refused.json()["param"] == "task"
    assert "Qwen3-ASR" in refused.json()["error"] and "cannot translate" in refused.json()["error"]
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with open(audio_dir / "tone.wav", "rb") as f, pytest.raises(openai.BadRequestError) as exc:
        client.audio.translations.create(model="whisper-1", file=f)
    assert exc.value.body["param"] is None and "cannot translate" in exc.value.body["message"]  # no task field here
    danish = post(server, "/transcribe/json", audio_dir / "tone.wav", language="da", segment_duration="600").json()
    assert danish["language"] == "da" and len(danish["segments"]) == 1  # one segment past Omni's 290 s bound
