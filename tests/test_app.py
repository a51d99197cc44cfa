"""The HTTP API through Flask's test client, on the real pipeline and the tiny AWQ checkpoint."""

from __future__ import annotations

import io
import json
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import unquote

import pytest
import srt

from serve.text import to_traditional
from tests.conftest import folder_is_empty, services_of, use_test_engine
from tests.conftest import form_upload as upload


def assert_no_leftovers(app) -> None:  # type: ignore[no-untyped-def]
    settings = services_of(app).settings
    assert folder_is_empty(settings.inputs_dir), list(settings.inputs_dir.iterdir())
    assert folder_is_empty(settings.temp_dir), list(settings.temp_dir.iterdir())


def assert_json_error(response, status: int, code: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    body = response.get_json()
    assert body["status"] == "error" and body["error"]
    assert "Traceback" not in response.get_data(as_text=True)
    if code:
        assert body["code"] == code
    return body


def test_health_reports_the_guides_fields_without_loading(app, client) -> None:  # type: ignore[no-untyped-def]
    body = client.get("/health").get_json()
    assert body["status"] == "ok"
    assert body["model_loaded"] is False
    assert body["gpu_available"] is False
    assert body["gpu_memory_allocated_gb"] == 0.0 and body["gpu_memory_reserved_gb"] == 0.0
    datetime.fromisoformat(body["timestamp"])
    assert services_of(app).models.load_count == 0


def test_transcribe_json(app, client, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    # Greedy: sampled, random weights may end at once (the guide's 0.1 is tested on the real server)
    response = client.post("/transcribe/json", data=upload(audio_dir / "speech.mp3", segment_duration="60",
                                                          temperature="0"))
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "success"
    assert isinstance(body["transcription"], str) and body["transcription"]
    datetime.fromisoformat(body["timestamp"])
    saved = services_of(app).settings.outputs_dir / body["output_file"]
    assert saved.read_text(encoding="utf-8") == body["transcription"] + "\n"
    assert body["filename"] == "speech.mp3" and body["duration"] > 1
    assert 0.0 <= body["segments"][0]["start"] < 0.3  # where the speech starts, after espeak's lead-in
    assert services_of(app).models.loaded
    assert_no_leftovers(app)


@pytest.mark.parametrize("name", ["speech.wav", "speech.m4a", "speech.flac", "speech.ogg", "speech_video.mp4"])
def test_any_format_ffmpeg_reads(client, audio_dir: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    assert client.post("/transcribe/json", data=upload(audio_dir / name)).status_code == 200


def test_transcribe_text_download_is_named_after_the_upload(app, client, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    greedy = {"temperature": "0"}
    text = client.post("/transcribe", data=upload(audio_dir / "speech.mp3", "audio.mp3", **greedy))
    assert text.status_code == 200
    assert text.headers["Content-Disposition"] == 'attachment; filename="audio.txt"'
    assert text.headers["Content-Type"] == "text/plain; charset=utf-8"
    as_json = client.post("/transcribe/json", data=upload(audio_dir / "speech.mp3", **greedy)).get_json()
    assert text.get_data(as_text=True) == as_json["transcription"] + "\n"
    assert (services_of(app).settings.outputs_dir / text.headers["X-Output-File"]).is_file()


def test_chinese_file_name_comes_back_intact(client, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/transcribe", data=upload(audio_dir / "speech.mp3", "会议记录 第一部分.mp3"))
    header = response.headers["Content-Disposition"]
    assert unquote(header.split("filename*=UTF-8''", 1)[1]) == "会议记录 第一部分.txt"


def test_srt_cues_cover_the_real_audio(client, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    # Greedy: random weights may leave a sampled segment blank, and a blank segment has no cue.
    response = client.post("/transcribe/srt", data=upload(audio_dir / "tone.wav", segment_duration="2",
                                                          temperature="0"))
    assert response.status_code == 200
    assert response.headers["Content-Disposition"] == 'attachment; filename="tone.srt"'
    cues = list(srt.parse(response.get_data(as_text=True)))
    assert [c.index for c in cues] == [1, 2, 3, 4]
    assert [c.start.total_seconds() for c in cues] == [0, 2, 4, 6]
    # 7.3 s of audio: the last cue ends at 7.3 s, not at the 8 s a fixed window would claim.
    assert cues[-1].end == timedelta(seconds=7.3)
    assert all(c.content.strip() for c in cues)


def test_silence_gives_an_empty_transcript_without_loading_the_model(app, client, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    body = client.post("/transcribe/json", data=upload(audio_dir / "silence.wav")).get_json()
    assert body["status"] == "success" and body["transcription"] == "" and body["duration"] == pytest.approx(4)
    assert client.post("/transcribe/srt", data=upload(audio_dir / "silence.wav")).get_data() == b""
    assert services_of(app).models.load_count == 0


def test_async_job_lifecycle(app, client, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    submitted = client.post("/transcribe/async", data=upload(audio_dir / "speech.mp3"))
    assert submitted.status_code == 202
    body = submitted.get_json()
    job_id = body["job_id"]
    assert body["status"] == "processing" and submitted.headers["Location"].endswith(f"/status/{job_id}")
    deadline = time.monotonic() + 60
    while True:
        status = client.get(f"/status/{job_id}").get_json()
        if status["status"] != "processing" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert status["status"] == "completed"
    assert status["transcription"] and status["output_file"]
    datetime.fromisoformat(status["completed_at"])
    assert (services_of(app).settings.outputs_dir / status["output_file"]).is_file()
    assert_no_leftovers(app)


def test_unknown_job_is_404(client) -> None:  # type: ignore[no-untyped-def]
    assert_json_error(client.get("/status/does-not-exist"), 404, "not_found")


def test_async_job_failure_is_reported(make_app, audio_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app(checkpoint_path=str(tmp_path / "missing"), local_model=True)
    client = app.test_client()
    job_id = client.post("/transcribe/async", data=upload(audio_dir / "speech.mp3")).get_json()["job_id"]
    services_of(app).jobs.wait(job_id, timeout=30)
    status = client.get(f"/status/{job_id}").get_json()
    assert status["status"] == "failed" and "not found locally" in status["error"]
    assert status["code"] == "model_unavailable"
    assert_no_leftovers(app)


def test_load_failure_is_503_then_recovers(make_app, audio_dir: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                                           tiny_awq_checkpoint: Path, copy_checkpoint) -> None:
    target = tmp_path / "later" / "model"
    app = make_app(checkpoint_path=str(target), local_model=True)
    client = app.test_client()
    body = assert_json_error(client.post("/transcribe/json", data=upload(audio_dir / "speech.mp3")), 503,
                             "model_unavailable")
    assert "not found locally" in body["error"]
    health = client.get("/health").get_json()
    assert health["model_loaded"] is False and "not found locally" in health["model_error"]
    copy_checkpoint(tiny_awq_checkpoint, target)
    assert client.post("/transcribe/json", data=upload(audio_dir / "speech.mp3")).status_code == 200
    assert client.get("/health").get_json()["model_error"] is None
    assert_no_leftovers(app)


def test_enable_s2t_converts_the_real_output(client, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    fields = {"temperature": "0", "max_new_tokens": "40", "segment_duration": "2"}
    plain = client.post("/transcribe/json", data=upload(audio_dir / "tone.wav", **fields)).get_json()
    converted = client.post("/transcribe/json", data=upload(audio_dir / "tone.wav", enable_s2t="true",
                                                            **fields)).get_json()
    assert converted["transcription"] == to_traditional(plain["transcription"])


class FakeRecognizer:
    """Test double: answers every segment with a Simplified Chinese sentence wrapped in a chatty lead-in."""

    def transcribe(self, samples, options) -> str:  # type: ignore[no-untyped-def]
        return "这段音频的原始内容是：“这是转录的文本内容”"


def test_enable_s2t_and_wrapper_stripping_through_the_pipeline(app, client, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    use_test_engine(app, FakeRecognizer())
    fields = {"segment_duration": "5"}
    plain = client.post("/transcribe/json", data=upload(audio_dir / "tone.wav", **fields)).get_json()
    assert plain["transcription"] == "这是转录的文本内容" * 2
    converted = client.post("/transcribe/json", data=upload(audio_dir / "tone.wav", enable_s2t="yes",
                                                            **fields)).get_json()
    assert converted["transcription"] == "這是轉錄的文本內容" * 2


@pytest.mark.parametrize(("fields", "param"), [
    ({"segment_duration": "abc"}, "segment_duration"), ({"segment_duration": "0"}, "segment_duration"),
    ({"segment_duration": "-3"}, "segment_duration"), ({"segment_duration": "99999"}, "segment_duration"),
    ({"max_new_tokens": "x"}, "max_new_tokens"), ({"max_new_tokens": "0"}, "max_new_tokens"),
    ({"max_new_tokens": "-5"}, "max_new_tokens"), ({"max_new_tokens": "1000000"}, "max_new_tokens"),
    ({"temperature": "hot"}, "temperature"), ({"temperature": "-1"}, "temperature"),
    ({"temperature": "100"}, "temperature"), ({"repetition_penalty": "x"}, "repetition_penalty"),
    ({"repetition_penalty": "0"}, "repetition_penalty"), ({"repetition_penalty": "-2"}, "repetition_penalty"),
    ({"repetition_penalty": "50"}, "repetition_penalty"), ({"enable_s2t": "perhaps"}, "enable_s2t"),
])
def test_bad_parameters_are_400(app, client, audio_dir: Path, fields: dict, param: str) -> None:  # type: ignore[no-untyped-def]
    body = assert_json_error(client.post("/transcribe/json", data=upload(audio_dir / "speech.mp3", **fields)),
                             400, "invalid_parameter")
    assert body["param"] == param
    assert_no_leftovers(app)
    assert services_of(app).models.load_count == 0


def test_missing_and_empty_files_are_400(app, client) -> None:  # type: ignore[no-untyped-def]
    assert_json_error(client.post("/transcribe/json", data={"segment_duration": "10"}), 400, "missing_file")
    assert_json_error(client.post("/transcribe/json", data={"file": "just text"}), 400, "missing_file")
    assert_json_error(client.post("/transcribe/json", json={"file": "x"}), 400, "missing_file")
    assert_json_error(client.post("/transcribe/json", data={"file": (io.BytesIO(b""), "a.mp3")}), 400, "empty_file")
    assert_no_leftovers(app)


@pytest.mark.parametrize("endpoint", ["/transcribe", "/transcribe/json", "/transcribe/srt", "/transcribe/async"])
def test_not_audio_is_415(app, client, endpoint: str) -> None:  # type: ignore[no-untyped-def]
    data = {"file": (io.BytesIO(b"hello, I am a text file\n" * 100), "notes.mp3")}
    body = assert_json_error(client.post(endpoint, data=data), 415, "unsupported_media")
    assert "decoded" in body["error"] and "/inputs/" not in body["error"]
    assert_no_leftovers(app)


def test_upload_over_the_limit_is_413(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(max_upload_size="1M")
    client = app.test_client()
    data = {"file": (io.BytesIO(b"\0" * (2 * 1024 * 1024)), "big.wav")}
    body = assert_json_error(client.post("/transcribe/json", data=data), 413, "payload_too_large")
    assert "1 MiB" in body["error"]
    assert_no_leftovers(app)


def test_wrong_method_and_unknown_route_are_json(client) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/transcribe/json")
    body = assert_json_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"] and "POST" in body["error"]
    assert_json_error(client.post("/health"), 405, "method_not_allowed")
    assert_json_error(client.get("/no/such/route"), 404, "not_found")


def test_unexpected_errors_are_500_without_details(app, client, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    class ExplodingRecognizer:
        """Test double whose transcribe raises with an internal detail in the message."""

        def transcribe(self, samples, options):  # type: ignore[no-untyped-def]
            raise RuntimeError("secret internal path /srv/model/weights.bin")

    use_test_engine(app, ExplodingRecognizer())
    body = assert_json_error(client.post("/transcribe/json", data=upload(audio_dir / "speech.mp3")), 500,
                             "transcription_failed")
    assert "secret" not in json.dumps(body)
    assert client.get("/health").get_json()["status"] == "ok"
    assert services_of(app).models.users == 0
    assert_no_leftovers(app)


def test_concurrent_requests_get_distinct_outputs(app, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    results: list[dict] = []

    def post() -> None:
        with app.test_client() as c:
            results.append(c.post("/transcribe/json", data=upload(audio_dir / "speech.wav")).get_json())

    threads = [threading.Thread(target=post) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = [r["output_file"] for r in results]
    assert len(names) == 6 and len(set(names)) == 6
    outputs = services_of(app).settings.outputs_dir
    assert sorted(p.name for p in outputs.iterdir()) == sorted(names)
    assert_no_leftovers(app)


def test_idle_unload_waits_for_the_running_request(make_app, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app(idle_timeout=0.3)
    client = app.test_client()
    models = services_of(app).models
    started = time.monotonic()
    # 25 one-second segments: the request lasts far longer than the idle timeout.
    response = client.post("/transcribe/json", data=upload(audio_dir / "long_tone.wav", segment_duration="1",
                                                              temperature="0"))  # greedy: no blank segment by chance
    assert response.status_code == 200 and len(response.get_json()["segments"]) == 25
    assert time.monotonic() - started > 0.3
    assert models.load_count == 1 and models.unload_count == 0  # never unloaded mid-request
    deadline = time.monotonic() + 5
    while models.loaded and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not models.loaded and models.unload_count == 1
    assert client.post("/transcribe/json", data=upload(audio_dir / "speech.wav")).status_code == 200
    assert models.load_count == 2  # reloaded after the unload


def test_zero_idle_timeout_unloads_after_each_request(make_app, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app(idle_timeout=0)
    client = app.test_client()
    for _ in range(2):
        assert client.post("/transcribe/json", data=upload(audio_dir / "speech.wav")).status_code == 200
        assert client.get("/health").get_json()["model_loaded"] is False
    assert services_of(app).models.load_count == 2


def test_health_answers_while_a_transcription_runs(app, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    done = threading.Event()

    def long_request() -> None:
        with app.test_client() as c:
            c.post("/transcribe/json", data=upload(audio_dir / "long_tone.wav", segment_duration="1",
                                                   max_new_tokens="64"))
        done.set()

    threading.Thread(target=long_request).start()
    client = app.test_client()
    seen_running = False
    while not done.is_set():
        started = time.monotonic()
        body = client.get("/health").get_json()
        assert time.monotonic() - started < 1.0
        seen_running = seen_running or body["running_job"] is not None
        time.sleep(0.05)
    assert seen_running


def test_cors_allows_browser_fetch_from_an_opted_in_origin(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app(cors_origins="http://example.test").test_client()
    preflight = client.options("/transcribe/json", headers={"Origin": "http://example.test",
                                                            "Access-Control-Request-Method": "POST"})
    assert preflight.headers["Access-Control-Allow-Origin"] == "http://example.test"
    response = client.get("/health", headers={"Origin": "http://example.test"})
    assert response.headers["Access-Control-Allow-Origin"] == "http://example.test"


def test_preload_loads_at_start(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(preload=True)
    models = services_of(app).models
    deadline = time.monotonic() + 30
    while not models.loaded and time.monotonic() < deadline:
        time.sleep(0.05)
    assert models.loaded and models.load_count == 1
