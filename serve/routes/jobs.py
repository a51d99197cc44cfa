"""GET /status/<job_id>: the state of an async job, in the guide's shape."""

from __future__ import annotations

from flask import Blueprint, jsonify

from ..errors import NotFound
from ..jobs import JobStatus
from ..services import services
from .common import iso

bp = Blueprint("jobs", __name__)


@bp.get("/status/<job_id>")
def job_status(job_id: str):  # type: ignore[no-untyped-def]
    job = services().jobs.store.get(job_id)
    if job is None:
        raise NotFound(f"no job with id {job_id[:64]!r}", param="job_id")
    body = {
        "job_id": job.id,
        "status": job.status.value,
        "filename": job.filename,
        "created_at": iso(job.created_at),
    }
    if job.status is JobStatus.PROCESSING:
        body["stage"] = job.stage
        body["started_at"] = iso(job.started_at)
    elif job.status is JobStatus.COMPLETED:
        body.update(transcription=job.result.text, output_file=job.output_file,
                    completed_at=iso(job.completed_at), duration=round(job.result.duration, 3))
    else:
        assert job.failure is not None
        body.update(error=job.failure.message, code=job.failure.code, completed_at=iso(job.completed_at))
    return jsonify(body)
