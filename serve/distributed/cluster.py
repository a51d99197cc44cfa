"""The API role's view of the workers: who is alive (heartbeats), what they run, and what /health reports.

Each worker refreshes a key with a short expiry (see ``worker.py``); a worker that was killed stops doing so
and disappears within ``HEARTBEAT_TTL`` seconds. :class:`ClusterModels` stands in for the single-process
model manager in /health and /metrics: "loaded" when any live worker holds its model.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import redis
from flask import Flask

from ..errors import APIError, error_response
from ..model_manager import ModelState
from .redis_store import redis_key

log = logging.getLogger(__name__)

WORKER_NAMES = redis_key("workers")  # every worker that ever beat; those whose heartbeat expired are pruned
RETRY_AFTER_SECONDS = 5
NO_WORKERS_RETRY_AFTER_SECONDS = 30
NO_WORKERS = "no live workers: start one with --role worker"
_GIB = 1024**3


def heartbeat_key(name: str) -> str:
    return redis_key("worker", name)


class NoWorkers(APIError):
    status = 503
    code = "no_workers"


class Cluster:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def workers(self) -> list[dict[str, Any]]:
        """The live workers' last heartbeats, by name. Raises redis errors (the caller decides what they mean)."""
        names = sorted(name.decode() for name in self.redis.smembers(WORKER_NAMES))
        values = self.redis.mget([heartbeat_key(name) for name in names]) if names else []
        gone = [name for name, value in zip(names, values, strict=True) if value is None]
        if gone:
            self.redis.srem(WORKER_NAMES, *gone)
        return [json.loads(value) for value in values if value is not None]

    def rq_workers(self) -> set[str]:
        """The RQ names under which the live workers take tasks now."""
        return {beat["rq_worker"] for beat in self.workers() if beat.get("rq_worker")}

    def require_workers(self) -> None:
        """Raise :class:`NoWorkers` (503) when no worker is alive to take a job's segments."""
        if not self.workers():
            raise NoWorkers(f"{NO_WORKERS}; retry when one is up",
                            headers={"Retry-After": str(NO_WORKERS_RETRY_AFTER_SECONDS)})


def describe(beat: dict[str, Any]) -> dict[str, Any]:
    """A worker as /health shows it."""
    return {
        "name": beat["name"], "host": beat.get("host"), "device": beat.get("device"),
        "checkpoint": beat.get("checkpoint"), "idle_timeout": beat.get("idle_timeout"),
        "model_loaded": beat.get("model_loaded", False), "model_state": beat.get("model_state"),
        "model_error": beat.get("model_error"), "current_task": beat.get("current_task"),
        "batch_size": beat.get("batch_size"),
        "gpu_memory_allocated_gb": round(beat.get("gpu_memory_allocated_bytes", 0.0) / _GIB, 2),
        "gpu_memory_reserved_gb": round(beat.get("gpu_memory_reserved_bytes", 0.0) / _GIB, 2),
        "last_seen": datetime.fromtimestamp(beat["seen"], UTC).isoformat() if beat.get("seen") else None,
    }


def _state(beats: list[dict[str, Any]]) -> ModelState:
    states = {beat.get("model_state") for beat in beats}
    return next((state for state in (ModelState.LOADED, ModelState.LOADING) if state.value in states),
                ModelState.UNLOADED)


def _error(beats: list[dict[str, Any]]) -> str | None:
    if not beats:
        return NO_WORKERS
    return next((beat["model_error"] for beat in beats if beat.get("model_error")), None)


def summary(beats: list[dict[str, Any]]) -> dict[str, Any]:
    """The workers as the single-process /health fields (the guide's, summed up) plus the list of them."""
    workers = [describe(beat) for beat in beats]
    return {
        "model_loaded": any(w["model_loaded"] for w in workers),
        "gpu_available": any(str(w["device"]).startswith("cuda") for w in workers),
        "gpu_memory_allocated_gb": round(sum(w["gpu_memory_allocated_gb"] for w in workers), 2),
        "gpu_memory_reserved_gb": round(sum(w["gpu_memory_reserved_gb"] for w in workers), 2),
        "model_state": _state(beats).value,
        "model_error": _error(beats),
        "workers": workers,
    }


class ClusterModels:
    """The workers' models, seen from the API: the model-manager figures /metrics reads."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def live_workers(self) -> list[dict[str, Any]]:
        """The live workers' heartbeats; none while Redis is unreachable."""
        try:
            return self.cluster.workers()
        except redis.RedisError:
            return []

    @property
    def loaded(self) -> bool:
        return any(beat.get("model_loaded") for beat in self.live_workers())

    @property
    def state(self) -> ModelState:
        return _state(self.live_workers())

    @property
    def last_error(self) -> str | None:
        return _error(self.live_workers())

    @property
    def load_count(self) -> int:
        return sum(beat.get("load_count", 0) for beat in self.live_workers())

    @property
    def unload_count(self) -> int:
        return sum(beat.get("unload_count", 0) for beat in self.live_workers())

    def preload(self) -> None:
        """Workers load their own models (``--preload`` on each worker)."""

    def close(self) -> None:
        """Nothing to release here: the models live in the workers."""


def register_redis_errors(app: Flask) -> None:
    """Redis down (restarting): requests answer 503 with Retry-After, and work again once it is back."""

    @app.errorhandler(redis.RedisError)
    def _redis_error(exc: redis.RedisError):  # type: ignore[no-untyped-def]
        log.warning("Redis unavailable: %s", exc)
        response, status = error_response("the job store (Redis) is unavailable; retry shortly",
                                          "store_unavailable", 503)
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response, status
