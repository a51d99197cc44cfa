"""The API role's backend: Redis for jobs and the queue, the workers for the model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..config import Settings
from .cluster import Cluster, ClusterModels
from .dispatch import RemoteDestination
from .redis_store import PatientStore, RedisJobStore


@dataclass
class ApiBackend:
    redis: redis.Redis
    store: RedisJobStore  # for request handlers: fails fast while Redis is down
    background_store: PatientStore  # for the job runners and the janitor: waits Redis out
    cluster: Cluster
    models: ClusterModels
    destination: RemoteDestination

    @classmethod
    def connect(cls, settings: Settings) -> ApiBackend:
        # A request must not hang on a Redis restart: refuse fast (503), two quick retries at most.
        client = redis.Redis.from_url(settings.redis_url, password=settings.redis_password,  # type: ignore[arg-type]
                                      socket_connect_timeout=2, socket_timeout=10,
                                      health_check_interval=10, retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2))
        Path(settings.segments_dir).mkdir(parents=True, exist_ok=True)
        store = RedisJobStore(client)
        cluster = Cluster(client)
        return cls(redis=client, store=store, background_store=PatientStore(store), cluster=cluster,
                   models=ClusterModels(cluster),
                   destination=RemoteDestination(client, cluster, Path(settings.segments_dir),
                                                 settings.segments_per_task).start())
