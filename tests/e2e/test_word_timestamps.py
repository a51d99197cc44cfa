"""Word timestamps through the real server: a tiny random Qwen3-ForcedAligner beside the tiny Omni model.

Random weights give random (but well-formed) times: these tests check the plumbing (the words cover the
text, lie inside their segment, never go back; subtitles parse; the official client reads ``words``; the
fallbacks), never the accuracy.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests
import srt
import webvtt
from transformers import AutoProcessor

from serve.transcript import Word, word_spans
from tests.e2e.conftest import tiny_server
from tests.e2e.test_guide_examples import Server

pytestmark = pytest.mark.e2e

MODEL = "Qwen/Qwen2.5-Omni-7B-AWQ"
GREEDY = {"temperature": "0", "segment_duration": "2"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_awq_checkpoint: Path, tiny_aligner: Path) -> Iterator[Server]:
    with tiny_server(tmp_path_factory.mktemp("words"), tiny_awq_checkpoint, "--aligner-path",
                     str(tiny_aligner)) as server:
        yield server


@pytest.fixture(scope="module")
def split_words(tiny_aligner: Path):  # type: ignore[no-untyped-def]
    """The aligner's own word splitting (the processor's), to check that the words cover the text."""
    return AutoProcessor.from_pretrained(tiny_aligner).split_words_for_alignment


def post(server: Server, path: str, audio: Path, **fields: str) -> requests.Response:
    with audio.open("rb") as f:
        return requests.post(f"{server.url}{path}", files={"file": (audio.name, f)}, data=fields, timeout=120)


def check_words(segment: dict, split_words) -> None:  # type: ignore[no-untyped-def]
    words = [Word(w["word"], w["start"], w["end"]) for w in segment["words"]]
    assert [w.word for w in words] == split_words(segment["text"])  # every word of the text, in order
    assert all(span is not None for span in word_spans(segment["text"], tuple(words)))
    times = [t for w in words for t in (w.start, w.end)]
    assert times == sorted(times)
    assert all(segment["start"] <= t <= segment["end"] for t in times)


def test_native_json_words_cover_each_segment_inside_its_time(server: Server, audio_dir: Path, split_words) -> None:  # type: ignore[no-untyped-def]
    body = post(server, "/transcribe/json", audio_dir / "tone.wav", word_timestamps="true", **GREEDY).json()
    segments = body["segments"]
    assert segments and all("words" in s for s in segments) and "word_timestamps_note" not in body
    for segment in segments:
        check_words(segment, split_words)
    health = server.health()
    assert health["aligner"]["configured"] and health["aligner"]["loaded"] and health["aligner"]["memory_gb"] > 0
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    assert re.search(r"^qwen_omni_aligner_loaded 1\.0$", metrics, re.M)
    assert re.search(r"^qwen_omni_aligned_segments_total [1-9]", metrics, re.M)
    # Without the option the JSON answer is not aligned (it would cost time for nothing it shows).
    plain = post(server, "/transcribe/json", audio_dir / "tone.wav", **GREEDY).json()
    assert [s["text"] for s in plain["segments"]] == [s["text"] for s in segments]
    assert all("words" not in s for s in plain["segments"])


def test_subtitles_are_cut_on_the_aligned_words(server: Server, audio_dir: Path) -> None:
    words = [w for s in post(server, "/transcribe/json", audio_dir / "tone.wav", word_timestamps="true",
                             **GREEDY).json()["segments"] for w in s["words"]]
    response = post(server, "/transcribe/srt", audio_dir / "tone.wav", **GREEDY)
    cues = list(srt.parse(response.text, ignore_errors=False))
    assert cues and "X-Word-Timestamps-Note" not in response.headers
    starts = {w["start"] for w in words}
    # Greedy decoding: the same words as the JSON answer, and each cue starts where one of them does.
    assert all(round(c.start.total_seconds(), 3) in starts for c in cues)
    vtt = post(server, "/transcribe/vtt", audio_dir / "tone.wav", word_timestamps="true", **GREEDY).text
    captions = webvtt.from_buffer(io.StringIO(vtt))
    assert len(captions) == len(cues)


def test_an_async_job_s_result_in_every_format(server: Server, audio_dir: Path, split_words) -> None:  # type: ignore[no-untyped-def]
    job = post(server, "/transcribe/async", audio_dir / "long_tone.wav", temperature="0",
               segment_duration="5").json()["job_id"]
    deadline = time.monotonic() + 120
    while requests.get(f"{server.url}/status/{job}", timeout=10).json()["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert all("words" not in s for s in requests.get(f"{server.url}/result/{job}", timeout=10).json()["segments"])
    result = requests.get(f"{server.url}/result/{job}?words=true", timeout=10).json()
    for segment in result["segments"]:  # aligned by default: a job's result may be fetched as subtitles
        check_words(segment, split_words)
    assert list(srt.parse(requests.get(f"{server.url}/result/{job}?format=srt", timeout=10).text,
                          ignore_errors=False))
    word_vtt = requests.get(f"{server.url}/result/{job}?format=vtt&words=true", timeout=10).text
    cue_vtt = requests.get(f"{server.url}/result/{job}?format=vtt", timeout=10).text
    # The same cues; random weights may put all of a cue's words at one instant (then it has no inner tags).
    assert webvtt.from_string(word_vtt) and re.sub(r"<\d\d:\d\d:\d\d\.\d\d\d>", "", word_vtt) == cue_vtt


def test_a_language_the_aligner_does_not_cover_falls_back_and_says_so(server: Server, audio_dir: Path) -> None:
    response = post(server, "/transcribe/json", audio_dir / "tone.wav", word_timestamps="true", language="ar",
                    **GREEDY)
    assert response.status_code == 200
    body = response.json()
    assert body["segments"] and all("words" not in s for s in body["segments"])
    assert "does not cover Arabic" in body["word_timestamps_note"]
    subtitles = post(server, "/transcribe/srt", audio_dir / "tone.wav", language="ar", **GREEDY)
    assert list(srt.parse(subtitles.text)) and "Arabic" in subtitles.headers["X-Word-Timestamps-Note"]


def test_the_official_client_reads_words_with_strict_validation(server: Server, audio_dir: Path) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0,
                           _strict_response_validation=True)
    with open(audio_dir / "tone.wav", "rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json",
                                                    timestamp_granularities=["word", "segment"], temperature=0,
                                                    extra_body={"segment_duration": 2})
    assert isinstance(result, openai.types.audio.TranscriptionVerbose) and result.words and result.segments
    assert [w.start for w in result.words] == sorted(w.start for w in result.words)
    assert all(0 <= w.start <= w.end <= result.duration for w in result.words)
    assert all(s.tokens and s.avg_logprob <= 0 and 0 <= s.no_speech_prob <= 1 for s in result.segments)
