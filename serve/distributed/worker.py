"""The worker role: one GPU's model, taking segments from Redis with RQ.

``python3 serve/qwen2_5_omni_awq.py --role worker --redis-url redis://…`` runs an RQ ``SimpleWorker`` (no
fork: the model stays loaded between tasks, and CUDA does not survive a fork) on the segments queue.
A task is a batch of segments (from one job or several with the same generation settings), chosen by the
API's fair scheduler and saved by it as .npy files in the shared segments folder. The worker transcribes
them the single process's way (its own scheduler and batch runner: one batch, out-of-memory retries) and
writes each segment's raw text to its job's results hash; the API does the post-processing. Writes are
idempotent (keyed by segment), so a task run twice, after a worker died mid-task, does no harm.
A heartbeat key with a short expiry tells the API which workers are alive, what they run and their batch size.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis
from rq import Queue, SimpleWorker, get_current_job

from ..config import Settings
from ..errors import failure_of
from ..generation import GenerationOptions
from ..local import MODEL_NAME, aligner_slot, close_runner, engine_loader
from ..model_manager import ModelManager, gpu_memory_bytes
from ..scheduler import FairScheduler
from .cluster import WORKER_NAMES, heartbeat_key
from .redis_store import RedisJobStore, patiently
from .tasks import FAILURE_META, QUEUE, pieces_key

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0
# A worker silent this long is dead and its task goes to another worker. Generous against a busy GIL: a
# late heartbeat only costs a segment transcribed twice.
HEARTBEAT_TTL = 10
RECONNECT_SECONDS = 1.0


@dataclass
class WorkerContext:
    """What a task needs. RQ runs module-level functions, so the worker sets this once at start."""

    name: str
    models: ModelManager
    redis: redis.Redis
    segments_dir: Path
    scheduler: FairScheduler = field(default_factory=FairScheduler)
    device: str = "cpu"  # as /health shows it: "cuda:1 NVIDIA H200"
    device_setting: str = "cpu"  # as --device gave it: "cuda:1"
    checkpoint: str = ""
    idle_timeout: float = 0.0
    rq_name: str = ""  # the RQ worker's current name: a new one after each reconnection
    current_task: str | None = None
    batch_size: int | None = None  # the loaded model's; the API sizes tasks by it
    started: float = field(default_factory=time.time)
    # One heartbeat built and written at a time: a beat built before rq_name changed must not land after the
    # beat that announces the new name (the API would take the new name's task for orphaned).
    _beating: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def heartbeat(self) -> None:
        with self._beating:
            state = {
                "name": self.name, "host": socket.gethostname(), "pid": os.getpid(), "device": self.device,
                "checkpoint": self.checkpoint, "idle_timeout": self.idle_timeout,
                "model_loaded": self.models.loaded, "model_state": self.models.state.value,
                "model_error": self.models.last_error, "current_task": self.current_task,
                "batch_size": self.batch_size,
                "load_count": self.models.load_count, "unload_count": self.models.unload_count,
                **_gpu_memory(self.device_setting), "rq_worker": self.rq_name, "started": self.started,
                "seen": time.time(),
            }
            pipe = self.redis.pipeline()
            pipe.set(heartbeat_key(self.name), json.dumps(state), ex=HEARTBEAT_TTL)
            pipe.sadd(WORKER_NAMES, self.name)
            pipe.execute()


_context: WorkerContext | None = None


def transcribe_task(segments: list[dict[str, Any]], options: dict[str, Any]) -> int:
    """RQ task: transcribe ``segments`` (job, index, file, start, end), generated as one batch with ``options``.

    Segments of jobs that have finished meanwhile (cancelled, failed) are skipped. Returns how many segments
    it transcribed.
    """
    context = _context
    if context is None:
        raise RuntimeError("transcribe_task runs only inside a worker started by serve.distributed.worker.run")
    store = RedisJobStore(context.redis)
    unfinished = {job: patiently(lambda job=job: store.is_unfinished(job)) for job in {s["job"] for s in segments}}
    task = get_current_job()
    context.current_task = task.id if task else None
    started = time.monotonic()
    try:
        wanted = []
        for s in segments:
            samples = _load(context.segments_dir / s["file"], store, s["job"]) if unfinished[s["job"]] else None
            if samples is not None:
                wanted.append((s, samples))
        if len(wanted) < len(segments):
            log.info("skipping %d segment(s) of jobs that have finished meanwhile", len(segments) - len(wanted))
        if not wanted:
            return 0
        with context.models.use() as runner:
            context.batch_size = runner.batch_size
            flow = context.scheduler.open_flow(context.current_task or "task")
            try:
                requests = [context.scheduler.submit(flow, samples, GenerationOptions(**options), start=s["start"],
                                                     end=s["end"]) for s, samples in wanted]
                for (s, _samples), request in zip(wanted, requests, strict=True):
                    piece = json.dumps({**request.future.result().to_dict(), "worker": context.name},
                                       ensure_ascii=False)
                    patiently(lambda s=s, piece=piece:
                              context.redis.hset(pieces_key(s["job"]), str(s["index"]), piece))
            finally:
                context.scheduler.close_flow(flow)
    except Exception as exc:
        # What the job's client is told, as the single process would say it (code, HTTP status, message);
        # the traceback stays in this worker's log.
        if task is not None:
            task.meta[FAILURE_META] = asdict(failure_of(exc))
            with contextlib.suppress(redis.RedisError):
                task.save_meta()
        raise
    finally:
        context.current_task = None
    seconds = time.monotonic() - started
    for job in dict.fromkeys(s["job"] for s, _ in wanted):
        done = [s for s, _ in wanted if s["job"] == job]
        log.info("job %s: segments %s (%.1f s of audio) in %.2f s", job, ",".join(str(s["index"]) for s in done),
                 sum(s["end"] - s["start"] for s in done), seconds)
    return len(wanted)


def _load(path: Path, store: RedisJobStore, job_id: str) -> np.ndarray | None:
    """A segment's audio; None when its file is gone because its job has just finished."""
    try:
        return np.load(path)
    except FileNotFoundError:
        if not patiently(lambda: store.is_unfinished(job_id)):
            return None
        raise


def _gpu_memory(device: str) -> dict[str, float]:
    allocated, reserved = gpu_memory_bytes(device)
    return {"gpu_memory_allocated_bytes": allocated, "gpu_memory_reserved_bytes": reserved}


def _device_name(settings: Settings) -> str:
    import torch

    if settings.device != "cpu" and torch.cuda.is_available():
        index = torch.device(settings.device if settings.device != "auto" else "cuda").index or 0
        return f"cuda:{index} {torch.cuda.get_device_name(index)}"
    return "cpu"


def _beat(context: WorkerContext, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            context.heartbeat()
        except redis.RedisError as exc:
            log.warning("heartbeat not sent (%s)", exc)
        stop.wait(HEARTBEAT_SECONDS)


class _RqWorker(SimpleWorker):
    """RQ's SimpleWorker, remembering whether its loop ended because it was told to stop (SIGTERM/SIGINT)."""

    warm_stop = False

    def request_stop(self, signum: int, frame: Any) -> None:
        self.warm_stop = True
        super().request_stop(signum, frame)


def _claim(client: redis.Redis, name: str) -> None:
    """Refuse to start beside a live worker of the same name (their tasks would look orphaned)."""
    deadline = time.monotonic() + HEARTBEAT_TTL + 1  # a dead namesake's heartbeat expires meanwhile
    while (beat := client.get(heartbeat_key(name))) is not None:
        other = json.loads(beat)
        if other.get("host") == socket.gethostname() and other.get("pid") == os.getpid():
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"another worker named {name!r} is alive (host {other.get('host')}, pid "
                             f"{other.get('pid')}): give each worker its own --worker-name")
        time.sleep(1.0)


def run(settings: Settings) -> None:
    """Serve tasks until SIGTERM/SIGINT (a warm stop: the task in hand finishes first)."""
    global _context
    name = settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"
    # RQ gives its own connection a socket timeout longer than its blocking wait on the queue.
    client = redis.Redis.from_url(settings.redis_url, password=settings.redis_password, health_check_interval=10)  # type: ignore[arg-type]
    scheduler = FairScheduler()
    aligner = aligner_slot(settings)
    models = ModelManager(engine_loader(settings, scheduler, aligner), unloader=close_runner,
                          idle_timeout=settings.idle_timeout, name=MODEL_NAME)
    patiently(lambda: _claim(client, name))
    context = _context = WorkerContext(name=name, models=models, redis=client, scheduler=scheduler,
                                       segments_dir=Path(settings.segments_dir), device=_device_name(settings),
                                       device_setting=settings.device,
                                       checkpoint=settings.checkpoint_path, idle_timeout=settings.idle_timeout)
    stop = threading.Event()
    threading.Thread(target=_beat, args=(context, stop), name="heartbeat", daemon=True).start()
    if settings.preload:
        with models.use() as runner:
            context.batch_size = runner.batch_size
    log.info("worker %s (%s) taking tasks from %s at %s", name, context.device, QUEUE, settings.redis_url)
    try:
        while True:
            # RQ names must be unique, also across a Redis restart and a restarted worker of the same name
            # (RQ keeps a dead one registered for a while); the API must see the new one before any task
            # runs under it, or it would take that task's worker for dead.
            context.rq_name = f"{name}.{uuid.uuid4().hex[:8]}"
            worker = _RqWorker([Queue(QUEUE, connection=client)], connection=client, name=context.rq_name,
                               worker_ttl=30)
            try:
                context.heartbeat()
                # RQ logs four lines a task at INFO; the task logs one of its own.
                worker.work(logging_level="DEBUG" if settings.log_level == "DEBUG" else "WARNING")
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
                log.warning("lost Redis (%s): reconnecting", exc)
            if worker.warm_stop:
                break
            # RQ's loop also ends, without raising, on a Redis error it caught itself: go on.
            log.warning("the RQ worker loop ended without a stop request: starting again")
            time.sleep(RECONNECT_SECONDS)
    finally:
        stop.set()
        models.close()
        with contextlib.suppress(redis.RedisError):
            client.delete(heartbeat_key(name))
        _context = None
