"""API key, rate limiting and the JSON access log."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from tests.conftest import form_upload, services_of, wait_until


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


def test_no_cross_origin_access_by_default(client) -> None:  # type: ignore[no-untyped-def]
    evil = {"Origin": "http://evil.example"}
    assert "Access-Control-Allow-Origin" not in client.get("/jobs", headers=evil).headers
    preflight = client.options("/jobs/" + "0" * 32, headers={**evil, "Access-Control-Request-Method": "DELETE"})
    assert "Access-Control-Allow-Origin" not in preflight.headers


def test_cors_opt_in_is_per_origin_and_never_with_credentials(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app(cors_origins="http://localhost:8080").test_client()
    allowed = client.get("/health", headers={"Origin": "http://localhost:8080"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "http://localhost:8080"
    assert "Access-Control-Allow-Credentials" not in allowed.headers
    assert "Access-Control-Allow-Origin" not in client.get("/jobs", headers={"Origin": "http://evil.example"}).headers


def test_a_foreign_host_is_403_json(client) -> None:  # type: ignore[no-untyped-def]
    rebound = client.get("/jobs", headers={"Host": "attacker.example:5000"})
    assert rebound.status_code == 403 and rebound.get_json()["code"] == "forbidden_host"
    assert "--allowed-hosts" in rebound.get_json()["error"]
    for host in ("localhost:5000", "127.0.0.1:5000", "[::1]:5000", "192.168.1.20", "[fe80::1]"):
        assert client.get("/health", headers={"Host": host}).status_code == 200, host


def test_allowed_hosts_names_a_proxy_s_name_or_turns_the_check_off(make_app) -> None:  # type: ignore[no-untyped-def]
    named = make_app(allowed_hosts="transcribe.example.org").test_client()
    assert named.get("/health", headers={"Host": "transcribe.example.org"}).status_code == 200
    assert named.get("/health", headers={"Host": "localhost"}).status_code == 200  # the container's healthcheck
    assert named.get("/health", headers={"Host": "other.example.org"}).status_code == 403
    anything = make_app(allowed_hosts="*").test_client()
    assert anything.get("/health", headers={"Host": "other.example.org"}).status_code == 200


def test_failed_key_attempts_count_against_the_rate_limit(make_app, caplog) -> None:  # type: ignore[no-untyped-def]
    client = make_app(api_key="the-key", rate_limit="3/minute").test_client()
    with caplog.at_level(logging.INFO, logger="serve.security"):
        statuses = [client.get("/jobs", headers={"X-API-Key": f"guess-{n}"}).status_code for n in range(4)]
    assert statuses == [401, 401, 401, 429]
    assert "guess-" not in caplog.text and "without a valid API key" in caplog.text  # logged, never the key


@pytest.mark.parametrize("job_id", ["a:b", "job:" + "0" * 28, "0" * 31, "G" * 32, "0" * 33])
def test_ill_formed_job_ids_are_404_before_any_lookup(client, job_id: str) -> None:  # type: ignore[no-untyped-def]
    for response in (client.get(f"/status/{job_id}"), client.get(f"/result/{job_id}"),
                     client.delete(f"/jobs/{job_id}")):
        assert response.status_code == 404 and response.get_json()["code"] == "not_found"


def test_playlists_are_refused(client, tmp_path: Path, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    playlist = tmp_path / "list.ffconcat"
    playlist.write_text(f"ffconcat version 1.0\nfile {audio_dir / 'speech.wav'}\n")
    refused = client.post("/transcribe/json", data=form_upload(playlist, "list.ffconcat"))
    assert refused.status_code == 415 and refused.get_json()["code"] == "unsupported_media"


def test_the_probe_accepts_audio_and_video_containers_only(tmp_path: Path, audio_dir: Path) -> None:
    from serve.audio import UndecodableAudio, probe

    shutil.copy(audio_dir / "speech.wav", tmp_path / "speech.wav")
    playlist = tmp_path / "list.ffconcat"  # a reference ffmpeg's concat demuxer would follow
    playlist.write_text("ffconcat version 1.0\nfile speech.wav\n")
    with pytest.raises(UndecodableAudio, match="concat files are not accepted"):
        probe(playlist)
    for name in ("speech.wav", "speech.mp3", "speech.m4a", "speech.ogg", "speech.flac", "speech_video.mp4"):
        assert probe(audio_dir / name).duration


KEY_A, KEY_B, ADMIN = {"X-API-Key": "key-a"}, {"Authorization": "Bearer key-b"}, {"X-API-Key": "the-admin"}


def finished_job(client, audio_dir: Path, key: dict) -> str:  # type: ignore[no-untyped-def]
    """An async job submitted with ``key``, once it has completed."""
    submitted = client.post("/transcribe/async", data=upload(audio_dir / "speech.wav"), headers=key)
    assert submitted.status_code == 202
    job_id = submitted.get_json()["job_id"]
    wait_until(lambda: client.get(f"/status/{job_id}", headers=key).get_json()["status"] != "processing", 60)
    assert client.get(f"/status/{job_id}", headers=key).get_json()["status"] == "completed"
    return job_id


def listed(client, key: dict, **query: str) -> set[str]:  # type: ignore[no-untyped-def]
    response = client.get("/jobs", headers=key, query_string=query)
    assert response.status_code == 200
    return {j["job_id"] for j in response.get_json()["jobs"]}


def test_each_key_sees_only_its_own_jobs_and_an_admin_sees_all(make_app, audio_dir: Path,  # type: ignore[no-untyped-def]
                                                               tmp_path: Path) -> None:
    from serve.jobs import Job, JobKind, new_job_id
    from serve.security import owner_id

    key_file = tmp_path / "keys.txt"
    key_file.write_text("# one key per line\nkey-b\n")
    app = make_app(api_key="key-a", api_key_file=key_file, admin_key="the-admin")
    client = app.test_client()
    a_job, b_job = finished_job(client, audio_dir, KEY_A), finished_job(client, audio_dir, KEY_B)
    store = services_of(app).store
    assert store.get(a_job).owner == owner_id("key-a") != "key-a"  # a hash of the key, never the key
    for url in (f"/status/{a_job}", f"/result/{a_job}", f"/result/{a_job}?format=srt"):
        assert client.get(url, headers=KEY_A).status_code == 200
        assert client.get(url, headers=ADMIN).status_code == 200
        other = client.get(url, headers=KEY_B)  # the same answer as for an id that does not exist
        assert other.status_code == 404 and other.get_json()["code"] == "not_found"
    assert client.delete(f"/jobs/{a_job}", headers=KEY_B).status_code == 404
    assert client.delete(f"/jobs/{a_job}", headers=KEY_A).status_code == 409  # found: it has finished
    assert client.delete(f"/jobs/{b_job}", headers=ADMIN).status_code == 409
    assert listed(client, KEY_A) == {a_job} and listed(client, KEY_B) == {b_job}
    assert listed(client, KEY_B, status="completed") == {b_job} and listed(client, KEY_B, status="failed") == set()
    assert listed(client, ADMIN) == {a_job, b_job}
    assert client.get("/jobs").status_code == 401 and client.get(f"/status/{a_job}").status_code == 401

    # A job from before keys were set has no owner: an admin's only.
    ownerless = Job(id=new_job_id(), kind=JobKind.ASYNC, input_path=tmp_path / "gone.wav", filename="old.wav",
                    params={})
    store.add(ownerless)
    assert client.get(f"/status/{ownerless.id}", headers=KEY_A).status_code == 404
    assert client.delete(f"/jobs/{ownerless.id}", headers=KEY_A).status_code == 404
    assert ownerless.id not in listed(client, KEY_A) | listed(client, KEY_B)
    assert client.get(f"/status/{ownerless.id}", headers=ADMIN).status_code == 200
    assert ownerless.id in listed(client, ADMIN)
    cancelled = client.delete(f"/jobs/{ownerless.id}", headers=ADMIN)  # an admin cancels any job
    assert cancelled.status_code == 200 and cancelled.get_json()["cancel_requested"] is True


def test_a_cancel_with_another_key_leaves_the_job_alone(make_app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from serve.jobs import Job, JobKind, new_job_id
    from serve.security import owner_id

    app = make_app(api_key="key-a,key-b")
    client = app.test_client()
    store = services_of(app).store
    job = Job(id=new_job_id(), kind=JobKind.ASYNC, input_path=tmp_path / "a.wav", filename="a.wav", params={},
              owner=owner_id("key-a"))
    store.add(job)
    assert client.delete(f"/jobs/{job.id}", headers=KEY_B).status_code == 404
    assert not services_of(app).jobs.cancel_requested(job.id)
    assert client.delete(f"/jobs/{job.id}", headers=KEY_A).status_code == 200


def test_the_openai_endpoint_records_the_key_s_owner(make_app, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from serve.security import owner_id

    app = make_app(api_key="key-a,key-b")
    client = app.test_client()
    response = client.post("/v1/audio/transcriptions", data={**upload(audio_dir / "speech.wav"), "model": "any"},
                           headers=KEY_B)
    assert response.status_code == 200
    store = services_of(app).store
    (job,) = store.list()
    assert job.owner == owner_id("key-b") and listed(client, KEY_B) == {job.id} and listed(client, KEY_A) == set()


def test_without_keys_every_job_stays_open(make_app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from serve.jobs import Job, JobKind, new_job_id

    app = make_app()
    client = app.test_client()
    owned = Job(id=new_job_id(), kind=JobKind.ASYNC, input_path=tmp_path / "a.wav", filename="a.wav", params={},
                owner="0" * 32)  # made while keys were configured
    services_of(app).store.add(owned)
    assert client.get(f"/status/{owned.id}").status_code == 200 and listed(client, {}) == {owned.id}


def test_upload_headers_are_checked_for_host_and_key_before_the_body_is_stored() -> None:
    from serve.config import Settings
    from serve.security import header_checks

    admit = header_checks(Settings(api_key="user-key", admin_key="admin-key"))
    assert admit("POST", "/transcribe", {"host": "evil.example", "x-api-key": "user-key"}).status == 403
    refused = admit("POST", "/transcribe", {"host": "localhost:5000"})
    assert refused.status == 401 and refused.code == "unauthorized" and "WWW-Authenticate" in refused.headers
    assert admit("POST", "/transcribe", {"host": "localhost", "x-api-key": "wrong"}).status == 401
    assert admit("POST", "/v1/audio/transcriptions", {"host": "127.0.0.1", "authorization": "Bearer user-key"}) is None
    assert admit("POST", "/transcribe", {"host": "[::1]:5000", "x-api-key": "admin-key"}) is None
    assert admit("POST", "/transcribe", {"x-api-key": "user-key"}) is None  # no Host (HTTP/1.0): the app judges
    open_server = header_checks(Settings(allowed_hosts="*"))
    assert open_server("POST", "/transcribe", {"host": "anything.example"}) is None
