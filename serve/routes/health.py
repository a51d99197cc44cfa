"""GET /health: liveness and model/GPU state. Never loads the model; answers while a job runs."""

from __future__ import annotations

import redis
from flask import Blueprint, jsonify

from ..distributed.cluster import summary
from ..model_manager import gpu_memory_bytes
from ..params import effective_engine
from ..services import services
from .common import now_iso

bp = Blueprint("health", __name__)

_GIB = 1024**3


@bp.get("/health")
def health():  # type: ignore[no-untyped-def]
    """Liveness and model/GPU state; never loads the model
    ---
    get:
      summary: Liveness and model/GPU state
      description: In the scale-out API role, the model and GPU fields sum up the live workers, listed in
        `workers`. While the job store cannot be written (a full disk, Redis unreachable or refusing writes)
        the answer is 503 with status "unavailable" and the reason in `store` (or `redis`); so it is while
        the server is shutting down.
      security: []
      responses:
        200:
          description: the server's state
          content:
            application/json:
              schema: Health
        503:
          description: the job store cannot be written, or the server is shutting down
          content:
            application/json:
              schema: Health
    """
    s = services()
    if s.cluster is None:
        allocated, reserved = gpu_memory_bytes(s.settings.device)
        model = {
            "model_loaded": s.models.loaded, "gpu_available": s.gpu_available,
            "gpu_memory_allocated_gb": round(allocated / _GIB, 2), "gpu_memory_reserved_gb": round(reserved / _GIB, 2),
            "model_state": s.models.state.value, "model_error": s.models.last_error,
        }
        redis_state, status = None, 200
    else:
        try:
            model, redis_state, status = summary(s.cluster.workers()), "ok", 200
        except redis.RedisError as exc:
            model, redis_state, status = summary([]), f"unreachable: {exc}", 503
    store_problem = s.jobs.check_store()
    if store_problem is not None or s.jobs.stopping:
        status = 503
    guide_fields = ("model_loaded", "gpu_available", "gpu_memory_allocated_gb", "gpu_memory_reserved_gb")
    body = {
        "status": "ok" if status == 200 else "unavailable",
        **{name: model.pop(name) for name in guide_fields},
        "timestamp": now_iso(),
        **model,
        "checkpoint": s.settings.checkpoint_path, "idle_timeout": s.settings.idle_timeout,
        "queue_depth": s.jobs.depth, "queue_capacity": s.jobs.max_queued,
        "running_job": s.jobs.running_job, "running_jobs": s.jobs.running_jobs, "role": s.settings.role,
        "store": "ok" if store_problem is None else f"cannot be written: {store_problem}",
        "shutting_down": s.jobs.stopping,
        # The engine the checkpoint's config (or published id) names, and what it can be asked: languages,
        # translation, segments, the decoding defaults in force (null until the checkpoint says)
        "engine": effective_engine(s.settings),
        # Word times: the forced aligner beside the model (in the scale-out API role, each worker holds its own)
        "aligner": s.aligner.state() if s.aligner is not None else {"configured": bool(s.settings.aligner_path)},
    }
    if redis_state is not None:
        body["redis"] = redis_state
    return jsonify(body), status
