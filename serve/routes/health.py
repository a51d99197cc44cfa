"""GET /health: liveness and model/GPU state. Never loads the model; answers while a job runs."""

from __future__ import annotations

import torch
from flask import Blueprint, jsonify

from ..services import services
from .common import now_iso

bp = Blueprint("health", __name__)

_GIB = 1024**3


def _gpu_memory_gb() -> tuple[float, float]:
    # Querying memory before CUDA is initialised would create a context (hundreds of MB) on an idle GPU.
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return 0.0, 0.0
    return (round(torch.cuda.memory_allocated() / _GIB, 2), round(torch.cuda.memory_reserved() / _GIB, 2))


@bp.get("/health")
def health():  # type: ignore[no-untyped-def]
    """Liveness and model/GPU state; never loads the model
    ---
    get:
      summary: Liveness and model/GPU state
      security: []
      responses:
        200:
          description: the server's state
          content:
            application/json:
              schema: Health
    """
    s = services()
    allocated, reserved = _gpu_memory_gb()
    models = s.models
    return jsonify(
        status="ok",
        model_loaded=models.loaded,
        gpu_available=torch.cuda.is_available(),
        gpu_memory_allocated_gb=allocated,
        gpu_memory_reserved_gb=reserved,
        timestamp=now_iso(),
        model_state=models.state.value,
        model_error=models.last_error,
        checkpoint=s.settings.checkpoint_path,
        idle_timeout=s.settings.idle_timeout,
        queue_depth=s.jobs.depth,
        queue_capacity=s.jobs.max_queued,
        running_job=s.jobs.running_job,
        running_jobs=s.jobs.running_jobs,
    )
