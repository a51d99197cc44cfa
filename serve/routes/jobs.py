"""GET /status/<job_id> (the guide's), GET /jobs, DELETE /jobs/<job_id>.

With API keys, each key sees only the jobs it created (an admin key sees every job): another key's job is
the same 404 as an unknown id, so job ids reveal nothing across keys."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from .. import security
from ..errors import Conflict, InvalidParameter, NotFound, Unauthorized
from ..jobs import Job, JobStatus, is_job_id
from ..services import services
from .common import attachment, job_body, transcript_json

bp = Blueprint("jobs", __name__)

MAX_PAGE = 500
MAX_OFFSET = 10**9  # far beyond any job table, well inside the stores' 64-bit integers


def _job(job_id: str) -> Job:
    """The job, if this request may see it; otherwise the 404 of an unknown id."""
    job = services().store.get(job_id) if is_job_id(job_id) else None
    if job is None or not security.may_see(job.owner):
        raise NotFound(f"no job with id {job_id[:64]!r} (it may have expired)", param="job_id")
    return job


@bp.get("/status/<job_id>")
def job_status(job_id: str):  # type: ignore[no-untyped-def]
    """A job's state (the guide's processing / completed / failed, or cancelled), with progress
    ---
    get:
      summary: A job's state and progress
      parameters: [JobId]
      responses:
        200:
          description: the job
          content:
            application/json:
              schema: Job
        401: Unauthorized
        404: NotFound
        429: RateLimited
    """
    return jsonify(job_body(_job(job_id)))


@bp.get("/result/<job_id>")
def job_result(job_id: str):  # type: ignore[no-untyped-def]
    """A finished job's transcript, in any format: ``?format=txt|json|srt|vtt`` (default json).
    ---
    get:
      summary: A finished job's transcript as txt, json, srt or vtt
      parameters:
        - JobId
        - {name: format, in: query, schema: {type: string, enum: [txt, json, srt, vtt], default: json}}
        - {name: words, in: query, description: "json: each segment's words; vtt: each word's start inside its
             cue (for a job that was aligned: word_timestamps, or an async job on a server with an aligner)",
           schema: {type: boolean, default: false}}
      responses:
        200:
          description: the transcript
          content:
            application/json: {schema: Transcription}
            text/plain: {schema: {type: string}}
            application/x-subrip: {schema: {type: string}}
            text/vtt: {schema: {type: string}}
        400: BadRequest
        401: Unauthorized
        404: NotFound
        409: Conflict
        429: RateLimited
    """
    wanted = request.args.get("format", "json").lower()
    if wanted not in ("txt", "json", "srt", "vtt"):
        raise InvalidParameter("format must be txt, json, srt or vtt", param="format")
    job = _job(job_id)
    if job.status is not JobStatus.COMPLETED:
        raise Conflict(f"job {job_id} has no result: it is {job.status.value}", param="job_id")
    words = request.args.get("words", "").lower() in ("1", "true", "yes")
    if wanted == "json":
        return jsonify(transcript_json(job, words=words))
    return attachment(job, wanted, word_level=words)


@bp.get("/jobs")
def list_jobs():  # type: ignore[no-untyped-def]
    """Recent jobs, newest first: with API keys, the jobs of the requester's key (every job for an admin key)
    ---
    get:
      summary: Recent jobs, newest first (with API keys, the requester's own; every job for an admin key)
      parameters:
        - {name: status, in: query, schema: {type: string, enum: [processing, completed, failed, cancelled]}}
        - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 500, default: 50}}
        - {name: offset, in: query, schema: {type: integer, minimum: 0, maximum: 1000000000, default: 0}}
      responses:
        200:
          description: the jobs
          content:
            application/json:
              schema: JobList
        400: BadRequest
        401: Unauthorized
        429: RateLimited
    """
    status = request.args.get("status")
    try:
        wanted = JobStatus(status) if status is not None else None  # "?status=" is no status at all: 400
    except ValueError:
        raise InvalidParameter(f"status must be one of {', '.join(s.value for s in JobStatus)}",
                               param="status") from None
    try:
        limit = int(request.args.get("limit", 50))
        offset = int(request.args.get("offset", 0))
    except ValueError:
        raise InvalidParameter("limit and offset must be whole numbers", param="limit") from None
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidParameter(f"limit must be 1 to {MAX_PAGE}", param="limit")
    if not 0 <= offset <= MAX_OFFSET:
        raise InvalidParameter(f"offset must be 0 to {MAX_OFFSET}", param="offset")
    jobs = services().store.list(status=wanted, owner=_listed_owner(), limit=limit, offset=offset)
    return jsonify(jobs=[job_body(j, with_result=False) for j in jobs], limit=limit, offset=offset)


def _listed_owner() -> str | None:
    """Whose jobs /jobs lists: the requester's, or None (every job) for an admin or a server without keys."""
    if security.sees_all_jobs():
        return None
    owner = security.request_owner()
    if owner is None:  # no key was checked: never widen that to every job
        raise Unauthorized("a valid API key is required")
    return owner


@bp.delete("/jobs/<job_id>")
def cancel_job(job_id: str):  # type: ignore[no-untyped-def]
    """Cancel a job: at once if queued, at its next segment if running
    ---
    delete:
      summary: Cancel a job
      parameters: [JobId]
      responses:
        200:
          description: the job (cancelled, or with cancel_requested while it stops)
          content:
            application/json:
              schema: Job
        401: Unauthorized
        404: NotFound
        409: Conflict
        429: RateLimited
    """
    job = _job(job_id)
    if not job.finished:
        job = services().jobs.cancel(job_id) or job
        if job.status is JobStatus.CANCELLED or not job.finished:
            body = job_body(job)
            body["cancel_requested"] = True  # a running job stops at its next segment
            return jsonify(body)
    # Finished before the request, or while it was being cancelled.
    raise Conflict(f"job {job_id} has already finished ({job.status.value})", param="job_id")
