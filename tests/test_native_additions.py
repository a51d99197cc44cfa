"""Native additions beside the guide's endpoints: VTT, /result, language and prompt, OpenCC variants, progress."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from serve.generation import DEFAULT_INSTRUCTION, instruction_for
from tests.conftest import form_upload, services_of, use_test_engine, wait_until


class RecordingRecognizer:
    """Test double: remembers the instruction it was given; answers in Simplified Chinese."""

    def __init__(self, delay: float = 0.0) -> None:
        self.instructions: list[str] = []
        self.delay = delay

    def transcribe(self, samples: np.ndarray, options) -> str:  # type: ignore[no-untyped-def]
        self.instructions.append(options.instruction)
        time.sleep(self.delay)
        return "这是转录的文本内容"


def use(app, engine) -> None:  # type: ignore[no-untyped-def]
    use_test_engine(app, engine)


def test_instructions_by_language_and_prompt() -> None:
    assert instruction_for() == DEFAULT_INSTRUCTION
    assert instruction_for("en") == "Transcribe the English audio into text."
    assert instruction_for("ja") == "Transcribe the Japanese audio into text."
    assert instruction_for("zh") == "请将这段中文语音转换为纯文本。"
    assert instruction_for("en", "Qwen,  Omni\n AWQ") == \
        "Transcribe the English audio into text. The audio may mention: Qwen, Omni AWQ"
    assert instruction_for("zh", "通义千问") == "请将这段中文语音转换为纯文本。 音频中可能出现这些词：通义千问"


def test_language_and_prompt_reach_the_model(make_app, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    engine = RecordingRecognizer()
    use(app, engine)
    client = app.test_client()
    client.post("/transcribe/json", data=form_upload(audio_dir / "speech.wav", language="zh", prompt="通义千问"))
    client.post("/transcribe/json", data=form_upload(audio_dir / "speech.wav", language="EN"))
    client.post("/transcribe/json", data=form_upload(audio_dir / "speech.wav"))
    assert engine.instructions == [instruction_for("zh", "通义千问"), instruction_for("en"), DEFAULT_INSTRUCTION]
    bad = client.post("/transcribe/json", data=form_upload(audio_dir / "speech.wav", language="xx"))
    assert bad.status_code == 400 and bad.get_json()["param"] == "language"
    long_prompt = client.post("/transcribe/json", data=form_upload(audio_dir / "speech.wav", prompt="w " * 600))
    assert long_prompt.status_code == 400 and long_prompt.get_json()["param"] == "prompt"


def test_the_real_engine_renders_each_instruction(app, client, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    for language in ("zh", "ja", "auto"):
        response = client.post("/transcribe/json", data=form_upload(audio_dir / "speech.wav", language=language,
                                                                     prompt="Qwen"))
        assert response.status_code == 200
    engine = services_of(app).models._model.engine
    assert {instruction_for(lang, "Qwen") for lang in ("zh", "ja", "auto")} <= {i for _, i in engine._prompts}


class SoftwareRecognizer(RecordingRecognizer):
    """Test double: a sentence whose Taiwanese phrasing differs (软件 -> 軟體 with s2twp, 軟件 elsewhere)."""

    def transcribe(self, samples: np.ndarray, options) -> str:  # type: ignore[no-untyped-def]
        super().transcribe(samples, options)
        return "这个软件的文本"


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, "这个软件的文本"),
    ({"enable_s2t": "true"}, "這個軟件的文本"),
    ({"opencc": "s2twp"}, "這個軟體的文本"),
    ({"opencc": "s2hk"}, "這個軟件的文本"),
    ({"enable_s2t": "true", "opencc": "t2s"}, "这个软件的文本"),
])
def test_opencc_variants(make_app, audio_dir: Path, fields: dict, expected: str) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    use(app, SoftwareRecognizer())
    body = app.test_client().post("/transcribe/json", data=form_upload(audio_dir / "speech.wav", **fields)).get_json()
    assert body["transcription"] == expected


def test_unknown_opencc_variant_is_400(client, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/transcribe/json", data=form_upload(audio_dir / "speech.wav", opencc="s2x"))
    assert response.status_code == 400 and response.get_json()["param"] == "opencc"


def test_vtt_endpoint(client, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/transcribe/vtt", data=form_upload(audio_dir / "tone.wav", "會議.wav",
                                                               segment_duration="2", temperature="0"))
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/vtt")
    assert "filename*=UTF-8''%E6%9C%83%E8%AD%B0.vtt" in response.headers["Content-Disposition"]
    body = response.get_data(as_text=True)
    assert body.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.000\n") and "--> 00:00:07.300" in body


def test_result_in_every_format(app, client, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    form = form_upload(audio_dir / "tone.wav", "tone.wav", segment_duration="2", temperature="0")
    job_id = client.post("/transcribe/async", data=form).get_json()["job_id"]
    services_of(app).jobs.wait(job_id, 30)
    as_json = client.get(f"/result/{job_id}").get_json()
    assert as_json["status"] == "success" and len(as_json["segments"]) == 4
    txt = client.get(f"/result/{job_id}?format=txt")
    assert txt.get_data(as_text=True) == as_json["transcription"] + "\n"
    assert txt.headers["Content-Disposition"] == 'attachment; filename="tone.txt"'
    assert client.get(f"/result/{job_id}?format=srt").get_data(as_text=True).startswith("1\n00:00:00,000 --> ")
    assert client.get(f"/result/{job_id}?format=vtt").get_data(as_text=True).startswith("WEBVTT")
    assert client.get(f"/result/{job_id}?format=pdf").status_code == 400
    assert client.get("/result/unknown").status_code == 404


def test_result_of_an_unfinished_job_is_409(make_app, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    use(app, RecordingRecognizer(delay=0.5))
    client = app.test_client()
    job_id = client.post("/transcribe/async", data=form_upload(audio_dir / "long_tone.wav",
                                                               segment_duration="5")).get_json()["job_id"]
    response = client.get(f"/result/{job_id}")
    assert response.status_code == 409 and "processing" in response.get_json()["error"]
    services_of(app).jobs.wait(job_id, 30)


def test_progress_has_an_eta_and_the_transcript_so_far(make_app, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    use(app, RecordingRecognizer(delay=0.3))
    client = app.test_client()
    job_id = client.post("/transcribe/async", data=form_upload(audio_dir / "long_tone.wav",
                                                               segment_duration="5")).get_json()["job_id"]
    wait_until(lambda: client.get(f"/status/{job_id}").get_json()["progress"]["segments_done"] >= 2)
    status = client.get(f"/status/{job_id}").get_json()
    assert status["status"] == "processing"
    progress = status["progress"]
    assert progress["segments_total"] == 5 and progress["audio_seconds_total"] == 25.0
    assert 0 < progress["eta_seconds"] < 10
    assert status["partial_transcription"].startswith("这是转录的文本内容这是转录的文本内容")
    services_of(app).jobs.wait(job_id, 30)
    final = client.get(f"/status/{job_id}").get_json()
    assert final["status"] == "completed" and "partial_transcription" not in final


def test_concurrent_status_reads_during_progress_writes(make_app, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    use(app, RecordingRecognizer(delay=0.05))
    client = app.test_client()
    job_id = client.post("/transcribe/async", data=form_upload(audio_dir / "long_tone.wav",
                                                               segment_duration="1")).get_json()["job_id"]
    errors = []

    def poll() -> None:
        with app.test_client() as c:
            for _ in range(40):
                if c.get(f"/status/{job_id}").status_code != 200:
                    errors.append("bad status")

    threads = [threading.Thread(target=poll) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    services_of(app).jobs.wait(job_id, 30)
    assert errors == []


def test_native_json_names_the_language(client, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    named = client.post("/transcribe/json", data=form_upload(audio_dir / "tone.wav", language="zh")).get_json()
    assert named["language"] == "zh"
    detected = client.post("/transcribe/json", data=form_upload(audio_dir / "tone.wav")).get_json()
    from serve.languages import LANGUAGES

    assert detected["language"] is None or detected["language"] in LANGUAGES  # random text: any code, or null
