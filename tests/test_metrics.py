"""GET /metrics: Prometheus text format, parsed with prometheus-client's own parser."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import form_upload, services_of, use_test_engine, wait_until


def scrape(client) -> dict[str, list]:  # type: ignore[no-untyped-def]
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    return {family.name: family.samples for family in text_string_to_metric_families(response.get_data(as_text=True))}


def value(samples: list, name: str, **labels: str) -> float:
    matches = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert matches, (name, labels)
    return matches[0]


def test_metrics_follow_the_work(make_app, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app(idle_timeout=0)
    client = app.test_client()
    before = scrape(client)
    assert value(before["qwen_omni_model_loaded"], "qwen_omni_model_loaded") == 0
    assert value(before["qwen_omni_queue_capacity"], "qwen_omni_queue_capacity") == 32
    assert client.post("/transcribe/json", data=form_upload(audio_dir / "tone.wav")).status_code == 200
    client.post("/transcribe/json", data=form_upload(audio_dir / "speech.wav", temperature="hot"))
    wait_until(lambda: services_of(app).models.unload_count == 1)
    after = scrape(client)
    requests = after["qwen_omni_http_requests"]
    assert value(requests, "qwen_omni_http_requests_total", route="/transcribe/json", status="200") == 1
    assert value(requests, "qwen_omni_http_requests_total", route="/transcribe/json", status="400") == 1
    assert value(after["qwen_omni_jobs"], "qwen_omni_jobs_total", status="completed") == 1
    audio = value(after["qwen_omni_audio_seconds_transcribed"], "qwen_omni_audio_seconds_transcribed_total")
    assert abs(audio - 7.3) < 0.01
    assert value(after["qwen_omni_real_time_factor"], "qwen_omni_real_time_factor_count") == 1
    assert value(after["qwen_omni_transcription_processing_seconds"],
                 "qwen_omni_transcription_processing_seconds_count") == 1
    assert value(after["qwen_omni_model_loads"], "qwen_omni_model_loads_total") == 1
    assert value(after["qwen_omni_model_unloads"], "qwen_omni_model_unloads_total") == 1
    assert value(after["qwen_omni_model_load_duration_seconds"], "qwen_omni_model_load_duration_seconds_count") == 1
    assert value(after["qwen_omni_gpu_memory_allocated_bytes"], "qwen_omni_gpu_memory_allocated_bytes") == 0
    assert value(after["qwen_omni_http_request_duration_seconds"], "qwen_omni_http_request_duration_seconds_count",
                 route="/transcribe/json") == 2


def test_queue_and_running_jobs_are_read_at_scrape_time(make_app, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app(concurrent_jobs=1)

    class Slow:
        """Test double: a slow model."""

        def transcribe(self, samples, options):  # type: ignore[no-untyped-def]
            time.sleep(0.5)
            return "x"

    use_test_engine(app, Slow())
    client = app.test_client()
    for _ in range(3):
        client.post("/transcribe/async", data=form_upload(audio_dir / "speech.wav"))
    wait_until(lambda: services_of(app).jobs.running_job is not None)
    live = scrape(client)
    assert value(live["qwen_omni_running_jobs"], "qwen_omni_running_jobs") == 1
    assert value(live["qwen_omni_queue_depth"], "qwen_omni_queue_depth") == 2
    assert value(live["qwen_omni_model_loaded"], "qwen_omni_model_loaded") == 1


def test_segments_waiting_for_the_model_are_counted(make_app, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    gate = threading.Event()

    class Gated:
        """Test double: holds each segment until the test opens the gate."""

        def transcribe(self, samples, options):  # type: ignore[no-untyped-def]
            gate.wait(10)
            return "x"

    use_test_engine(app, Gated())
    client = app.test_client()
    jobs = [client.post("/transcribe/async", data=form_upload(audio_dir / "speech.wav")).get_json()["job_id"]
            for _ in range(3)]
    # Three one-segment jobs run at once: one segment in the model, two waiting for it.
    wait_until(lambda: value(scrape(client)["qwen_omni_segments_waiting"], "qwen_omni_segments_waiting") == 2)
    assert value(scrape(client)["qwen_omni_running_jobs"], "qwen_omni_running_jobs") == 3
    gate.set()
    for job in jobs:
        assert services_of(app).jobs.wait(job, 30).status.value == "completed"
    assert value(scrape(client)["qwen_omni_segments_waiting"], "qwen_omni_segments_waiting") == 0


def test_metrics_need_the_api_key_when_one_is_set(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app(api_key="k").test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer k"}).status_code == 200
