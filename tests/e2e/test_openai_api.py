"""The OpenAI-compatible API, driven by the official ``openai`` Python package against the real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import srt

from serve.text import join_pieces
from tests.e2e.conftest import tiny_server
from tests.e2e.test_guide_examples import Server

pytestmark = pytest.mark.e2e

MODEL = "Qwen/Qwen2.5-Omni-7B-AWQ"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_awq_checkpoint: Path) -> Iterator[Server]:
    with tiny_server(tmp_path_factory.mktemp("openai"), tiny_awq_checkpoint, "--api-key", "sk-local-test") as server:
        yield server


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    # Strict: every answer must validate against the SDK's types (generated from OpenAI's spec), required
    # fields included, as a strict client would have it.
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-local-test", max_retries=0,
                         _strict_response_validation=True)


def test_models_lists_the_served_model_and_retrieves_it_and_its_aliases(client: openai.OpenAI) -> None:
    # The checkpoint folder's name, not the path the server reads it from.
    assert [m.id for m in client.models.list()] == ["Qwen2.5-Omni-7B-AWQ"]
    for name in ("Qwen2.5-Omni-7B-AWQ", "whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"):
        model = client.models.retrieve(name)
        assert model.id == name and model.object == "model" and model.owned_by == "qwen"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-3.5-turbo")
    assert missing.value.body["code"] == "model_not_found" and "Qwen2.5-Omni-7B-AWQ" in missing.value.body["message"]


def test_json(client: openai.OpenAI, audio_dir: Path) -> None:
    with open(audio_dir / "speech.mp3", "rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f, language="en",
                                                    prompt="Qwen, Omni", temperature=0.0)
    assert isinstance(result, openai.types.audio.Transcription) and result.text
    assert result.usage is not None and result.usage.type == "duration" and result.usage.seconds > 0


def test_text(client: openai.OpenAI, audio_dir: Path) -> None:
    with open(audio_dir / "speech.wav", "rb") as f:
        text = client.audio.transcriptions.create(model=MODEL, file=f, response_format="text")
    assert isinstance(text, str) and text.strip()


def test_srt_and_vtt(client: openai.OpenAI, audio_dir: Path) -> None:
    with open(audio_dir / "tone.wav", "rb") as f:
        subtitles = client.audio.transcriptions.create(model=MODEL, file=f, response_format="srt",
                                                       extra_body={"segment_duration": 2})
    cues = list(srt.parse(subtitles))
    assert cues and cues[0].start.total_seconds() == 0 and cues[-1].end.total_seconds() == pytest.approx(7.3)
    with open(audio_dir / "tone.wav", "rb") as f:
        webvtt = client.audio.transcriptions.create(model=MODEL, file=f, response_format="vtt",
                                                    extra_body={"segment_duration": 2})
    assert webvtt.startswith("WEBVTT\n\n00:00:00.000 --> ") and "00:00:07.300" in webvtt


def test_verbose_json_has_real_segment_times(client: openai.OpenAI, audio_dir: Path) -> None:
    with open(audio_dir / "tone.wav", "rb") as f:
        result = client.audio.transcriptions.create(model=MODEL, file=f, response_format="verbose_json",
                                                    timestamp_granularities=["segment"], language="zh",
                                                    extra_body={"segment_duration": 2})
    assert isinstance(result, openai.types.audio.TranscriptionVerbose)
    assert result.language == "chinese" and result.duration == pytest.approx(7.3)  # OpenAI's form of "zh"
    assert [(s.start, s.end) for s in result.segments] == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 7.3)]
    assert result.text == join_pieces([s.text for s in result.segments])
    for segment in result.segments:  # the spec's required fields, from the model's own scores
        assert segment.tokens and segment.avg_logprob <= 0 and 0 <= segment.no_speech_prob <= 1
    assert result.words is None


def test_verbose_json_reports_the_detected_language_when_none_is_named(client: openai.OpenAI,
                                                                        audio_dir: Path) -> None:
    from serve.languages import LANGUAGES

    with open(audio_dir / "speech.wav", "rb") as f:
        result = client.audio.transcriptions.create(model=MODEL, file=f, response_format="verbose_json")
    # Random weights write random text: whatever language it reads as, never "auto".
    assert result.language in {name.lower() for name in LANGUAGES.values()} | {"unknown"}


def test_streaming_sends_each_segment_as_it_finishes(client: openai.OpenAI, audio_dir: Path) -> None:
    with open(audio_dir / "long_tone.wav", "rb") as f:
        stream = client.audio.transcriptions.create(model=MODEL, file=f, stream=True,
                                                    extra_body={"segment_duration": 5})
        events = list(stream)
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    done = [e for e in events if e.type == "transcript.text.done"]
    # 25 s in 5 s segments: one delta per segment, except a segment whose (random-weight) text is blank.
    assert 2 <= len(deltas) <= 5 and len(done) == 1
    assert "".join(d.delta for d in deltas) == done[0].text


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"response_format": "docx"}, "response_format"),
    ({"timestamp_granularities": ["word"], "response_format": "verbose_json"}, "timestamp_granularities[]"),
    ({"language": "klingon"}, "language"),
    ({"temperature": 5}, "temperature"),
    ({"stream": True, "response_format": "srt"}, "stream"),
    ({"extra_body": {"task": "translate"}}, "task"),  # translations have their own endpoint
])
def test_errors_use_openais_shape(client: openai.OpenAI, audio_dir: Path, kwargs: dict, param: str) -> None:
    with open(audio_dir / "speech.wav", "rb") as f, pytest.raises(openai.BadRequestError) as exc:
        client.audio.transcriptions.create(model=MODEL, file=f, **kwargs)
    error = exc.value.body
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]
    if "timestamp_granularities" in kwargs:  # the flag that enables word times is named
        assert "--aligner-path" in error["message"]


def test_not_audio_and_wrong_key(server: Server, client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as exc:
        client.audio.transcriptions.create(model=MODEL, file=("notes.mp3", b"plain text, not audio" * 30))
    assert exc.value.status_code == 415 and exc.value.body["code"] == "unsupported_media"
    intruder = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        intruder.models.list()
    assert denied.value.body["type"] == "authentication_error"


def test_translations_into_english(client: openai.OpenAI, audio_dir: Path) -> None:
    with open(audio_dir / "speech.mp3", "rb") as f:
        result = client.audio.translations.create(model="whisper-1", file=f, prompt="Qwen", temperature=0.0)
    assert isinstance(result, openai.types.audio.Translation) and result.text
    with open(audio_dir / "tone.wav", "rb") as f:
        verbose = client.audio.translations.create(model=MODEL, file=f, response_format="verbose_json",
                                                   extra_body={"segment_duration": 2})
    assert isinstance(verbose, openai.types.audio.TranslationVerbose)
    assert verbose.language == "english" and verbose.duration == pytest.approx(7.3)
    assert [(s.start, s.end) for s in verbose.segments] == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 7.3)]
    assert verbose.model_extra["task"] == "translate" and "usage" not in verbose.model_extra
    with open(audio_dir / "tone.wav", "rb") as f:
        subtitles = client.audio.translations.create(model=MODEL, file=f, response_format="srt",
                                                     extra_body={"segment_duration": 2})
    assert [cue.end.total_seconds() for cue in srt.parse(subtitles)][-1] == pytest.approx(7.3)
    with open(audio_dir / "speech.wav", "rb") as f:
        text = client.audio.translations.create(model=MODEL, file=f, response_format="text")
    assert isinstance(text, str) and text.strip()


def test_native_translation_and_its_refusals(server: Server, audio_dir: Path) -> None:
    import requests

    def post(**fields: str) -> requests.Response:
        with open(audio_dir / "tone.wav", "rb") as f:
            return requests.post(f"{server.url}/transcribe/json", files={"file": ("tone.wav", f)}, data=fields,
                                 headers={"Authorization": "Bearer sk-local-test"}, timeout=120)

    body = post(task="translate", target_language="zh", language="en", segment_duration="2", enable_s2t="true").json()
    assert body["task"] == "translate" and body["target_language"] == "zh" and body["language"] == "zh"
    assert len(body["segments"]) == 4
    assert post(task="translate").json()["target_language"] == "en"  # OpenAI's direction by default
    for fields, param in (({"target_language": "de"}, "target_language"),
                          ({"task": "summarise"}, "task"),
                          ({"task": "translate", "target_language": "fil"}, "target_language"),
                          ({"task": "translate", "word_timestamps": "true"}, "word_timestamps")):
        refused = post(**fields)
        assert refused.status_code == 400 and refused.json()["param"] == param, refused.json()
    with open(audio_dir / "speech.wav", "rb") as f, pytest.raises(openai.BadRequestError) as exc:
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-local-test", max_retries=0).audio.translations.create(
            model=MODEL, file=f, response_format="verbose_json", extra_body={"timestamp_granularities[]": "word"})
    assert exc.value.body["param"] == "timestamp_granularities[]"
