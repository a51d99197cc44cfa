"""What the API's dispatcher and the workers agree on: the RQ queue, where results go, how failures travel."""

from __future__ import annotations

from .redis_store import redis_key

QUEUE = "qwen-segments"
FAILURE_META = "failure"  # a failed task's JobFailure, in its RQ meta


def pieces_key(job_id: str) -> str:
    """The hash of a job's finished segments: segment index -> a SegmentResult's dict (raw text parts, scores,
    words) and the worker's name."""
    return redis_key("job", job_id, "pieces")
