"""The API role in-process, on a real Redis: /health from the workers' heartbeats, and 503 while Redis is down."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis
from local_redis import RedisServer

from serve.distributed import worker
from serve.distributed.cluster import NO_WORKERS, heartbeat_key
from serve.distributed.worker import WorkerContext
from serve.model_manager import ModelManager
from tests.conftest import folder_is_empty, form_upload
from tests.test_metrics import scrape, value


def test_health_lists_the_live_workers_and_forgets_a_silent_one(make_app, redis_url: str, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_app(role="api", redis_url=redis_url, segments_dir=tmp_path / "segments").test_client()
    health = client.get("/health").get_json()
    assert health["status"] == "ok" and health["role"] == "api" and health["redis"] == "ok"
    assert health["workers"] == [] and not health["model_loaded"] and health["model_error"] == NO_WORKERS

    # A worker's own heartbeat, as its heartbeat thread sends it (its model is not loaded: no loader runs).
    monkeypatch.setattr(worker, "HEARTBEAT_TTL", 1)
    context = WorkerContext(name="gpu-a", models=ModelManager(lambda: None), redis=redis.Redis.from_url(redis_url),
                            segments_dir=tmp_path / "segments", rq_name="gpu-a.1")
    context.heartbeat()
    (listed,) = client.get("/health").get_json()["workers"]
    assert listed["name"] == "gpu-a" and listed["device"] == "cpu" and listed["model_state"] == "unloaded"
    assert listed["last_seen"] and listed["current_task"] is None
    metrics = scrape(client)
    assert value(metrics["qwen_omni_workers"], "qwen_omni_workers") == 1
    assert value(metrics["qwen_omni_worker_model_loaded"], "qwen_omni_worker_model_loaded", worker="gpu-a") == 0

    time.sleep(1.5)  # no heartbeat for longer than its expiry: the worker is gone
    assert client.get("/health").get_json()["workers"] == []


def test_redis_down_answers_503_loses_no_upload_and_recovers(make_app, audio_dir: Path,  # type: ignore[no-untyped-def]
                                                            tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    app = make_app(role="api", redis_url=server.url, segments_dir=tmp_path / "segments")
    client = app.test_client()
    assert client.get("/health").status_code == 200
    server.stop()
    try:
        started = time.monotonic()
        response = client.post("/transcribe/json", data=form_upload(audio_dir / "speech.wav"))
        assert response.status_code == 503 and response.headers["Retry-After"] == "5"
        assert response.get_json() == {"status": "error", "error": "the job store (Redis) is unavailable; retry "
                                       "shortly", "code": "store_unavailable"}
        assert time.monotonic() - started < 5  # refused fast, not after Redis's retries
        assert folder_is_empty(tmp_path / "inputs")  # the upload was not kept for a job that does not exist
        openai = client.post("/v1/audio/transcriptions", data=form_upload(audio_dir / "speech.wav", model="x"))
        assert openai.status_code == 503 and openai.get_json()["error"]["code"] == "store_unavailable"
        for path in ("/jobs", "/status/" + "a" * 32, "/result/" + "a" * 32):
            assert client.get(path).status_code == 503, path
        health = client.get("/health")
        assert health.status_code == 503 and health.get_json()["status"] == "unavailable"
        assert health.get_json()["redis"].startswith("unreachable")
        assert client.get("/metrics").status_code == 200  # a scrape still works, without the workers
    finally:
        server.start()
    try:
        assert client.get("/health").get_json()["status"] == "ok"  # no restart needed
        assert client.get("/jobs").status_code == 200
    finally:
        server.stop()  # the restarted Redis, which would outlive the test run


def test_with_no_live_worker_a_request_is_refused_at_once_and_its_upload_removed(  # type: ignore[no-untyped-def]
        make_app, redis_url: str, audio_dir: Path, tmp_path: Path) -> None:
    client = make_app(role="api", redis_url=redis_url, segments_dir=tmp_path / "segments").test_client()
    for path in ("/transcribe/json", "/transcribe/async"):
        response = client.post(path, data=form_upload(audio_dir / "speech.wav"))
        assert response.status_code == 503 and response.headers["Retry-After"] == "30", path
        assert response.get_json()["code"] == "no_workers"
    assert folder_is_empty(tmp_path / "inputs")
    assert client.get("/jobs").get_json()["jobs"] == []  # nothing queued for nobody


def test_a_worker_refuses_to_start_beside_a_live_namesake(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client = redis.Redis.from_url(redis_url)
    monkeypatch.setattr(worker, "HEARTBEAT_TTL", 0)  # do not wait for the namesake's heartbeat to expire
    client.set(heartbeat_key("gpu-a"), json.dumps({"name": "gpu-a", "host": "elsewhere", "pid": 1}), ex=60)
    with pytest.raises(SystemExit, match=r"another worker named 'gpu-a' is alive.*own --worker-name"):
        worker._claim(client, "gpu-a")
    client.delete(heartbeat_key("gpu-a"))  # a namesake whose heartbeat expired: the name is free again
    worker._claim(client, "gpu-a")


def test_a_job_id_that_would_reach_another_redis_key_is_404(make_app, redis_url: str,  # type: ignore[no-untyped-def]
                                                            tmp_path: Path) -> None:
    client = make_app(role="api", redis_url=redis_url, segments_dir=tmp_path / "segments").test_client()
    redis.Redis.from_url(redis_url).set("qwen:job:x:progress", "{}")  # a key an id with ':' would have read
    for job_id in ("x:progress", "x", "0" * 32):
        response = client.get(f"/status/{job_id}")
        assert response.status_code == 404 and response.get_json()["code"] == "not_found"


def test_the_api_role_authenticates_to_a_redis_that_requires_a_password(settings_factory,  # type: ignore[no-untyped-def]
                                                                         tmp_path: Path) -> None:
    from serve.app import create_app

    server = RedisServer(tmp_path / "redis", password="s3cret-for-test").start()
    try:
        with pytest.raises(redis.AuthenticationError):  # what the compose file's Redis says to a stranger
            redis.Redis.from_url(server.url).ping()
        app = create_app(settings_factory(role="api", redis_url=server.url, redis_password="s3cret-for-test",
                                          segments_dir=tmp_path / "segments"))
        try:
            health = app.test_client().get("/health").get_json()
            assert health["status"] == "ok" and health["redis"] == "ok"
        finally:
            app.extensions["qwen_omni"].close()
    finally:
        server.stop()
