"""API key, rate limiting and the JSON access log."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.conftest import form_upload


def upload(path: Path) -> dict:
    return form_upload(path, "secret-meeting.wav")


def test_api_key_is_required_except_for_health(make_app, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app(api_key="first-key, second-key")
    client = app.test_client()
    assert client.get("/health").status_code == 200
    missing = client.post("/transcribe/json", data=upload(audio_dir / "speech.wav"))
    assert missing.status_code == 401 and missing.get_json()["code"] == "unauthorized"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/jobs", headers={"X-API-Key": "first-key-but-longer"}).status_code == 401
    assert client.get("/jobs", headers={"Authorization": "Bearer first-key"}).status_code == 200
    assert client.get("/jobs", headers={"X-API-Key": "second-key"}).status_code == 200
    ok = client.post("/transcribe/json", data=upload(audio_dir / "speech.wav"), headers={"X-API-Key": "first-key"})
    assert ok.status_code == 200
    # Unknown routes answer 401 too: without a key, nothing about the API is revealed.
    assert client.get("/status/whatever").status_code == 401
    preflight = client.options("/transcribe/json", headers={"Origin": "http://x.test",
                                                            "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 200


def test_rate_limit_per_client(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(rate_limit="3/minute")
    client = app.test_client()
    statuses = [client.get("/jobs").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = client.get("/jobs")
    assert limited.get_json()["code"] == "rate_limited" and int(limited.headers["Retry-After"]) > 0
    assert all(client.get("/health").status_code == 200 for _ in range(10))  # monitors are never limited


def test_bad_rate_limit_is_a_settings_error() -> None:
    from pydantic import ValidationError

    from serve.config import Settings

    with pytest.raises(ValidationError):
        Settings(rate_limit="lots")


def test_access_log_is_json_without_the_transcript(app, client, audio_dir: Path,  # type: ignore[no-untyped-def]
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="serve.access")
    response = client.post("/transcribe/json", data=upload(audio_dir / "speech.wav"),
                           headers={"X-Request-ID": "abc-123"})
    transcript = response.get_json()["transcription"]
    assert response.headers["X-Request-ID"] == "abc-123"
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "serve.access"]
    (record,) = [r for r in records if r["route"] == "/transcribe/json"]
    assert record["request_id"] == "abc-123" and record["status"] == 200 and record["client"]
    assert record["audio_seconds"] > 1 and record["duration_ms"] > 0 and record["job_id"]
    text = caplog.text
    assert transcript not in text and "secret-meeting" not in text
    client.get("/health", headers={"X-Request-ID": "bad id with spaces"})
    last = json.loads([r for r in caplog.records if r.name == "serve.access"][-1].getMessage())
    assert last["request_id"] != "bad id with spaces" and len(last["request_id"]) == 32
