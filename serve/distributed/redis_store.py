"""The job table in Redis, for the API role: the same JobStore interface as the SQLite one.

A job is a JSON value at ``qwen:job:<id>`` (its progress, written often, has a key of its own), indexed by
sorted sets: all jobs by creation time, one set per status, and finished jobs by completion time; a job with
an owner is also in its owner's sets (``qwen:jobs:owner:<owner>`` and one per status), so listing one
owner's jobs is a page of one sorted set.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import redis
from flask import has_request_context

from ..jobs import Job, JobFailure, JobKind, JobStatus, Progress

log = logging.getLogger(__name__)

PREFIX = "qwen"
T = TypeVar("T")


def redis_key(*parts: str) -> str:
    return ":".join((PREFIX, *parts))


def _stamp(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _moment(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def job_to_json(job: Job) -> str:
    return json.dumps({
        "id": job.id, "kind": job.kind.value, "input_path": str(job.input_path), "filename": job.filename,
        "params": job.params, "output_format": job.output_format, "audio_duration": job.audio_duration,
        "status": job.status.value, "stage": job.stage, "created_at": _stamp(job.created_at),
        "started_at": _stamp(job.started_at), "completed_at": _stamp(job.completed_at), "result": job.result,
        "output_file": job.output_file, "output_error": job.output_error,
        "failure": asdict(job.failure) if job.failure else None,
        "attempts": job.attempts, "attempt_from": job.attempt_from, "owner": job.owner,
    }, ensure_ascii=False)


def job_from_json(data: str, progress: str | None) -> Job:
    d = json.loads(data)
    p = json.loads(progress) if progress else {}
    return Job(
        id=d["id"], kind=JobKind(d["kind"]), input_path=Path(d["input_path"]), filename=d["filename"],
        params=d["params"], output_format=d["output_format"], audio_duration=d["audio_duration"],
        status=JobStatus(d["status"]), stage=d["stage"], created_at=_moment(d["created_at"]),  # type: ignore[arg-type]
        started_at=_moment(d["started_at"]), completed_at=_moment(d["completed_at"]),
        progress=Progress(p.get("segments_done", 0), p.get("segments_total"), p.get("audio_seconds_done", 0.0),
                          tuple(p.get("partial", ()))),
        result=d["result"], output_file=d["output_file"], output_error=d.get("output_error"),
        failure=JobFailure(**d["failure"]) if d["failure"] else None,
        attempts=d.get("attempts", 0), attempt_from=d.get("attempt_from", 0), owner=d.get("owner"),
    )


def _scope(owner: str | None) -> tuple[str, ...]:
    """The prefix of a family of indexes (all by creation time, then one per status): every job's (None), or
    one owner's."""
    return ("jobs",) if owner is None else ("jobs", "owner", owner)


def _scopes(owner: str | None) -> list[tuple[str, ...]]:
    """The index families a job with this owner is in."""
    return [_scope(None)] if owner is None else [_scope(None), _scope(owner)]


class RedisJobStore:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def _write(self, job: Job, *, with_progress: bool) -> None:
        created = job.created_at.timestamp()
        pipe = self.redis.pipeline()
        pipe.set(redis_key("job", job.id), job_to_json(job))
        if with_progress:
            pipe.set(redis_key("job", job.id, "progress"), json.dumps(asdict(job.progress), ensure_ascii=False))
        for scope in _scopes(job.owner):
            pipe.zadd(redis_key(*scope), {job.id: created})
            for status in JobStatus:
                if status is not job.status:
                    pipe.zrem(redis_key(*scope, status.value), job.id)
            pipe.zadd(redis_key(*scope, job.status.value), {job.id: created})
        if job.finished and job.completed_at:
            pipe.zadd(redis_key("jobs", "finished"), {job.id: job.completed_at.timestamp()})
        pipe.execute()

    def probe(self) -> None:
        self.redis.set(redis_key("probe"), str(time.time()), ex=3600)  # refused when Redis is out of memory

    def add(self, job: Job) -> None:
        self._write(job, with_progress=True)

    def update(self, job: Job) -> None:
        # Progress has its own key, written by update_progress; a record update must not roll it back,
        # except when the record carries newer progress (the final one).
        self._write(job, with_progress=job.finished)

    def update_progress(self, job_id: str, progress: Progress) -> None:
        self.redis.set(redis_key("job", job_id, "progress"), json.dumps(asdict(progress), ensure_ascii=False))

    def count_attempt(self, job_id: str) -> None:
        record, progress = redis_key("job", job_id), redis_key("job", job_id, "progress")

        def count(pipe: redis.client.Pipeline) -> None:  # retried if the record changes meanwhile (WATCH)
            data, progress_data = pipe.mget(record, progress)
            if not data:
                return
            job = job_from_json(data, progress_data)
            if job.finished:
                return
            done = job.progress.segments_done
            counted = replace(job, attempts=job.attempts + 1 if done == job.attempt_from else 1, attempt_from=done)
            pipe.multi()
            pipe.set(record, job_to_json(counted))  # the record alone: progress and the indexes are unchanged

        self.redis.transaction(count, record, progress)

    def get(self, job_id: str) -> Job | None:
        data, progress = self.redis.mget(redis_key("job", job_id), redis_key("job", job_id, "progress"))
        return job_from_json(data, progress) if data else None

    def _many(self, ids: list[bytes]) -> list[Job]:
        if not ids:
            return []
        keys = [k for i in ids for k in (redis_key("job", i.decode()), redis_key("job", i.decode(), "progress"))]
        values = self.redis.mget(keys)
        return [job_from_json(values[n], values[n + 1]) for n in range(0, len(values), 2) if values[n]]

    def list(self, *, status: JobStatus | None = None, owner: str | None = None, limit: int = 50,
             offset: int = 0) -> list[Job]:
        scope = _scope(owner)
        index = redis_key(*scope, status.value) if status else redis_key(*scope)
        return self._many(self.redis.zrevrange(index, offset, offset + limit - 1))

    def unfinished(self) -> list[Job]:
        return self._many(self.redis.zrange(redis_key("jobs", JobStatus.PROCESSING.value), 0, -1))

    def is_unfinished(self, job_id: str) -> bool:
        return self.redis.zscore(redis_key("jobs", JobStatus.PROCESSING.value), job_id) is not None

    def finished_before(self, moment: datetime) -> list[Job]:
        return self._many(self.redis.zrangebyscore(redis_key("jobs", "finished"), 0, moment.timestamp()))

    def delete(self, job_ids: Iterable[str]) -> None:
        ids = list(job_ids)
        if not ids:
            return
        owners = self._owners(ids)  # the record names the owner's indexes the id is in
        pipe = self.redis.pipeline()
        for job_id in ids:
            pipe.delete(redis_key("job", job_id), redis_key("job", job_id, "progress"), redis_key("job", job_id,
                                                                                                 "pieces"))
            pipe.zrem(redis_key("jobs", "finished"), job_id)
            for scope in _scopes(owners.get(job_id)):
                for index in (redis_key(*scope), *(redis_key(*scope, s.value) for s in JobStatus)):
                    pipe.zrem(index, job_id)
        pipe.execute()

    def _owners(self, ids: list[str]) -> dict[str, str | None]:
        records = self.redis.mget([redis_key("job", job_id) for job_id in ids])
        return {job_id: json.loads(data).get("owner") for job_id, data in zip(ids, records, strict=True) if data}

    def count(self) -> int:
        return self.redis.zcard(redis_key("jobs"))


PATIENCE_SECONDS = 600.0  # how long a job waits for Redis before it fails


def patiently(action: Callable[[], T], *, patience: float | None = PATIENCE_SECONDS, what: str = "Redis",
              give_up: threading.Event | None = None) -> T:
    """Run ``action``, retrying while Redis is unreachable (a restart), for up to ``patience`` seconds
    (None: until it is back), or until ``give_up`` is set."""
    deadline = None if patience is None else time.monotonic() + patience
    delay = 0.2
    while True:
        try:
            return action()
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            if (deadline is not None and time.monotonic() > deadline) or (give_up is not None and give_up.is_set()):
                raise
            log.warning("%s unavailable (%s): retrying in %.1f s", what, exc, delay)
            if give_up is not None:
                give_up.wait(delay)
            else:
                time.sleep(delay)
            delay = min(delay * 2, 5.0)


class PatientStore:
    """A JobStore that waits out Redis restarts in background work (the job runners, the janitor): by
    default until Redis is back, since a job record that cannot be written cannot be finished either.

    A request handler never waits: there the call fails at once, and the client gets 503 with Retry-After.
    Once the server stops (:meth:`stop_waiting`) nothing waits any more: a shutdown must not hang on Redis
    (what could not be written is resumed or failed at the next start).
    """

    def __init__(self, store: RedisJobStore, patience: float | None = None) -> None:
        self.store = store
        self.patience = patience
        self._give_up = threading.Event()

    def stop_waiting(self) -> None:
        self._give_up.set()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if has_request_context():
                return method(*args, **kwargs)
            return patiently(lambda: method(*args, **kwargs), patience=self.patience, give_up=self._give_up)

        return call
