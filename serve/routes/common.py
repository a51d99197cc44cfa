"""Helpers shared by the route modules."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..jobs import Job, JobStatus
from ..transcript import Transcript


def iso(moment: datetime | None) -> str | None:
    """The guide's timestamp format: 2025-10-11T02:00:00.000000."""
    return moment.isoformat(timespec="microseconds") if moment else None


def now_iso() -> str:
    return iso(datetime.now())  # type: ignore[return-value]


def job_body(job: Job, *, with_result: bool = True) -> dict[str, Any]:
    """A job as the API shows it: the guide's fields for each status, plus progress."""
    body: dict[str, Any] = {
        "job_id": job.id,
        "status": job.status.value,
        "filename": job.filename,
        "created_at": iso(job.created_at),
    }
    progress = job.progress
    body["progress"] = {
        "segments_done": progress.segments_done,
        "segments_total": progress.segments_total,
        "audio_seconds_done": round(progress.audio_seconds_done, 3),
        "audio_seconds_total": round(job.audio_duration, 3) if job.audio_duration else None,
    }
    if job.status is JobStatus.PROCESSING:
        body["stage"] = job.stage
        body["started_at"] = iso(job.started_at)
    elif job.status is JobStatus.COMPLETED:
        assert job.result is not None
        transcript = Transcript.from_dict(job.result)
        if with_result:
            body["transcription"] = transcript.text
        body.update(output_file=job.output_file, completed_at=iso(job.completed_at),
                    duration=round(transcript.duration, 3))
    else:
        assert job.failure is not None
        body.update(error=job.failure.message, code=job.failure.code, completed_at=iso(job.completed_at))
    return body
