"""The server's components, wired once per app: settings, model manager, transcriber, job queue, outputs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import current_app

from . import formats
from .batching import BatchingRecognizer
from .checkpoint import resolve_checkpoint
from .config import APP_DIR, Settings
from .engine import QwenOmniEngine
from .errors import failure_of
from .janitor import Janitor
from .job_store import SqliteJobStore
from .jobs import Job, JobControl, JobKind, JobQueue, JobStore, new_job_id
from .metrics import Metrics
from .model_manager import ModelManager
from .outputs import OutputStore
from .transcriber import Transcriber, TranscriptionParams
from .transcript import Transcript
from .uploads import Upload

if TYPE_CHECKING:  # the scale-out classes: services.py builds them only in that mode
    from redis import Redis

    from .distributed.cluster import Cluster, ClusterModels

log = logging.getLogger(__name__)

EXTENSION_KEY = "qwen_omni"
JOB_DATABASE = "jobs.sqlite3"

RENDERERS = {
    "txt": formats.to_txt,
    "srt": formats.to_srt,
    "vtt": formats.to_vtt,
}

# A job's transcription: (job, control) -> Transcript, here or on the scale-out workers.
TranscribeJob = Callable[[Job, JobControl], Transcript]


def engine_loader(settings: Settings):  # type: ignore[no-untyped-def]
    def load() -> BatchingRecognizer:
        checkpoint = resolve_checkpoint(settings.checkpoint_path, local_only=settings.local_model,
                                        models_dir=settings.models_dir, app_dir=APP_DIR)
        engine = QwenOmniEngine.load(checkpoint, device=settings.device, flash_attn2=settings.flash_attn2,
                                     low_vram=settings.low_vram)
        batch_size = settings.batch_size or engine.suggest_batch_size(settings.segment_duration,
                                                                      settings.max_new_tokens)
        log.info("generating up to %d segments per batch", batch_size)
        return BatchingRecognizer(engine, batch_size)

    return load


def local_transcription(transcriber: Transcriber) -> TranscribeJob:
    """Transcribe on this process's model (the default single-process mode)."""

    def transcribe(job: Job, control: JobControl) -> Transcript:
        return transcriber(job.input_path, TranscriptionParams(**job.params), expected_duration=job.audio_duration,
                           progress=control.report, should_stop=control.should_stop)

    return transcribe


def close_recognizer(recognizer: object) -> None:
    close = getattr(recognizer, "close", None)
    if close is not None:
        close()


@dataclass
class Services:
    settings: Settings
    models: ModelManager[BatchingRecognizer] | ClusterModels
    jobs: JobQueue
    outputs: OutputStore
    store: JobStore  # what request handlers read: in scale-out mode it fails fast (503) when Redis is down
    janitor: Janitor
    metrics: Metrics
    cluster: Cluster | None = None  # the scale-out workers, in the API role
    redis: Redis | None = None

    @classmethod
    def build(cls, settings: Settings) -> Services:
        for folder in (settings.inputs_dir, settings.temp_dir, settings.outputs_dir, settings.data_dir):
            Path(folder).mkdir(parents=True, exist_ok=True)
        metrics = Metrics()
        outputs = OutputStore(settings.outputs_dir)
        cluster = client = None
        if settings.role == "api":
            from .distributed.api import ApiBackend

            backend = ApiBackend.connect(settings)
            models, store, background_store = backend.models, backend.store, backend.background_store
            transcribe: TranscribeJob = backend.transcribe
            cluster, client = backend.cluster, backend.redis
        else:
            manager: ModelManager[BatchingRecognizer] = ModelManager(
                metrics.timed(metrics.load_seconds, engine_loader(settings)),
                unloader=metrics.timed(metrics.unload_seconds, close_recognizer), idle_timeout=settings.idle_timeout,
                name="Qwen2.5-Omni thinker",
            )
            transcribe = local_transcription(Transcriber(manager, scratch_dir=settings.temp_dir))
            models, store = manager, SqliteJobStore(Path(settings.data_dir) / JOB_DATABASE)
            background_store = store

        def run(job: Job, control: JobControl) -> tuple[dict[str, Any], str]:
            transcript = transcribe(job, control)
            name = outputs.save(RENDERERS[job.output_format](transcript), job.output_format)
            return transcript.to_dict(), name

        def finished(job: Job) -> None:
            job.input_path.unlink(missing_ok=True)
            metrics.job_finished(job)

        jobs = JobQueue(background_store, run, failure_of, max_queued=settings.queue_depth,
                        concurrency=settings.job_concurrency, on_finished=finished)
        janitor = Janitor(background_store, inputs_dir=settings.inputs_dir, temp_dir=settings.temp_dir,
                          outputs_dir=settings.outputs_dir, job_retention_hours=settings.job_retention_hours,
                          output_retention_hours=settings.output_retention_hours,
                          segments_dir=settings.segments_dir if settings.role == "api" else None)
        jobs.start()
        janitor.start()
        services = cls(settings=settings, models=models, jobs=jobs, outputs=outputs, store=store, janitor=janitor,
                       metrics=metrics, cluster=cluster, redis=client)
        metrics.watch(services)
        return services

    def submit(self, upload: Upload, params: TranscriptionParams, output_format: str, kind: JobKind,
               audio_duration: float | None) -> Job:
        job = Job(id=new_job_id(), kind=kind, input_path=upload.path, filename=upload.filename,
                  params=asdict(params), output_format=output_format, audio_duration=audio_duration)
        try:
            if self.cluster is not None:
                self.cluster.require_workers()  # no worker at all: say so now, as a failed model load would
            return self.jobs.submit(job)
        except Exception:
            upload.path.unlink(missing_ok=True)
            raise

    def preload_in_background(self) -> threading.Thread:
        def preload() -> None:
            try:
                self.models.preload()
            except Exception as exc:  # reported by /health and retried by the next request
                log.error("preloading the model failed: %s", exc)

        thread = threading.Thread(target=preload, name="model-preload", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.janitor.stop()
        self.jobs.stop()
        self.models.close()
        if self.redis is not None:
            self.redis.close()


def services() -> Services:
    return current_app.extensions[EXTENSION_KEY]
