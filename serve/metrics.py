"""Prometheus metrics (prometheus-client): requests, transcription work, the queue, the model, GPU memory.

GET /metrics serves them in the text exposition format. Counters and histograms are updated as things
happen; the queue, model and GPU figures are read at scrape time, so they are never stale.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .jobs import Job, JobStatus
from .model_manager import gpu_memory_bytes

if TYPE_CHECKING:
    from .services import Services

PREFIX = "qwen_omni"
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_RTF = (0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5)


class _LiveState(Collector):
    """Figures read from the running services at scrape time."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Any]:
        s = self.services
        yield GaugeMetricFamily(f"{PREFIX}_queue_depth", "Jobs waiting for the model", value=s.jobs.depth)
        yield GaugeMetricFamily(f"{PREFIX}_queue_capacity", "Jobs that may wait", value=s.jobs.max_queued)
        yield GaugeMetricFamily(f"{PREFIX}_running_jobs", "Jobs being transcribed", value=len(s.jobs.running_jobs))
        yield GaugeMetricFamily(f"{PREFIX}_segments_waiting", "Decoded segments of running jobs waiting for the model",
                                value=s.scheduler.waiting)
        yield GaugeMetricFamily(f"{PREFIX}_model_loaded", "1 when the model is in memory",
                                value=1 if s.models.loaded else 0)
        yield CounterMetricFamily(f"{PREFIX}_model_loads", "Times the model was loaded", value=s.models.load_count)
        yield CounterMetricFamily(f"{PREFIX}_model_unloads", "Times the model was unloaded",
                                  value=s.models.unload_count)
        if s.aligner is not None:
            yield GaugeMetricFamily(f"{PREFIX}_aligner_loaded", "1 when the forced aligner is in memory",
                                    value=1 if s.aligner.loaded else 0)
            yield GaugeMetricFamily(f"{PREFIX}_aligner_memory_bytes", "Memory the forced aligner's weights take",
                                    value=s.aligner.memory_bytes())
            yield CounterMetricFamily(f"{PREFIX}_aligned_segments", "Segments the forced aligner was asked to time",
                                      value=s.aligner.segments_aligned)
            yield CounterMetricFamily(f"{PREFIX}_alignment_seconds", "Time spent aligning words",
                                      value=s.aligner.align_seconds)
        if s.cluster is not None:
            yield from _worker_metrics(s.models.live_workers())
        allocated, reserved = gpu_memory_bytes(s.settings.device)
        yield GaugeMetricFamily(f"{PREFIX}_gpu_memory_allocated_bytes", "GPU memory held by tensors",
                                value=allocated)
        yield GaugeMetricFamily(f"{PREFIX}_gpu_memory_reserved_bytes", "GPU memory reserved by the allocator",
                                value=reserved)


def _worker_metrics(beats: list[dict[str, Any]]) -> Iterator[Any]:
    """Scale-out: each live worker's model and GPU figures, labelled by worker name."""
    yield GaugeMetricFamily(f"{PREFIX}_workers", "Live scale-out workers", value=len(beats))
    figures = (("model_loaded", "1 when the worker's model is in memory", lambda b: 1 if b.get("model_loaded") else 0),
               ("gpu_memory_allocated_bytes", "GPU memory held by tensors on the worker",
                lambda b: b.get("gpu_memory_allocated_bytes", 0.0)),
               ("gpu_memory_reserved_bytes", "GPU memory reserved on the worker",
                lambda b: b.get("gpu_memory_reserved_bytes", 0.0)))
    for name, help_text, value in figures:
        family = GaugeMetricFamily(f"{PREFIX}_worker_{name}", help_text, labels=["worker"])
        for beat in beats:
            family.add_metric([beat["name"]], value(beat))
        yield family


class Metrics:
    """One registry per app (tests build many apps in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(f"{PREFIX}_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.request_seconds = Histogram(f"{PREFIX}_http_request_duration_seconds", "HTTP request duration",
                                         ["route"], buckets=_SECONDS, registry=self.registry)
        self.jobs = Counter(f"{PREFIX}_jobs", "Finished jobs by final status", ["status"], registry=self.registry)
        self.processing_seconds = Histogram(f"{PREFIX}_transcription_processing_seconds",
                                            "Time from a job's start to its end", buckets=_SECONDS,
                                            registry=self.registry)
        self.audio_seconds = Counter(f"{PREFIX}_audio_seconds_transcribed", "Seconds of audio transcribed",
                                     registry=self.registry)
        self.real_time_factor = Histogram(f"{PREFIX}_real_time_factor",
                                          "Processing time over audio duration, per completed job", buckets=_RTF,
                                          registry=self.registry)
        self.load_seconds = Histogram(f"{PREFIX}_model_load_duration_seconds", "Model load duration",
                                      buckets=_SECONDS, registry=self.registry)
        self.unload_seconds = Histogram(f"{PREFIX}_model_unload_duration_seconds", "Model unload duration",
                                        buckets=_SECONDS, registry=self.registry)

    def watch(self, services: Services) -> None:
        self.registry.register(_LiveState(services))

    def timed(self, histogram: Histogram, action: Callable[..., Any]) -> Callable[..., Any]:
        """``action`` with its duration recorded in ``histogram`` (for model loads and unloads)."""

        def run(*args: Any) -> Any:
            started = time.monotonic()
            try:
                return action(*args)
            finally:
                histogram.observe(time.monotonic() - started)

        return run

    def job_finished(self, job: Job) -> None:
        self.jobs.labels(status=job.status.value).inc()
        if job.status is not JobStatus.COMPLETED or job.started_at is None or job.completed_at is None:
            return
        seconds = (job.completed_at - job.started_at).total_seconds()
        self.processing_seconds.observe(seconds)
        audio = (job.result or {}).get("duration") or 0.0
        if audio > 0:
            self.audio_seconds.inc(audio)
            self.real_time_factor.observe(seconds / audio)

    def install(self, app: Flask) -> None:
        @app.before_request
        def _start_timer() -> None:
            g.metrics_started = time.monotonic()

        @app.after_request
        def _count(response: Response) -> Response:
            route = request.url_rule.rule if request.url_rule else "unmatched"
            self.requests.labels(route=route, method=request.method, status=str(response.status_code)).inc()
            started = g.get("metrics_started")
            if started is not None:
                self.request_seconds.labels(route=route).observe(time.monotonic() - started)
            return response

        blueprint = Blueprint("metrics", __name__)

        @blueprint.get("/metrics")
        def metrics():  # type: ignore[no-untyped-def]
            """Prometheus metrics
            ---
            get:
              summary: Prometheus metrics (text exposition format)
              responses:
                200:
                  description: the metrics
                  content:
                    text/plain: {schema: {type: string}}
                401: Unauthorized
                429: RateLimited
            """
            return Response(generate_latest(self.registry), mimetype=CONTENT_TYPE_LATEST)

        app.register_blueprint(blueprint)
