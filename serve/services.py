"""The server's components, wired once per app: settings, model manager, transcriber, job queue, outputs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from flask import current_app

from . import formats
from .batching import BatchRunner
from .config import Settings
from .errors import failure_of
from .janitor import Janitor
from .job_store import SqliteJobStore
from .jobs import ABORT_SECONDS, Job, JobControl, JobInterrupted, JobKind, JobOutcome, JobQueue, JobStore, new_job_id
from .local import MODEL_NAME, LocalDestination, aligner_slot, close_runner, engine_loader
from .metrics import Metrics
from .model_manager import ModelManager, gpu_available
from .outputs import OutputStore
from .scheduler import FairScheduler
from .transcriber import (
    Destination,
    ResumePoint,
    Transcriber,
    TranscriptionParams,
    TranscriptionPaused,
    TranscriptionStopped,
)
from .transcript import Piece, Transcript
from .uploads import Upload
from .word_alignment import AlignerSlot

if TYPE_CHECKING:  # the scale-out classes: services.py builds them only in that mode
    from redis import Redis

    from .distributed.cluster import Cluster, ClusterModels
    from .distributed.dispatch import RemoteDestination

log = logging.getLogger(__name__)

EXTENSION_KEY = "qwen_omni"
JOB_DATABASE = "jobs.sqlite3"

# A job's transcription: (job, control) -> Transcript, here or on the scale-out workers.
TranscribeJob = Callable[[Job, JobControl], Transcript]


def job_transcription(transcriber: Transcriber) -> TranscribeJob:
    """A job through the pipeline; a synchronous job's client waits on the connection (it goes first)."""

    def transcribe(job: Job, control: JobControl) -> Transcript:
        done = control.progress  # a resumed job goes on from its last finished segment
        resume = ResumePoint(done.segments_done, tuple(Piece.from_dict(p) for p in done.partial))
        try:
            return transcriber(job.input_path, TranscriptionParams(**job.params), job_id=job.id,
                               waiting_client=job.kind is JobKind.SYNC, expected_duration=job.audio_duration,
                               progress=control.report, should_stop=control.should_stop,
                               should_pause=control.should_pause, resume=resume)
        except (TranscriptionStopped, TranscriptionPaused) as exc:
            raise JobInterrupted("the job stopped when asked to") from exc

    return transcribe


@dataclass
class Services:
    settings: Settings
    models: ModelManager[BatchRunner] | ClusterModels
    scheduler: FairScheduler  # every running job's segments, waiting for the model
    jobs: JobQueue
    outputs: OutputStore
    store: JobStore  # what request handlers read: in scale-out mode it fails fast (503) when Redis is down
    janitor: Janitor
    metrics: Metrics
    cluster: Cluster | None = None  # the scale-out workers, in the API role
    redis: Redis | None = None
    dispatcher: RemoteDestination | None = None  # hands segments to the workers, in the API role
    aligner: AlignerSlot | None = None  # word times, beside this process's model (the workers hold their own)
    gpu_available: bool = False  # this process can use a CUDA GPU (single-process role)
    _shutdown: threading.Thread | None = field(default=None, init=False, repr=False)
    _shutdown_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        for folder in (settings.inputs_dir, settings.temp_dir, settings.outputs_dir, settings.data_dir):
            Path(folder).mkdir(parents=True, exist_ok=True)
        metrics = Metrics()
        outputs = OutputStore(settings.outputs_dir)
        cluster = client = dispatcher = aligner = None
        gpu = False
        destination: Destination
        if settings.role == "api":
            from .distributed.api import ApiBackend

            backend = ApiBackend.connect(settings)
            models, store, background_store = backend.models, backend.store, backend.background_store
            cluster, client = backend.cluster, backend.redis
            destination = dispatcher = backend.destination
            scheduler = dispatcher.scheduler
        else:
            scheduler = FairScheduler()
            aligner = aligner_slot(settings)
            gpu = gpu_available()  # imports torch now, at start: this process loads the model anyway
            manager: ModelManager[BatchRunner] = ModelManager(
                metrics.timed(metrics.load_seconds, engine_loader(settings, scheduler, aligner)),
                unloader=metrics.timed(metrics.unload_seconds, close_runner), idle_timeout=settings.idle_timeout,
                name=MODEL_NAME,
            )
            destination = LocalDestination(manager, scheduler)
            models, store = manager, SqliteJobStore(Path(settings.data_dir) / JOB_DATABASE)
            background_store = store
        transcribe = job_transcription(Transcriber(destination, scratch_dir=settings.temp_dir))

        def run(job: Job, control: JobControl) -> JobOutcome:
            transcript = transcribe(job, control)
            try:
                text = formats.render(job.output_format, transcript,
                                      word_level=bool(job.params.get("word_timestamps")))
                name = outputs.save(text, job.output_format)
            except OSError as exc:  # a full disk costs the file, not the transcript: it is in the job record
                log.error("job %s: the transcript could not be saved under outputs/: %s", job.id, exc)
                return JobOutcome(transcript.to_dict(), None, f"the transcript could not be saved under outputs/ "
                                                              f"({exc.strerror or exc}); it is kept with the job")
            return JobOutcome(transcript.to_dict(), name)

        def finished(job: Job) -> None:
            job.input_path.unlink(missing_ok=True)
            metrics.job_finished(job)

        jobs = JobQueue(background_store, run, failure_of, max_queued=settings.queue_depth,
                        concurrency=settings.concurrent_jobs, on_finished=finished)
        janitor = Janitor(background_store, inputs_dir=settings.inputs_dir, temp_dir=settings.temp_dir,
                          outputs_dir=settings.outputs_dir, job_retention_hours=settings.job_retention_hours,
                          output_retention_hours=settings.output_retention_hours,
                          segments_dir=settings.segments_dir if settings.role == "api" else None)
        scheduler.on_batch(jobs.count_attempts)  # a job in the model when the process dies may be the cause
        jobs.start()
        janitor.start()
        services = cls(settings=settings, models=models, scheduler=scheduler, jobs=jobs, outputs=outputs, store=store,
                       janitor=janitor, metrics=metrics, cluster=cluster, redis=client, dispatcher=dispatcher,
                       aligner=aligner, gpu_available=gpu)
        metrics.watch(services)
        return services

    def submit(self, upload: Upload, params: TranscriptionParams, output_format: str, kind: JobKind,
               audio_duration: float | None, owner: str | None = None) -> Job:
        """Queue a job for ``upload``, belonging to ``owner`` (the submitting key's owner id, None without keys)."""
        job = Job(id=new_job_id(), kind=kind, input_path=upload.path, filename=upload.filename,
                  params=asdict(params), output_format=output_format, audio_duration=audio_duration, owner=owner)
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

    def drain_seconds(self) -> float:
        """How long running jobs get in a shutdown: the graceful timeout, less the time stopped jobs get to
        record how they ended and a margin to write the answers and unload (gunicorn's master kills the
        worker at the graceful timeout)."""
        graceful = self.settings.graceful_timeout
        return max(0.0, graceful - ABORT_SECONDS - max(1.0, min(5.0, graceful * 0.1)))

    def begin_shutdown(self, timeout: float) -> threading.Thread:
        """Stop taking work now; running jobs get ``timeout`` seconds to finish or pause (see JobQueue.stop),
        in a thread: the server goes on answering meanwhile."""
        with self._shutdown_lock:
            if self._shutdown is None:
                stop_waiting = getattr(self.jobs.store, "stop_waiting", None)
                if stop_waiting is not None:  # scale-out: a shutdown never waits for Redis to come back
                    stop_waiting()
                self._shutdown = threading.Thread(target=self.jobs.stop, args=(timeout,), name="job-queue-stop",
                                                  daemon=True)
                self._shutdown.start()
            return self._shutdown

    def close(self) -> None:
        """Shut down (waiting for the running jobs, up to the graceful timeout), then release everything."""
        shutdown = self.begin_shutdown(self.drain_seconds())  # first: from now on nothing waits for Redis
        self.janitor.stop()
        shutdown.join()
        if self.dispatcher is not None:
            self.dispatcher.close()
        self.models.close()
        if self.redis is not None:
            self.redis.close()


def services() -> Services:
    return current_app.extensions[EXTENSION_KEY]
