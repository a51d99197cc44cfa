"""POST /transcribe, /transcribe/json, /transcribe/srt (synchronous) and /transcribe/async."""

from __future__ import annotations

import logging
import select
import socket

from flask import Blueprint, g, jsonify, request, url_for

from .. import security
from ..audio import UndecodableAudio, probe
from ..errors import JobFailed, QueueFullError, ShuttingDownError, StoreUnavailableError, UnsupportedMedia
from ..jobs import Job, JobFailure, JobKind, JobStatus, QueueFull, ShuttingDown, StoreUnavailable
from ..params import parse_params
from ..services import services
from ..transcriber import TranscriptionParams
from ..uploads import take_upload
from .common import attachment, job_body, transcript_json

log = logging.getLogger(__name__)

bp = Blueprint("transcribe", __name__)

# How often a waiting synchronous request checks that its client is still there.
DISCONNECT_POLL_SECONDS = 0.5


def client_disconnected(environ: dict) -> bool:
    """True when the client closed its connection (the socket reads as end-of-file)."""
    sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")  # the socket, or serve.intake's
    if sock is None or not hasattr(sock, "fileno"):
        return False  # no socket to look at (e.g. the test client): assume the client waits
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def submit_upload(output_format: str, kind: JobKind, params: TranscriptionParams | None = None) -> Job:
    """Validate the parameters, claim the upload, check that ffmpeg can read it, queue the job."""
    if params is None:
        # Word times make subtitle cues follow the speech, and an async job's result may be fetched as subtitles.
        params = parse_params(request.form, services().settings,
                              align_by_default=output_format in ("srt", "vtt") or kind is JobKind.ASYNC)
    upload = take_upload(request)  # type: ignore[arg-type]
    try:
        info = probe(upload.path)
    except UndecodableAudio as exc:
        upload.path.unlink(missing_ok=True)
        raise UnsupportedMedia(f"the file could not be decoded as audio: {exc.reason}", param="file") from exc
    g.audio_seconds = info.duration
    try:
        job = services().submit(upload, params, output_format, kind, info.duration, owner=security.request_owner())
    except QueueFull as exc:
        raise QueueFullError(f"{exc}; retry in about {exc.retry_after} s",
                             headers={"Retry-After": str(exc.retry_after)}) from exc
    except ShuttingDown as exc:
        raise ShuttingDownError(str(exc), headers={"Retry-After": "60"}) from exc
    except StoreUnavailable as exc:
        raise StoreUnavailableError(str(exc), headers={"Retry-After": "30"}) from exc
    g.job_id = job.id
    return job


def transcribe_now(output_format: str, params: TranscriptionParams | None = None) -> Job:
    """Run a job for this request's upload and wait for it (cancelling it if the client hangs up)."""
    return wait_for(submit_upload(output_format, JobKind.SYNC, params))


def wait_for(job: Job) -> Job:
    """The finished job; raises the job's failure as an API error."""
    try:
        finished = _wait(job)
    except ShuttingDown as exc:
        raise ShuttingDownError(str(exc), headers={"Retry-After": "60"}) from exc
    except StoreUnavailable as exc:
        raise StoreUnavailableError(str(exc), headers={"Retry-After": "30"}) from exc
    if finished is None or not finished.finished:  # the server stopped before the job could run or finish
        raise ShuttingDownError("interrupted: the server is shutting down; retry in a minute",
                                headers={"Retry-After": "60"})
    if finished.status is not JobStatus.COMPLETED:
        raise JobFailed(finished.failure or JobFailure("the transcription failed; see the server log",
                                                       "transcription_failed"))
    return finished


def _wait(job: Job) -> Job | None:
    jobs = services().jobs
    environ = request.environ
    while (finished := jobs.wait(job.id, timeout=DISCONNECT_POLL_SECONDS)) is None:
        if client_disconnected(environ):
            log.info("client of job %s disconnected: cancelling it", job.id)
            jobs.cancel(job.id, "the client disconnected")
            return jobs.wait(job.id)
    return finished


_SYNC_ERRORS = (400, 401, 409, 413, 415, 429, 500, 503, 507)
_ERROR_RESPONSES = {400: "BadRequest", 401: "Unauthorized", 409: "Conflict", 413: "TooLarge", 415: "Unsupported",
                    429: "RateLimited", 500: "ServerError", 503: "Unavailable", 507: "InsufficientStorage"}


def documented(summary: str, media_type: str, schema: str, status: int = 200,
               errors: tuple[int, ...] = _SYNC_ERRORS):  # type: ignore[no-untyped-def]
    """Give a transcription view its OpenAPI operation (read by serve.openapi from the docstring)."""
    error_lines = "".join(f"\n        {code}: {_ERROR_RESPONSES[code]}" for code in errors)

    def decorate(view):  # type: ignore[no-untyped-def]
        view.__doc__ = f"""{summary}
    ---
    post:
      summary: {summary}
      requestBody:
        required: true
        content:
          multipart/form-data:
            schema: TranscribeForm
      responses:
        {status}:
          description: {summary.split("; ")[-1]}
          content:
            {media_type}:
              schema: {schema}{error_lines}
    """
        return view

    return decorate


@bp.post("/transcribe/json")
@documented("Transcribe an upload; answer JSON", "application/json", "Transcription")
def transcribe_json():  # type: ignore[no-untyped-def]
    return jsonify(transcript_json(transcribe_now("txt")))


@bp.post("/transcribe")
@documented("Transcribe an upload; answer a .txt download named after it", "text/plain", "{type: string}")
def transcribe_text():  # type: ignore[no-untyped-def]
    return attachment(transcribe_now("txt"), "txt")


@bp.post("/transcribe/srt")
@documented("Transcribe an upload; answer SRT subtitles", "application/x-subrip", "{type: string}")
def transcribe_srt():  # type: ignore[no-untyped-def]
    return attachment(transcribe_now("srt"), "srt")


@bp.post("/transcribe/vtt")
@documented("Transcribe an upload; answer WebVTT subtitles", "text/vtt", "{type: string}")
def transcribe_vtt():  # type: ignore[no-untyped-def]
    return attachment(transcribe_now("vtt"), "vtt")


@bp.post("/transcribe/async")
@documented("Queue a transcription; poll /status/{job_id}", "application/json", "Job", status=202,
            errors=(400, 401, 413, 415, 429, 503, 507))
def transcribe_async():  # type: ignore[no-untyped-def]
    job = submit_upload("txt", JobKind.ASYNC)
    status_url = url_for("jobs.job_status", job_id=job.id)
    response = jsonify({**job_body(job), "status_url": status_url})
    response.status_code = 202
    response.headers["Location"] = status_url
    return response
